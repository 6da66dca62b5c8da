"""What the suite does with the learning rate a sweep chooses (a profile's `lr_from`), beyond the choice itself
(experiments/lr_selection.py). Plain file work on planned runs (experiments.suite.PlannedRun); no torch.

* Resolving: a run of a group with lr_from takes its method's chosen lr (resolve_lr), recorded in the group's
  lr_selection.json.
* Stale runs: a finished (or checkpointed) run of such a group whose lr is not the one the sweep chooses now (the
  sweep gained runs since, e.g. an extension below) is stale. It is moved aside, never deleted, to
  <group>/superseded/<run name>-lr<old lr>/ (experiments.rundir.SUPERSEDED_DIR: plots, scripts/gpu/restore_runs.py
  and experiments.results.find_runs never read it as a run) and trained again at the present lr. A SuperGLUE run
  directory alike: the superglue evaluator reuses a task only when the run's whole config (its "settings", lr
  included; eval/superglue/cli.py settings_of) is the same, and refuses results of other settings, so the old
  directory goes aside and every task trains again.
* Extension at the edge (profile key `extend_at_edge: N` on a sweep group, the one with `lrs`; default 0): when all
  of a method's sweep runs are final and its choice is the lowest or the highest lr tried, one more lr beyond that
  edge is planned, the same geometric step as the two outermost lrs there (rounded to 2 significant digits: 3e-5
  below [3e-5, 1e-4, ...] gives 9e-6), again while the choice stays at the new edge, at most N extra lrs per
  method. An extension lr is recorded in <sweep group>/lr_extensions.json when it is planned (a rerun plans its runs
  again, to skip or resume them), and the selection marks its candidates (experiments.lr_selection). Runs with
  lr_from wait until no extension is pending for their method. A failed extension run counts as tried: the choice
  is then inside the grid and nothing more is added.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

from experiments.lr_selection import (EXTENSIONS_FILE, LR_SELECTION_FILE, SUPERGLUE_RESULTS, LrSelectionError,
                                      read_json_file, read_record, read_yaml_file, record_extension,
                                      record_lr_selection, recorded_extensions, select_lr)
from experiments.results import finite_number
from experiments.rundir import SUPERSEDED_DIR, RunDir


def same_lr(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def trained_by_evaluator(item) -> bool:
    """SuperGLUE configs are fine-tuned and scored per task by the superglue evaluator (eval/superglue), not by the
    suite's training."""
    return item.cfg is not None and item.cfg.data.format == "superglue"


# --- the chosen lr ----------------------------------------------------------------------------------------------
def with_lr(item, lr: float):
    resolved = copy.deepcopy(item)
    resolved.cfg.method.lr = float(lr)
    resolved.overrides = (*item.overrides, f"method.lr={lr!r}")
    return resolved


def resolve_lr(item, output_root: Path):
    """The run with its sweep-chosen lr (and the choice recorded); LrSelectionError when the sweep has no result."""
    if not item.lr_from:
        return item
    selection = select_lr(output_root, item.lr_from, item.method)
    record_lr_selection(output_root, item.group, item.method, selection)
    return with_lr(item, selection["chosen_lr"])


# --- stale runs -------------------------------------------------------------------------------------------------
def trained_lr(run_dir: Path) -> float | None:
    """The lr a run directory holds results of (summary.json's config, a SuperGLUE run's eval/superglue.json
    settings) or is set up for (config.yaml); None when it names none."""
    run = RunDir(run_dir)
    sources = ((run.read_summary() or {}).get("config"),
               (read_json_file(run.eval_file(SUPERGLUE_RESULTS)) or {}).get("settings"),
               read_yaml_file(run.config) if run.config.is_file() else None)
    for source in sources:
        lr = finite_number(((source if isinstance(source, dict) else {}).get("method") or {}).get("lr"))
        if lr is not None:
            return lr
    return None


def stale_lr(item) -> float | None:
    """The lr of `item`'s run directory when the directory is there and its lr is not item's (resolved) lr."""
    if item.run_dir is None or not item.run_dir.is_dir():
        return None
    old = trained_lr(item.run_dir)
    return old if old is not None and not same_lr(old, item.cfg.method.lr) else None


def supersede(run_dir: Path, old_lr: float) -> Path:
    """Move a stale run directory to <group>/superseded/<run>-lr<old lr>[-N]/ (never over an earlier one)."""
    folder = run_dir.parent / SUPERSEDED_DIR
    base = f"{run_dir.name}-lr{old_lr:g}"
    target, n = folder / base, 2
    while target.exists():
        target, n = folder / f"{base}-{n}", n + 1
    folder.mkdir(parents=True, exist_ok=True)
    run_dir.rename(target)
    return target


