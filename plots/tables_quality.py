"""Downstream-quality tables: T5 (MT-bench per epoch and lr), T6 (six math benchmarks), T11 (SuperGLUE).

A model's untuned score comes from a run directory whose summary.json says "method": "base" (see
results/README.md); every other row is a training run evaluated by the matching evaluator."""
from __future__ import annotations

import statistics

import pandas as pd

from plots import mapping
from plots.paper import paper_cell
from plots.runs import Run
from plots.tables import NO_RUN, NOT_APPLICABLE, Section, Table, add_compared, status_marker

T5_MODELS = ("llama2-7b", "llama3-8b")
T5_LRS = (1e-5, 1e-6)
T5_METHODS = ("adam", "lomo", "lora", "galore", "badam")
EPOCHS = (1, 2, 3)
T6_MODELS = ("llama3-8b", "llama3-70b")
T6_FIELDS = (("GSM8K", "gsm8k"), ("Aqua", "aqua"), ("MMLU-Math", "mmlu_math"), ("SAT-Math", "sat_math"),
             ("MATH", "math"), ("NumGLUE", "numglue"), ("Average", "average"))
T11_FIELDS = (("BoolQ", "boolq"), ("COPA", "copa"), ("WSC", "wsc"), ("RTE", "rte"), ("MultiRC", "multirc"),
              ("WiC", "wic"))


def _lr_key(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:g}"


def _by_scale(runs: list[Run]) -> dict[str, tuple[str, list[Run]]]:
    out: dict[str, tuple[str, list[Run]]] = {}
    for run in runs:
        scale = mapping.scale_of(run, needs_trained_weights=True)
        out.setdefault(scale.key, (scale.heading, []))[1].append(run)
    return out


# --- T5: MT-bench ------------------------------------------------------------------------------------------

def _mtbench(run: Run | None):
    if run is None:
        return NO_RUN
    if not run.ok:
        return status_marker(run.status)
    score = run.mtbench_score()
    return NO_RUN if score is None else score[0]


def build_t5(doc: dict, runs: list[Run]) -> Table:
    group = mapping.runs_for(runs, "mtbench")
    scales = _by_scale(group)
    judges = sorted({s[1] for r in group if r.ok and (s := r.mtbench_score()) is not None})
    sections = []
    for model in T5_MODELS:
        heading, model_runs = scales.get(model, (f"Paper scale: {mapping.PAPER_MODELS[model]}", []))
        cells = mapping.latest_by(model_runs, lambda r: (r.method, _lr_key(None if r.method == "base" else r.lr),
                                                         None if r.method == "base" else r.epoch))
        keys = [("base", None)] + [(m, lr) for lr in T5_LRS for m in T5_METHODS]
        keys += sorted({(m, float(lr)) for (m, lr, _e) in cells if m != "base" and (m, float(lr)) not in keys},
                       key=lambda k: (k[1], k[0]))
        rows = []
        for method, lr in keys:
            row = {"lr": _lr_key(lr), "method": method}
            if method == "base":
                add_compared(row, "base model", _mtbench(cells.get(("base", "—", None))),
                             paper_cell(doc, "T5", "mt_bench", model=model, method="base"))
                rows.append(row)
                continue
            per_epoch = []
            for epoch in EPOCHS:
                ours = _mtbench(cells.get((method, _lr_key(lr), epoch)))
                per_epoch.append(ours)
                add_compared(row, f"epoch {epoch}", ours,
                             paper_cell(doc, "T5", "mt_bench", model=model, lr=lr, method=method, epoch=epoch))
            average = statistics.fmean(per_epoch) if all(isinstance(v, float) for v in per_epoch) else \
                NOT_APPLICABLE if any(isinstance(v, float) for v in per_epoch) else NO_RUN
            add_compared(row, "average", average,
                         paper_cell(doc, "T5", "mt_bench", model=model, lr=lr, method=method, epoch="average"))
            rows.append(row)
        sections.append(Section(heading, pd.DataFrame(rows)))
    for key, (heading, model_runs) in sorted(scales.items()):
        if key in mapping.PAPER_MODELS:
            continue
        rows = [{"lr": _lr_key(r.lr) if r.method != "base" else "—", "method": r.method, "epoch": r.epoch,
                 "score": _mtbench(r)} for r in sorted(model_runs, key=lambda r: (r.method, r.lr or 0, r.epoch or 0))]
        sections.append(Section(heading, pd.DataFrame(rows)))
    caption = ("MT-bench (single-answer grading, mean of both turns) of checkpoints after epochs 1-3 of a 3-epoch "
               "cosine schedule; an epoch-k checkpoint is a run that stopped after k epochs' steps. The paper's "
               "judge was GPT-4; ours: " + (", ".join(judges) if judges else "no judged run yet") +
               ". A different judge gives different absolute scores. 'average' needs all three epochs.")
    return Table("T5", "mtbench", "MT-bench by epoch and learning rate (paper Table 5)", caption, sections)


