"""Which learning rate a sweep chose (a profile's `lr_from`): the selection rules, read from the sweep's run
directories, and the record <group>/lr_selection.json of the groups that took the choice. Plain file reading (no
torch): the tables (plots/) call the same functions to show how each lr was chosen.

A sweep group holds one run per method and lr. Two kinds of runs, told apart by what their directories hold, are
ranked by two rules, each fixed before any run (never by test data):
* training runs (summary.json): the lr whose run ended with the LOWEST FINAL EVAL LOSS (held-out loss);
* SuperGLUE run directories (the superglue evaluator trains and scores them per task; config.yaml and
  eval/superglue.json, no summary.json of their own): the lr with the HIGHEST MEAN VALIDATION SCORE over the sweep's
  tasks. A task's validation score is the one of the checkpoint the evaluator selected (its best on validation,
  eval/superglue/finetune.py); the test scores in the same file are never read here. The sweep's tasks: those the
  runs' configs list (data.subset) and any other task a run of the method has a result for, so every candidate is
  judged on the same tasks. A candidate with a failed task (oom, diverged, error) cannot be compared and is left
  out; a candidate that has not finished every task yet (no results file, a task missing) stops the choice: a
  choice from a sweep cut short could miss its best lr.
Ties (of the loss, or of the mean score rounded to 1e-4 points) go to the smaller lr. `at_edge_of_grid`: the chosen
lr is the smallest or largest tried (a failed lr counts as tried), so a better one may lie outside the grid.
A sweep group with `extend_at_edge` (experiments/lr_extension.py) may have tried lrs beyond its profile's grid; they
are recorded in <sweep group>/lr_extensions.json, and the selection marks those candidates (`extension`: the edge
it went beyond) and counts them (`grid_extended_by`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from experiments.results import atomic_write_text, finite_number, read_summary
from experiments.rundir import SUMMARY_FILE, RunDir

LR_SELECTION_FILE = "lr_selection.json"
EXTENSIONS_FILE = "lr_extensions.json"    # <sweep group>/lr_extensions.json: lrs tried beyond the profile's grid
SUPERGLUE_RESULTS = "superglue.json"      # <run>/eval/superglue.json, written by eval.superglue
RULE_EVAL_LOSS = "lowest final eval loss"
RULE_SUPERGLUE = "highest mean validation score (SuperGLUE; test never used)"


class LrSelectionError(RuntimeError):
    pass


def read_json_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_yaml_file(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# --- training runs: lowest final eval loss ------------------------------------------------------------------
def loss_candidates(folder: Path, method: str) -> list[dict]:
    """Every training run of `method` in the sweep folder: run, lr, status, final_eval_loss."""
    candidates = []
    for summary_path in sorted(folder.glob(f"*/{SUMMARY_FILE}")):
        summary = read_summary(summary_path.parent) or {}
        if summary.get("method") != method:
            continue
        lr = ((summary.get("config") or {}).get("method") or {}).get("lr")
        candidates.append({"run": summary_path.parent.name, "lr": lr, "status": summary.get("status"),
                           "final_eval_loss": summary.get("final_eval_loss")})
    return candidates


def _select_by_loss(folder: Path, sweep_group: str, method: str, candidates: list[dict]) -> dict:
    usable = [c for c in candidates if c["status"] == "ok" and isinstance(c["final_eval_loss"], (int, float))
              and c["lr"] is not None]
    if not usable:
        raise LrSelectionError(f"no finished run of method {method} with an eval loss in {folder} to choose the lr "
                               f"from (found {len(candidates)} run(s))")
    best = min(usable, key=lambda c: (c["final_eval_loss"], c["lr"]))
    return _selection(sweep_group, RULE_EVAL_LOSS, best["lr"], candidates)


# --- SuperGLUE run directories: highest mean validation score -----------------------------------------------
def _superglue_dirs(folder: Path, method: str) -> list[tuple[Path, dict, dict | None]]:
    """(run dir, its config.yaml, its eval/superglue.json or None) of every SuperGLUE run directory of `method`."""
    found = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        if (run / SUMMARY_FILE).is_file():
            continue
        run_dir = RunDir(run)
        config = read_yaml_file(run_dir.config) if run_dir.config.is_file() else {}
        results = read_json_file(run_dir.eval_file(SUPERGLUE_RESULTS))
        is_superglue = results is not None or (config.get("data") or {}).get("format") == "superglue"
        name = (results or {}).get("method") or (config.get("method") or {}).get("name")
        if is_superglue and name == method:
            found.append((run, config, results))
    return found


def _task_list(text) -> list[str]:
    return [t.strip().lower() for t in str(text or "").split(",") if t.strip()]


def superglue_candidates(folder: Path, method: str) -> tuple[list[dict], list[str]]:
    """(candidates, the sweep's tasks) of `method`'s SuperGLUE run directories in the sweep folder. A candidate:
    run, lr, seed, status ("ok", "failed": a task did not finish with a score, "unfinished": a task not run yet),
    validation {task: score in percent}, mean_validation_score (over the sweep's tasks; status ok only), and
    failed_tasks / missing_tasks where there are any."""
    found = _superglue_dirs(folder, method)
    tasks: set[str] = set()
    for _run, config, results in found:
        tasks.update(_task_list((config.get("data") or {}).get("subset")))
        tasks.update(str(t).lower() for t in ((results or {}).get("tasks") or {}))
    ordered = sorted(tasks)
    candidates = []
    for run, config, results in found:
        settings = (results or {}).get("settings") or config
        entries = {str(t).lower(): e for t, e in ((results or {}).get("tasks") or {}).items() if isinstance(e, dict)}
        validation, failed = {}, {}
        for task in ordered:
            entry = entries.get(task)
            if entry is None:
                continue
            score = finite_number(((entry.get("validation") or {}).get("score")))
            if entry.get("status", "ok") == "ok" and score is not None:
                validation[task] = score
            else:
                failed[task] = str(entry.get("status") or "no validation score")
        missing = [t for t in ordered if t not in entries]
        status = "unfinished" if missing else "failed" if failed else "ok"
        candidate = {"run": run.name, "lr": finite_number((settings.get("method") or {}).get("lr")),
                     "seed": settings.get("seed"), "status": status, "validation": validation,
                     "mean_validation_score": round(sum(validation.values()) / len(ordered), 4)
                     if status == "ok" and ordered else None}
        if failed:
            candidate["failed_tasks"] = failed
        if missing:
            candidate["missing_tasks"] = missing
        candidates.append(candidate)
    return candidates, ordered


def _select_by_validation(folder: Path, sweep_group: str, method: str, candidates: list[dict],
                          tasks: list[str]) -> dict:
    unfinished = [c for c in candidates if c["status"] == "unfinished"]
    if unfinished:
        named = "; ".join(f"{c['run']} lacks {', '.join(c['missing_tasks'])}" for c in unfinished)
        raise LrSelectionError(f"SuperGLUE sweep {sweep_group} has not finished for {method}: {named} (in {folder}; "
                               "the lr is chosen once every lr has a result for every task: run its evaluator)")
    usable = [c for c in candidates if c["status"] == "ok" and c["lr"] is not None]
    if not usable:
        raise LrSelectionError(f"no run of method {method} in {folder} has a validation score on every task of the "
                               f"sweep ({', '.join(tasks) or 'none'}) to choose the lr from (found {len(candidates)} "
                               "run(s))")
    best = min(usable, key=lambda c: (-c["mean_validation_score"], c["lr"]))  # the means are rounded: ties are exact
    selection = _selection(sweep_group, RULE_SUPERGLUE, best["lr"], candidates)
    selection["tasks"] = tasks
    return selection


# --- the choice and its record -------------------------------------------------------------------------------
def _selection(sweep_group: str, rule: str, chosen: float, candidates: list[dict]) -> dict:
    grid = [c["lr"] for c in candidates if c["lr"] is not None]
    edge = len(set(grid)) > 1 and chosen in (min(grid), max(grid))
    return {"from_group": sweep_group, "rule": rule, "chosen_lr": chosen, "at_edge_of_grid": edge,
            "candidates": sorted(candidates, key=lambda c: c["lr"] or 0)}


def select_lr(output_root: Path, sweep_group: str, method: str) -> dict:
    """The lr `method` takes from `sweep_group` by the rule its runs' kind calls for (module docstring), with every
    candidate; LrSelectionError when the sweep cannot choose (yet)."""
    folder = Path(output_root) / sweep_group
    trained = loss_candidates(folder, method)
    scored, tasks = superglue_candidates(folder, method)
    if trained and scored:
        raise LrSelectionError(f"{folder} holds both training runs and SuperGLUE run directories of method {method}: "
                               "one sweep group ranks its lrs by one rule; put them in separate groups")
    if scored:
        selection = _select_by_validation(folder, sweep_group, method, scored, tasks)
    else:
        selection = _select_by_loss(folder, sweep_group, method, trained)
    extended = {float(e["lr"]): e.get("edge") for e in recorded_extensions(folder).get(method, [])}
    for candidate in selection["candidates"]:
        lr = candidate.get("lr")
        edge = next((edge for x, edge in extended.items() if lr is not None and math.isclose(x, lr, rel_tol=1e-9)),
                    None)
        if edge is not None:
            candidate["extension"] = edge
    selection["grid_extended_by"] = sum("extension" in c for c in selection["candidates"])
    return selection


def read_record(path: Path) -> dict:
    """A record run_all keeps (lr_extensions.json, lr_selection.json): {} when there is none; LrSelectionError naming
    the file when it is there but not a JSON object (cut short, edited by hand). Read as empty, a cut
    lr_extensions.json would let the sweep go past its extend_at_edge cap and would be overwritten."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        doc, problem = None, f"not valid JSON ({exc})"
    else:
        problem = f"holds {type(doc).__name__}, not a JSON object"
    if not isinstance(doc, dict):
        deleted = ("the choices are made again from the sweep's runs" if path.name == LR_SELECTION_FILE else
                   "the lrs it lists count as the grid's, and up to extend_at_edge more may be tried")
        raise LrSelectionError(f"{path}: {problem}; run_all keeps its record of the lrs chosen or tried beyond the "
                               f"grid there: repair it, or delete it ({deleted})")
    return doc


def recorded_extensions(sweep_dir: Path) -> dict[str, list[dict]]:
    """{method: [{lr, edge ('lowest' / 'highest'), beyond (the edge lr it went past)}, ...]} of
    <sweep_dir>/lr_extensions.json, in the order they were planned; entries of the wrong shape are left out; a file
    that cannot be read at all raises LrSelectionError (read_record)."""
    doc = read_record(Path(sweep_dir) / EXTENSIONS_FILE)
    return {method: [e for e in entries if isinstance(e, dict) and finite_number(e.get("lr")) is not None]
            for method, entries in doc.items() if isinstance(entries, list)}


def record_extension(sweep_dir: Path, method: str, entry: dict) -> None:
    """Append an extension lr of `method` to <sweep_dir>/lr_extensions.json (run_all, when it plans the runs)."""
    record = recorded_extensions(sweep_dir)
    record.setdefault(method, []).append(entry)
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(sweep_dir) / EXTENSIONS_FILE, json.dumps(record, indent=1) + "\n")


def record_lr_selection(output_root: Path, group: str, method: str, selection: dict) -> None:
    path = Path(output_root) / group / LR_SELECTION_FILE
    record = read_record(path)
    record[method] = selection
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def recorded_selection(group_dir: Path, method: str) -> dict | None:
    """The choice <group_dir>/lr_selection.json records for `method` (None when there is none or the file is not
    a record of choices)."""
    doc = read_json_file(Path(group_dir) / LR_SELECTION_FILE) or {}
    record = doc.get(method)
    if isinstance(record, dict) and isinstance(record.get("from_group"), str) and \
            finite_number(record.get("chosen_lr")) is not None:
        return record
    return None
