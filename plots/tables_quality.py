"""Downstream-quality tables: T5 (MT-bench per epoch and lr), T6 (six math benchmarks), T11 (SuperGLUE).

A model's untuned score comes from a run directory whose summary.json says "method": "base" (see
results/README.md); every other row is a training run evaluated by the matching evaluator. Runs that differ only by
seed are one row (plots.seeds): mean ± standard deviation over the seeds, with the seeds named; methods the paper
did not run get rows of their own. Each table ends with a line on which of the paper's claims hold (plots.claims)."""
from __future__ import annotations

import statistics

import pandas as pd

from plots import claims, mapping, select
from plots.judges import agreement_text as judge_agreement
from plots.paper import paper_cell
from plots.runs import Run
from plots.seeds import MeanStd, SeedGroup, by_seed, mean_of, summarize
from plots.tables import (NO_RUN, NOT_APPLICABLE, Section, Table, add_compared, nonfinite_or, seed_cell,
                          status_marker)

T5_MODELS = ("llama2-7b", "llama3-8b")
T5_LRS = (1e-5, 1e-6)
T5_METHODS = ("adam", "lomo", "lora", "galore", "badam")
EPOCHS = (1, 2, 3)
T6_MODELS = ("llama3-8b", "llama3-70b")
T6_FIELDS = (("GSM8K", "gsm8k"), ("Aqua", "aqua"), ("MMLU-Math", "mmlu_math"), ("SAT-Math", "sat_math"),
             ("MATH", "math"), ("NumGLUE", "numglue"), ("Average", "average"))
MAJORITY_ROW = "majority class"
T11_FIELDS = tuple((claims.SUPERGLUE_NAMES[task], task) for task in ("boolq", "copa", "wsc", "rte", "multirc", "wic"))


def _lr_key(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:g}"


def _keyed(runs: list[Run], key) -> dict:
    """{key(run): the seed group of that key} (of several settings under one key, the one with most seeds)."""
    out: dict = {}
    for group in sorted(by_seed(runs), key=lambda g: (len(g.ok_runs), len(g.runs))):
        k = key(group.first)
        if k is not None:
            out[k] = group
    return out


def _other_scale_groups(runs: list[Run]) -> list[SeedGroup]:
    """Seed groups of one other-scale model: the base model first, then by method and lr."""
    return sorted(by_seed(runs), key=lambda g: (g.method != "base", g.method, g.lr or 0.0,
                                                g.first.epochs_trained or 0.0))


# --- T5: MT-bench ------------------------------------------------------------------------------------------

def _mtbench_cell(group: SeedGroup | None, judge: str | None = None, *, missing=NO_RUN):
    """A setting's MT-bench cell (SeedGroup.mtbench): a plain number only when nothing says how uncertain it is."""
    return seed_cell(group, missing=missing, stat=lambda g: g.mtbench(judge))


def _t5_other_scale(model_runs: list[Run], judges: list[str]) -> pd.DataFrame:
    rows = []
    for g in _other_scale_groups(model_runs):
        base = g.method == "base"
        epochs = g.first.epochs_trained
        row = {"method": g.method, "lr": "—" if base else _lr_key(g.lr), "seeds": g.seeds_text(),
               "epochs": NOT_APPLICABLE if base or epochs is None else f"{epochs:.3g}",
               "final eval loss": NOT_APPLICABLE if base else seed_cell(g, lambda r: r.final_eval_loss,
                                                                         missing=nonfinite_or(g, "final_eval_loss",
                                                                                              "not measured"))}
        for judge in judges:
            row[f"MT-bench ({judge})"] = _mtbench_cell(g, judge, missing="not judged")
        if not judges:
            row["MT-bench"] = _mtbench_cell(g, missing="not judged")
        rows.append(row)
    return pd.DataFrame(rows)