def stale_notice(item, old_lr: float, moved: Path | None = None) -> str:
    where = f"{SUPERSEDED_DIR}/{moved.name}" if moved is not None else f"{SUPERSEDED_DIR}/"
    return f"stale: trained at lr {old_lr:g}, the sweep now picks {item.cfg.method.lr:g}; old run moved to {where}"


# --- extension at the edge --------------------------------------------------------------------------------------
def beyond_edge(tried: list[float], edge: str) -> float:
    """The next lr past the lowest / highest of `tried`, one step of the two outermost lrs there."""
    lrs = sorted(set(tried))
    outer, inner = (lrs[0], lrs[1]) if edge == "lowest" else (lrs[-1], lrs[-2])
    return float(f"{outer * outer / inner:.2g}")


def sweep_methods(planned: list) -> dict[tuple[str, str], list]:
    """{(sweep group, method): its planned runs} of the sweeps that may extend their grid (extend_at_edge > 0)."""
    found: dict[tuple[str, str], list] = {}
    for item in planned:
        if item.cfg is not None and item.extend_at_edge > 0:
            found.setdefault((item.group, item.method), []).append(item)
    return found


def _clone(item, lr: float, edge: str):
    tag = f"-{item.method}-lr{item.cfg.method.lr:g}"
    head, found, tail = item.cfg.run_name.rpartition(tag)
    name = f"{head}-{item.method}-lr{lr:g}{tail}" if found else f"{item.cfg.run_name}-lr{lr:g}"
    clone = copy.deepcopy(item)
    clone.cfg.method.lr, clone.cfg.run_name, clone.extension = float(lr), name, edge
    clone.notice = extension_notice(clone)
    clone.overrides = (*item.overrides, f"run_name={name}", f"method.lr={lr!r}")
    return clone


def _runs_at(runs: list, lr: float, edge: str) -> list:
    """The runs of one sweep method at a new lr: a copy of each run at one of its grid's lrs (one per seed)."""
    grid = [r for r in runs if r.extension is None] or runs
    return [_clone(r, lr, edge) for r in grid if same_lr(r.cfg.method.lr, grid[0].cfg.method.lr)]


def with_recorded_extensions(planned: list, output_root: Path) -> list:
    """The plan with the runs of every extension lr its sweeps' lr_extensions.json record (planned by an earlier
    invocation: they are skipped when finished, resumed or redone otherwise), after each sweep method's runs."""
    out = list(planned)
    for (group, method), runs in sweep_methods(planned).items():
        lrs = [r.cfg.method.lr for r in runs]
        extra = []
        for entry in recorded_extensions(Path(output_root) / group).get(method, []):
            if not any(same_lr(entry["lr"], x) for x in lrs):
                extra += _runs_at(runs, float(entry["lr"]), str(entry.get("edge")))
                lrs.append(float(entry["lr"]))
        if extra:
            position = next(i for i, p in enumerate(out) if p is runs[-1]) + 1
            out[position:position] = extra
    return out


def due_extension(runs: list, output_root: Path, *, record: bool = True) -> list:
    """The runs of the next lr beyond the edge for one sweep method (`runs`: its planned runs, all final), or []
    when its choice is inside the grid, cannot be made, or N extra lrs were tried already. `record`: write the new
    lr to lr_extensions.json (not in a dry run)."""
    item = runs[0]
    folder = Path(output_root) / item.group
    try:
        selection = select_lr(output_root, item.group, item.method)
    except LrSelectionError:
        return []
    tried = sorted({c["lr"] for c in selection["candidates"] if c.get("lr") is not None})
    chosen = selection["chosen_lr"]
    if len(tried) < 2 or not (same_lr(chosen, tried[0]) or same_lr(chosen, tried[-1])):
        return []
    edge = "lowest" if same_lr(chosen, tried[0]) else "highest"
    grid = [r.cfg.method.lr for r in runs if r.extension is None]
    extended = [e for e in recorded_extensions(folder).get(item.method, [])
                if not any(same_lr(e["lr"], x) for x in grid)]
    lr = beyond_edge(tried, edge)
    if len(extended) >= item.extend_at_edge or any(same_lr(lr, x) for x in tried):
        return []
    if record:
        record_extension(folder, item.method, {"lr": lr, "edge": edge, "beyond": chosen})
    return _runs_at(runs, lr, edge)


def new_extensions(planned: list, output_root: Path, *, busy: list, settled: Callable[[list], bool],
                   record: bool = True) -> list:
    """The runs of every extension due now: over the sweep methods of `planned` with no run in `busy` (pending or
    running) and whose runs are `settled` (all final: the caller's rule)."""
    out = []
    for (group, method), runs in sweep_methods(planned).items():
        if any(b.group == group and b.method == method for b in busy) or not settled(runs):
            continue
        out += due_extension(runs, output_root, record=record)
    return out


