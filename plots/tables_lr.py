"""LR: the learning rate of each method, as its sweep chose it (not a table of the paper).

A sweep is a group lr_sweep_<model>: the same short run of each method at several learning rates. A run group that
takes its lr from a sweep (a profile's `lr_from`) records the choice in <group>/lr_selection.json
(experiments.lr_selection.record_lr_selection). This table shows, per model and method, every candidate lr with its
final held-out eval loss (mean ± std over seeds when a candidate ran with several) or, for a SuperGLUE sweep, its mean
validation score over the sweep's tasks, the lr the suite's rule picks from the sweep as it is now
(experiments.lr_selection.select_lr: lowest final eval loss / highest mean validation score), a flag when that lr
lies at the edge of the grid (a better one may lie outside it) or the grid was extended past its edge (profile key
extend_at_edge: such candidates say so in 'grid'), and which groups recorded which choice. A recorded choice that
differs from the sweep's present choice (the sweep gained runs since) is named.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.lr_selection import (LR_SELECTION_FILE, LrSelectionError, select_lr,  # file reading, no torch
                                      superglue_candidates)
from plots import mapping
from plots.claims import SUPERGLUE_NAMES
from plots.runs import Run, load_json_object
from plots.seeds import by_seed, summarize
from plots.tables import NO_RUN, NOT_APPLICABLE, Section, Table, nonfinite_or, seed_cell

NOT_CHOSEN = "—"
VALIDATION = "mean validation score (%)"


def read_selections(results: Path, problems: list[str]) -> dict[str, dict[str, list[tuple[str, dict]]]]:
    """{sweep group: {method: [(group that recorded it, its record), ...]}} from every lr_selection.json; a file
    of the wrong shape is named in `problems` and left out."""
    out: dict[str, dict[str, list]] = {}
    for path in sorted(Path(results).rglob(LR_SELECTION_FILE)):
        doc, problem = load_json_object(path)
        if problem is None and not all(isinstance(v, dict) and isinstance(v.get("from_group"), str)
                                       and isinstance(v.get("chosen_lr"), (int, float)) for v in doc.values()):
            problem = "is not a learning-rate choice (expected {method: {from_group, chosen_lr, candidates}})"
        if problem is not None:
            problems.append(f"{path} left out: the file {problem}")
            continue
        for method, record in doc.items():
            out.setdefault(record["from_group"], {}).setdefault(method, []).append((path.parent.name, record))
    return out


def _edge(selection: dict) -> str:
    grid = sorted({c["lr"] for c in selection.get("candidates", []) if isinstance(c.get("lr"), (int, float))})
    if len(grid) < 2:
        return "only one lr in the sweep"
    extended = sum("extension" in c for c in selection.get("candidates", []))
    by = f"grid extended by {extended} lr{'s' * (extended != 1)}"
    if not selection.get("at_edge_of_grid"):
        return f"no ({by})" if extended else "no"
    edge = "yes: lowest lr of the grid" if selection["chosen_lr"] == grid[0] else "yes: highest lr of the grid"
    return f"{edge} ({by})" if extended else edge


def _grid_cell(candidate: dict | None) -> str:
    """'grid' (the profile's lrs) or 'extended below / above' (an lr run_all added past the edge, extend_at_edge)."""
    edge = (candidate or {}).get("extension")
    return {"lowest": "extended below", "highest": "extended above"}.get(edge, "grid")


def _choice(group_dir: Path, group: str, method: str, problems: list[str]) -> tuple[dict | None, str]:
    """(the sweep's present choice, '') or (None, why there is none)."""
    try:
        return select_lr(group_dir.parent, group, method), ""
    except LrSelectionError as exc:
        return None, str(exc)  # e.g. no finished run with an eval loss, or a SuperGLUE sweep not finished yet
    except (OSError, ValueError) as exc:
        problems.append(f"{group_dir}: the lr choice of {method} not computed: {type(exc).__name__}: {exc}")
        return None, f"not computed ({type(exc).__name__})"


def _task_name(task: str) -> str:
    return SUPERGLUE_NAMES.get(task, task)


def _why_not_scored(candidate: dict) -> str:
    """'failed: COPA oom' / 'unfinished: no RTE yet': why a SuperGLUE sweep candidate has no mean validation score."""
    tasks = [f"{_task_name(t)} {status}" for t, status in candidate.get("failed_tasks", {}).items()]
    tasks += [f"no {_task_name(t)} yet" for t in candidate.get("missing_tasks", [])]
    return f"{candidate['status']}: " + ", ".join(tasks)


def _validation_cells(g, candidates: dict[str, dict], tasks: list[str]) -> dict:
    """The cells of a SuperGLUE sweep's setting (superglue_candidates of its runs): the mean validation score over
    the sweep's tasks (what the choice ranks), or why the setting has none, and the validation score per task."""
    found = [candidates[r.path.name] for r in g.runs if r.path.name in candidates]
    stat = summarize(c["mean_validation_score"] for c in found)
    why = "; ".join(_why_not_scored(c) for c in found if c["status"] != "ok") or "no results"
    per_task = [f"{_task_name(t)} {v.mean:.1f}" for t in tasks
                if (v := summarize(c["validation"].get(t) for c in found)) is not None]
    return {VALIDATION: why if stat is None else stat.mean if stat.n == 1 else stat,
            "validation per task": ", ".join(per_task) or NOT_APPLICABLE}


def _used_by(records: list[tuple[str, dict]], chosen: float | None) -> str:
    if not records:
        return "no run yet"
    parts = []
    for group, record in records:
        note = "" if chosen is None or record["chosen_lr"] == chosen else \
            f" (the sweep now picks {chosen:g})"
        parts.append(f"{group}: {record['chosen_lr']:g}{note}")
    return "; ".join(parts)


def _method_rows(sweep: str, method: str, runs: list[Run], records, problems: list[str]) -> tuple[list[dict], dict]:
    groups = sorted(by_seed(runs), key=lambda g: g.lr or 0.0)
    selection, why_none = _choice(runs[0].path.parent, sweep, method, problems)
    chosen = selection["chosen_lr"] if selection else None
    scored = superglue_candidates(runs[0].path.parent, method)  # SuperGLUE run directories: ranked on validation
    candidates, tasks = {c["run"]: c for c in scored[0]}, scored[1]
    by_lr = {c["lr"]: c for c in (selection or {}).get("candidates", []) if isinstance(c.get("lr"), (int, float))}
    extended = any("extension" in c for c in by_lr.values())
    rows = []
    for g in groups:
        is_chosen = chosen is not None and g.lr is not None and abs(g.lr - chosen) <= 1e-12 * max(chosen, 1e-30)
        epochs = g.first.epochs_trained
        row = {"sweep": sweep, "method": method, "lr": f"{g.lr:g}" if g.lr is not None else NOT_APPLICABLE,
               **({"grid": _grid_cell(by_lr.get(g.lr))} if extended else {}),
               "seeds": g.seeds_text(), "epochs": NOT_APPLICABLE if epochs is None else f"{epochs:.3g}"}
        if any(r.path.name in candidates for r in g.runs):
            row.update(_validation_cells(g, candidates, tasks))
        else:
            row["final eval loss"] = seed_cell(g, lambda r: r.final_eval_loss,
                                                 missing=nonfinite_or(g, "final_eval_loss", "not measured"))
        rows.append({**row, "chosen": "chosen" if is_chosen else NOT_CHOSEN,
                     "at edge of grid": _edge(selection) if is_chosen else NOT_CHOSEN,
                     "used by": _used_by(records, chosen) if is_chosen else NOT_CHOSEN})
    if selection is None and rows:
        rows[-1]["chosen"] = f"none: {why_none}"
        rows[-1]["used by"] = _used_by(records, None)
    summary = {"method": method, "chosen": chosen, "edge": _edge(selection) if selection else None}
    return rows, summary


def _recorded_only_rows(sweep: str, by_method: dict[str, list]) -> list[dict]:
    """Rows of a recorded choice whose sweep runs are not in the results (only their record is)."""
    rows = []
    for method, records in sorted(by_method.items()):
        _, record = records[-1]
        for candidate in record.get("candidates", []):
            lr = candidate.get("lr")
            is_chosen = lr == record["chosen_lr"]
            metric = VALIDATION if "mean_validation_score" in candidate else "final eval loss"
            value = candidate.get("mean_validation_score", candidate.get("final_eval_loss"))
            rows.append({"sweep": sweep, "method": method, "lr": f"{lr:g}" if isinstance(lr, (int, float)) else "?",
                         **({"grid": _grid_cell(candidate)} if record.get("grid_extended_by") else {}),
                         "seeds": NOT_APPLICABLE, "epochs": NOT_APPLICABLE,
                         metric: value if isinstance(value, (int, float)) else candidate.get("status", "?"),
                         "chosen": "chosen" if is_chosen else NOT_CHOSEN,
                         "at edge of grid": _edge(record) if is_chosen else NOT_CHOSEN,
                         "used by": _used_by(records, None) if is_chosen else NOT_CHOSEN})
    return rows


def _with_grid_column(frame: pd.DataFrame) -> pd.DataFrame:
    """A section where some sweep extended its grid: 'grid' right after 'lr', 'grid' for every unextended row."""
    if "grid" not in frame.columns:
        return frame
    columns = [c for c in frame.columns if c != "grid"]
    columns.insert(columns.index("lr") + 1, "grid")
    return frame.assign(grid=frame["grid"].fillna("grid"))[columns]


def lr_claim(summaries: dict[str, list[dict]]) -> str:
    """Per model: how many methods' chosen lr lies at the edge of its grid, and which had one lr only."""
    if not summaries:
        return "No lr sweep (lr_sweep_*) in the results: no learning rate was chosen by a sweep yet."
    lines = []
    for heading, items in summaries.items():
        chosen = [s for s in items if s["chosen"] is not None]
        single = [s["method"] for s in chosen if s["edge"] == "only one lr in the sweep"]
        graded = [s for s in chosen if s["method"] not in single]
        edge = [f"{s['method']} {'lowest' if 'lowest' in s['edge'] else 'highest'}" for s in graded
                if s["edge"].startswith("yes")]
        extended = [f"{s['method']} by {s['edge'].split('extended by ')[1].rstrip(')')}" for s in graded
                    if "extended by" in s["edge"]]
        text = (f"{heading.split(' (')[0]}: the chosen lr lies at the edge of its grid for {len(edge)} of "
                f"{len(graded)} methods with two or more lrs" + (f" ({', '.join(edge)})" if edge else "") +
                (": a better lr may lie outside the grid" if edge else ""))
        if extended:
            text += f"; grid extended past its edge (extend_at_edge) for {', '.join(extended)}"
        if single:
            text += f"; one finished lr only (taken without a comparison): {', '.join(single)}"
        missing = [s["method"] for s in items if s["chosen"] is None]
        if missing:
            text += f"; no lr chosen (the table says why): {', '.join(missing)}"
        lines.append(text + ".")
    return " ".join(lines) + " (The paper's Table 5 runs every method at lr 1e-5 and 1e-6, without a sweep.)"


def build_lr(runs: list[Run], results: Path, problems: list[str] | None = None) -> Table:
    problems = [] if problems is None else problems
    recorded = read_selections(results, problems)
    sweeps = mapping.runs_for(runs, "lr_sweep")
    sections, summaries = [], {}
    for _key, (heading, scale_runs) in sorted(mapping.by_scale(sweeps).items()):
        rows, items = [], []
        for sweep in sorted({r.group for r in scale_runs}):
            for method in sorted({r.method for r in scale_runs if r.group == sweep}):
                method_runs = [r for r in scale_runs if r.group == sweep and r.method == method]
                method_rows, summary = _method_rows(sweep, method, method_runs,
                                                    recorded.get(sweep, {}).get(method, []), problems)
                rows += method_rows
                items.append(summary)
        # a scale with both kinds of sweep: each row has the metric its rule ranks, the other column is n/a
        sections.append(Section(heading, _with_grid_column(pd.DataFrame(rows)).fillna(NOT_APPLICABLE)))
        summaries[heading] = items
    present = {r.group for r in sweeps}
    for sweep, by_method in sorted(recorded.items()):
        if sweep not in present:
            sections.append(Section(f"Recorded choices of {sweep} (its runs are not in the results)",
                                    pd.DataFrame(_recorded_only_rows(sweep, by_method))))
    if not sections:
        sections.append(Section("No learning-rate sweep in the results", pd.DataFrame(
            [{"sweep": NO_RUN, "method": NOT_APPLICABLE, "lr": NOT_APPLICABLE, "final eval loss": NO_RUN,
              "chosen": NOT_APPLICABLE}])))
    caption = ("Learning rates chosen by the same short sweep for every method (profile key lr_from: the lr with the "
               "lowest final held-out eval loss; of a SuperGLUE sweep, whose runs the superglue evaluator scores per "
               f"task, the lr with the highest '{VALIDATION}' over the sweep's tasks, each task at its "
               "best-validation checkpoint, test never read; ties to the smaller lr; experiments/lr_selection.py). "
               "'epochs' is the sweep run's length "
               "(the main runs are longer). 'at edge of grid': the chosen lr is the lowest or highest tried, so a "
               "better one may lie outside the grid; 'grid extended by N lrs': run_all tried N more lrs past the "
               "edge where the choice lay (profile key extend_at_edge; 'grid' says which). 'used by': the groups whose lr_selection.json recorded the "
               "choice ('no run yet' when none has). Several seeds of a candidate: mean ± standard deviation.")
    return Table("LR", "learning_rates", "Learning rate per method from its sweep (not a table of the paper)",
                 caption, sections, digits=4, claim=lr_claim(summaries), claim_label="What the sweeps show")