def build_t5(doc: dict, runs: list[Run], validations: dict[str, dict] | None = None) -> Table:
    """validations: each judge's agreement with GPT-4 (plots.judges.load_judge_validations), stated in the caption
    and the claim line; a judge without one is called unvalidated."""
    group = mapping.runs_for(runs, "mtbench")
    scales = mapping.by_scale(group)
    judges = sorted({j for r in group if r.ok for j in r.mtbench_scores()})
    sections = []
    for model in T5_MODELS:
        heading, model_runs = scales.get(model, (f"Paper scale: {mapping.PAPER_MODELS[model]}", []))
        cells = _keyed(model_runs, lambda r: (r.method, _lr_key(None if r.method == "base" else r.lr),
                                              None if r.method == "base" else r.epoch))
        keys = [("base", None)] + [(m, lr) for lr in T5_LRS for m in T5_METHODS]
        keys += sorted({(m, float(lr)) for (m, lr, _e) in cells if m != "base" and (m, float(lr)) not in keys},
                       key=lambda k: (k[1], k[0]))
        rows = []
        for method, lr in keys:
            row = {"lr": _lr_key(lr), "method": method}
            if method == "base":
                add_compared(row, "base model", _mtbench_cell(cells.get(("base", "—", None))),
                             paper_cell(doc, "T5", "mt_bench", model=model, method="base"))
                rows.append(row)
                continue
            per_epoch = []
            for epoch in EPOCHS:
                ours = _mtbench_cell(cells.get((method, _lr_key(lr), epoch)))
                per_epoch.append(ours)
                add_compared(row, f"epoch {epoch}", ours,
                             paper_cell(doc, "T5", "mt_bench", model=model, lr=lr, method=method, epoch=epoch))
            numbers = [mean_of(v) for v in per_epoch]
            average = statistics.fmean(numbers) if all(v is not None for v in numbers) else \
                NOT_APPLICABLE if any(v is not None for v in numbers) else NO_RUN
            add_compared(row, "average", average,
                         paper_cell(doc, "T5", "mt_bench", model=model, lr=lr, method=method, epoch="average"))
            rows.append(row)
        sections.append(Section(heading, pd.DataFrame(rows)))
    for key, (heading, model_runs) in sorted(scales.items()):
        if key not in mapping.PAPER_MODELS:
            sections.append(Section(heading, _t5_other_scale(model_runs, judges)))
    caption = ("MT-bench (single-answer grading, mean of both turns) of checkpoints after epochs 1-3 of a 3-epoch "
               "cosine schedule; an epoch-k checkpoint is a run that stopped after k epochs' steps. The paper's "
               "judge was GPT-4; ours: " + (", ".join(judges) if judges else "no judged run yet") +
               ". A different judge gives different absolute scores: a local judge's scores are not comparable "
               "with the paper's GPT-4 scores. 'average' needs all three epochs. Other scales: one row per "
               "setting, mean ± standard deviation over its seeds (named in 'seeds'), the held-out eval loss at "
               "the end of training beside each judge's score ('not judged': no judgment of its answers). An "
               "MT-bench score of one seed is the mean over its scored judgments ± the standard error of that "
               "mean (SE; k of m scored: the other judgments gave no rating, and a weak judge leaves many so).")
    trust = [text for judge in judges if (text := judge_agreement(judge, validations))]
    if trust:
        caption += (" How far each judge can be trusted (python -m eval.mtbench validate-judge): "
                    + "; ".join(trust) + ".")
    return Table("T5", "mtbench", "MT-bench by epoch and learning rate (paper Table 5)", caption, sections,
                 claim=claims.t5(runs, validations))


# --- T6: math benchmarks -----------------------------------------------------------------------------------

def _math_row(group: SeedGroup | None) -> dict:
    row = {}
    for label, field in T6_FIELDS:
        missing = NOT_APPLICABLE if field == "average" else NO_RUN
        row[label] = seed_cell(group, lambda r, f=field: (r.math_scores() or {}).get(f), missing=missing)
    return row


def build_t6(doc: dict, runs: list[Run]) -> Table:
    scales = mapping.by_scale(mapping.runs_for(runs, "math"))
    sections = []
    for model in T6_MODELS:
        heading, model_runs = scales.get(model, (f"Paper scale: {mapping.PAPER_MODELS[model]}", []))
        cells = _keyed(model_runs, lambda r: r.method)
        paper_methods = [rec["method"] for rec in doc["tables"]["T6"]["records"] if rec["model"] == model]
        rows = []
        for method in paper_methods + sorted(set(cells) - set(paper_methods)):
            ours = _math_row(cells.get(method))
            row = {"method": method}
            for label, field in T6_FIELDS:
                add_compared(row, label, ours[label], paper_cell(doc, "T6", field, model=model, method=method))
            rows.append(row)
        sections.append(Section(heading, pd.DataFrame(rows)))
    for key, (heading, model_runs) in sorted(scales.items()):
        if key not in mapping.PAPER_MODELS:
            sections.append(Section(heading, pd.DataFrame(
                [{"method": g.method, "lr": "—" if g.method == "base" else _lr_key(g.lr), "seeds": g.seeds_text(),
                  **_math_row(g)} for g in _other_scale_groups(model_runs)])))
    subsets = sorted({f"{name} {items:,} items" for run in mapping.runs_for(runs, "math") if run.ok
                      for name, items in run.math_subsets().items()})
    caption = ("Zero-shot accuracy (%) on the six MAmmoTH math benchmarks (eval.math), after 3 epochs on "
               "MathInstruct in the paper; 'Average' is shown only when all six were evaluated. Several seeds of a "
               "setting: mean ± standard deviation over them." +
               (f" Evaluated on a subset (eval.math's limit: items spread evenly over the file, which for MATH is "
                f"sorted by subject): {'; '.join(subsets)}." if subsets else ""))
    return Table("T6", "math", "Math benchmarks (paper Table 6)", caption, sections, digits=1, claim=claims.t6(runs))