def check_records(planned: list, output_root: Path) -> None:
    """Before anything trains: the records the plan's sweeps and lr_from groups keep are readable (LrSelectionError
    naming the file otherwise, lr_selection.read_record)."""
    for item in planned:
        if item.cfg is None:
            continue
        if item.extend_at_edge > 0:
            read_record(Path(output_root) / item.group / EXTENSIONS_FILE)
        if item.lr_from:
            read_record(Path(output_root) / item.group / LR_SELECTION_FILE)
            read_record(Path(output_root) / item.lr_from / EXTENSIONS_FILE)


def edge_notes(planned: list, output_root: Path) -> list[str]:
    """run_all's closing notes: sweep methods whose choice still lies at the edge of the grid after every extra lr
    extend_at_edge allowed (a better lr may lie beyond it)."""
    notes = []
    for (group, method), runs in sweep_methods(planned).items():
        try:
            selection = select_lr(output_root, group, method)
        except LrSelectionError:
            continue
        if selection["at_edge_of_grid"] and selection["grid_extended_by"] >= runs[0].extend_at_edge:
            notes.append(f"{group}: {method}'s lr {selection['chosen_lr']:g} still lies at the edge of its grid after "
                         f"{selection['grid_extended_by']} extra lr(s) (extend_at_edge: {runs[0].extend_at_edge}): a "
                         "better one may lie beyond it; raise extend_at_edge or widen lrs")
    return notes


def extension_notice(item) -> str:
    return f"lr beyond the {item.extension} edge of the grid (extend_at_edge)" if item.extension else ""


def extend_evaluated_sweeps(outcomes: list, output_root: Path, *, hand_over: Callable,
                            evaluate: Callable) -> tuple[list, list[str]]:
    """SuperGLUE sweeps with extend_at_edge, after their evaluator ran (run_all): while a method's choice lies at
    the edge of its grid (at most N times), hand the run directories of one more lr over (`hand_over(run)` ->
    outcome, experiments.suite.hand_to_evaluator) and run the sweep's evaluator on them (`evaluate(groups,
    outcomes)` -> notes), before the groups that take their lr from the sweep are handed over. Returns the outcomes
    with those of the new run directories added, and the evaluators' notes."""
    notes: list[str] = []
    while True:
        added = new_extensions([o.planned for o in outcomes], output_root, busy=[], settled=lambda runs:
                               trained_by_evaluator(runs[0]))
        if not added:
            return outcomes, notes
        later = [hand_over(item) for item in added]
        outcomes = [*outcomes, *later]
        notes += evaluate({item.group for item in added}, later)


def dry_run_lines(planned: list, output_root: Path, finished: Callable[[list], bool]) -> list[str]:
    """run_all --dry-run: a line per planned run (finished ones say so; with lr_from: the lr the sweep chooses now,
    and whether the run there is stale and would be moved aside; runs of recorded extensions included), then the
    extensions due now and those that may follow. `finished(runs)`: whether those training runs all ended."""
    planned = with_recorded_extensions(planned, output_root)
    lines = []
    for item in planned:
        if item.cfg is None:
            lines.append(f"  {item.group}/{item.method}: skipped: {item.skip_reason}")
            continue
        train = item.cfg.train
        text = f"{item.cfg.model.source}, {train.max_steps or train.epochs} {'steps' if train.max_steps else 'epochs'}"
        text += f", lr from {item.lr_from}" if item.lr_from else f", lr {item.cfg.method.lr:g}"
        if item.extension:
            text += f" ({extension_notice(item)})"
        elif item.lr_from:
            try:
                resolved = with_lr(item, select_lr(output_root, item.lr_from, item.method)["chosen_lr"])
            except LrSelectionError:
                resolved = None
            old = stale_lr(resolved) if resolved is not None else None
            text += "" if resolved is None else f" (now {resolved.cfg.method.lr:g}" + (
                f"; {stale_notice(resolved, old)}, trained again)" if old is not None else ")")
        done = finished([item]) and not (item.lr_from and "stale" in text)
        lines.append(f"  {item.group}/{item.cfg.run_name}: {text}" + ", alone on its GPU" * item.exclusive
                     + "; finished (kept)" * done)
    settled = lambda runs: finished(runs) or trained_by_evaluator(runs[0])  # noqa: E731 (SuperGLUE: scored or not)
    for run in new_extensions(planned, output_root, busy=[], settled=settled, record=False):
        lines.append(f"  {run.group}/{run.cfg.run_name}: extension due now, {extension_notice(run)}")
    groups: dict[str, list[str]] = {}
    for (group, method), runs in sweep_methods(planned).items():
        groups.setdefault(f"{group} (up to {runs[0].extend_at_edge} per method)", []).append(method)
    for group, methods in groups.items():
        lines.append(f"  {group}: extra lrs beyond the grid may follow for {', '.join(methods)} while the choice "
                     "lies at the edge; runs with lr_from wait for them, and their lr may change")
    return lines