# --- T6: math benchmarks -----------------------------------------------------------------------------------

def _math_row(run: Run | None) -> dict:
    if run is None or not run.ok:
        marker = NO_RUN if run is None else status_marker(run.status)
        return {label: marker for label, _ in T6_FIELDS}
    scores = run.math_scores() or {}
    return {label: scores.get(field, NO_RUN if field != "average" else NOT_APPLICABLE)
            for label, field in T6_FIELDS}


def build_t6(doc: dict, runs: list[Run]) -> Table:
    scales = _by_scale(mapping.runs_for(runs, "math"))
    sections = []
    for model in T6_MODELS:
        heading, model_runs = scales.get(model, (f"Paper scale: {mapping.PAPER_MODELS[model]}", []))
        cells = mapping.latest_by(model_runs, lambda r: r.method)
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
            cells = mapping.latest_by(model_runs, lambda r: r.method)
            sections.append(Section(heading, pd.DataFrame(
                [{"method": m, **_math_row(r)} for m, r in sorted(cells.items())])))
    caption = ("Zero-shot accuracy (%) on the six MAmmoTH math benchmarks (eval.math), after 3 epochs on "
               "MathInstruct in the paper; 'Average' is shown only when all six were evaluated.")
    return Table("T6", "math", "Math benchmarks (paper Table 6)", caption, sections, digits=1)


# --- T11: SuperGLUE ----------------------------------------------------------------------------------------

def _superglue_by_method(model_runs: list[Run]) -> dict[str, dict]:
    """{method: {task: fraction or marker}} from eval/superglue.json files; the latest file wins per task."""
    out: dict[str, dict] = {}
    for run in sorted(model_runs, key=lambda r: r.date):
        scores = run.superglue_scores()
        if scores is None:
            continue  # e.g. the per-task harness runs inside an eval.superglue output folder
        entry = out.setdefault(run.method, {})
        for task, score in scores.items():
            # the evaluator writes percent; the paper prints fractions
            entry[task] = score / 100.0 if isinstance(score, float) else status_marker(score)
    return out


def build_t11(doc: dict, runs: list[Run]) -> Table:
    scales = _by_scale(mapping.runs_for(runs, "superglue"))
    heading, model_runs = scales.get("roberta-large", ("Paper scale: RoBERTa-large", []))
    cells = _superglue_by_method(model_runs)
    paper_methods = [rec["method"] for rec in doc["tables"]["T11"]["records"]]
    rows = []
    for method in paper_methods + sorted(set(cells) - set(paper_methods)):
        row = {"method": method}
        for label, field in T11_FIELDS:
            add_compared(row, label, cells.get(method, {}).get(field, NO_RUN),
                         paper_cell(doc, "T11", field, method=method))
        rows.append(row)
    sections = [Section(heading, pd.DataFrame(rows))]
    for key, (other_heading, other_runs) in sorted(scales.items()):
        if key not in mapping.PAPER_MODELS:
            by_method = _superglue_by_method(other_runs)
            sections.append(Section(other_heading, pd.DataFrame(
                [{"method": m, **{label: v.get(f, NO_RUN) for label, f in T11_FIELDS}}
                 for m, v in sorted(by_method.items())])))
    caption = ("SuperGLUE test scores as fractions (the evaluator's percent / 100): accuracy, and for MultiRC the "
               "mean of F1a and EM (eval.superglue's 'score'). The paper split each dev set into validation and "
               "test (its Table 7) and trained RoBERTa-large for 32 epochs.")
    return Table("T11", "superglue", "SuperGLUE (paper Table 11)", caption, sections)