# --- T11: SuperGLUE ----------------------------------------------------------------------------------------

def _superglue_cells(per_seed: dict) -> dict:
    """{task: fraction (one seed), MeanStd of fractions (several), or a status marker} from {seed: {task: ...}}."""
    out: dict = {}
    for task in sorted({t for tasks in per_seed.values() for t in tasks}):
        values = [tasks[task] for tasks in per_seed.values() if task in tasks]
        stat = summarize(v / 100.0 for v in values if isinstance(v, float))  # the evaluator writes percent
        if stat is None:
            out[task] = status_marker(str(values[-1]))
        else:
            out[task] = stat.mean if stat.n == 1 else stat
    return out


def _superglue_rows(settings: list[select.SuperglueSetting], majority: dict[str, float]) -> list[dict]:
    rows = [{"method": st.method, "lr": _lr_key(st.lr), "seeds": st.seeds_text(),
             **{label: _superglue_cells(st.per_seed).get(f, NO_RUN) for label, f in T11_FIELDS}} for st in settings]
    tasks = {t for st in settings for scores in st.per_seed.values() for t in scores}
    if shown := {t: v for t, v in majority.items() if t in tasks}:  # what a model that learned nothing scores
        rows.append({"method": MAJORITY_ROW, "lr": "—", "seeds": "—",
                     **{label: shown[f] / 100.0 if f in shown else "—" for label, f in T11_FIELDS}})
    return rows


def _tuned_sections(heading: str, settings: list[select.SuperglueSetting], majority: dict) -> list[Section]:
    """One section per sweep: each method at the lr that sweep chose, apart from the rows at the config's lr."""
    sections = []
    for sweep in sorted({st.sweep for st in settings if st.sweep}):
        tuned = [st for st in settings if st.sweep == sweep]
        tasks = sorted({t for st in tuned for scores in st.per_seed.values() for t in scores})
        names = ", ".join(claims.SUPERGLUE_NAMES.get(t, t) for t in tasks)
        sections.append(Section(f"{heading}: lr of each method from {sweep} (highest mean validation score over "
                                f"{names}; the same grid size for every method)", pd.DataFrame(
                                    _superglue_rows(tuned, majority))))
    return sections


def build_t11(doc: dict, runs: list[Run]) -> Table:
    scales = mapping.by_scale(select.superglue_runs(runs))
    heading, model_runs = scales.get("roberta-large", ("Paper scale: RoBERTa-large", []))
    settings = select.superglue_settings(model_runs)
    by_method = select.superglue_by_method([st for st in settings if st.sweep is None])
    cells = {m: _superglue_cells(s) for m, s in by_method.items()}
    paper_methods = [rec["method"] for rec in doc["tables"]["T11"]["records"]]
    rows = []
    for method in paper_methods + sorted(set(cells) - set(paper_methods)):
        row = {"method": method}
        for label, field in T11_FIELDS:
            add_compared(row, label, cells.get(method, {}).get(field, NO_RUN),
                         paper_cell(doc, "T11", field, method=method))
        rows.append(row)
    sections = [Section(heading, pd.DataFrame(rows)), *_tuned_sections(heading, settings, {})]
    for key, (other_heading, other_runs) in sorted(scales.items()):
        if key not in mapping.PAPER_MODELS:
            settings = select.superglue_settings(other_runs)
            majority = select.superglue_majority(other_runs)
            if fixed := [st for st in settings if st.sweep is None]:
                sections.append(Section(other_heading, pd.DataFrame(_superglue_rows(fixed, majority))))
            sections += _tuned_sections(other_heading, settings, majority)
    caption = ("SuperGLUE test scores as fractions (the evaluator's percent / 100): accuracy, and for MultiRC the "
               "mean of F1a and EM (eval.superglue's 'score'). The paper split each dev set into validation and "
               "test (its Table 7) and trained RoBERTa-large for 32 epochs. Several seeds: mean ± standard "
               f"deviation over them. '{MAJORITY_ROW}': the test score of always answering the training set's most "
               "frequent label (for MultiRC, 'false' to every answer), which a method that learned nothing matches. "
               "Rows under a heading 'lr of each method from <sweep>': every method at the lr of the same grid that "
               "scored the highest mean validation score over the sweep's tasks (experiments/lr_selection.py; test "
               "never used to choose), seed 0 being the sweep's own run at that lr and further seeds runs that took "
               "the choice (lr_from); tasks outside the sweep have no run there. The other rows use the config's lr.")
    return Table("T11", "superglue", "SuperGLUE (paper Table 11)", caption, sections, claim=claims.t11(runs))
