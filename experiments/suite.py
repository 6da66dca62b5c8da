"""Executing a planned suite (experiments.run_all): what to do with each run directory, the learning rate a sweep
chose, and running several trainings at once on one or more GPUs.

* State of a planned run, from its directory (output.dir/run_name):
    done     summary.json with a final status (ok, oom, diverged, or an unsupported setup): skipped on rerun
    resume   no final summary but a checkpoint (train.save_every): resumed from it, into the same directory
    redo     a failed (error) or half-started directory with nothing to resume: replaced
    new      no directory yet
    broken   a summary.json that is not a JSON object (cut short or edited): left as it is and reported as an error
             naming the file (it may hold a finished run; deleting the directory, or --fresh, trains it again)
  `fresh=True` (run_all --fresh) redoes every run.
* lr_from: a run group may take each method's learning rate from the finished runs of an earlier group (a sweep):
  the lr with the lowest final eval loss wins (of a SuperGLUE sweep: the highest mean validation score over its
  tasks; experiments/lr_selection.py); the choice and every candidate are written to
  <output_root>/<group>/lr_selection.json, so the tables can say how each lr was chosen. A group the superglue
  evaluator trains whose sweep is in the same plan waits for that sweep's evaluator: it is passed on as `not
  started` (DEFERRED_NOTE) and run_all hands it over after the evaluators ran. A finished run of such a group trained
  at another lr than the sweep's present choice is stale: moved aside to <group>/superseded/ and trained again; a
  sweep with extend_at_edge first adds lrs beyond its grid's edge (experiments/lr_extension.py).
* Parallel: with jobs > 1 (or a deadline) every run is a child process `python -m experiments.run ...`; each of the
  `jobs` slots is pinned to one GPU (CUDA_VISIBLE_DEVICES, round robin over `gpus`), so several small-model runs share
  a GPU that one of them alone leaves mostly idle. Each child's output goes to <output_root>/logs/<group>.<run>.log.
  A deadline stops launching new runs (launch_deadline_s) and ends runs still going (kill_after_s); those are
  reported as `interrupted` / `not started` and continue on the next invocation (resume, when they checkpointed).
* Exclusive runs (profile key `exclusive: true`, e.g. timing runs): such a run starts only on a GPU with nothing of the
  suite running on it, and nothing else starts there until it ends, so it records environment.shared_device_runs 1
  and its step times are measurements. The other runs go first: an exclusive run takes a GPU when no other run that
  is ready can use it (at the end of the suite, or while the others wait for their sweep). Without `gpus` the
  children share every visible device: an exclusive run then waits until nothing else runs. Processes started
  outside this suite (scripts/gpu/evaluate_when_done.py) are not seen. One job (no deadline) runs one run at a time
  anyway.
"""
from __future__ import annotations

import copy
import fnmatch
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.config import ConfigError, changed_settings
from experiments.lr_extension import (new_extensions, resolve_lr, stale_lr, stale_notice, supersede,  # noqa: F401
                                      trained_by_evaluator, with_lr, with_recorded_extensions)
from experiments.lr_selection import LrSelectionError, select_lr  # noqa: F401 (suite.select_lr: the rule's entry)
from experiments.paths import REPO_ROOT
from experiments.process_env import ctrl_c_raises
from experiments.results import read_summary
from experiments.rundir import RunDir, RunFileError

FINAL_STATUSES = ("ok", "oom", "diverged")  # results; an `error` is retried, an unsupported setup is final too


@dataclass
class PlannedRun:
    group: str
    method: str
    cfg: object | None                   # RunConfig; None when skipped
    skip_reason: str | None = None
    config: str | None = None            # the config name and overrides that resolve cfg (for a child process)
    overrides: tuple[str, ...] = ()
    lr_from: str | None = None           # group whose finished runs choose this run's method.lr
    adaptations: tuple[str, ...] = ()    # what run_all changed to fit the method's declared capabilities (and why)
    exclusive: bool = False              # alone on its GPU while it runs (module docstring)
    extend_at_edge: int = 0              # of a sweep run: extra lrs beyond its grid's edge (experiments/lr_extension)
    extension: str | None = None         # of a run at such an lr: the edge it went past ("lowest" / "highest")
    notice: str = ""                     # what the suite did before training it (a stale run moved aside)

    @property
    def run_dir(self) -> Path | None:
        return None if self.cfg is None else Path(self.cfg.output.dir) / self.cfg.run_name


@dataclass
class Outcome:
    planned: PlannedRun
    status: str                          # ok | oom | diverged | error | skipped | interrupted | not started
    summary: dict | None = None
    run_dir: Path | None = None
    note: str = ""
    reused: bool = False                 # finished by an earlier invocation


@dataclass
class ParallelOptions:
    jobs: int = 1
    gpus: list[str] = field(default_factory=list)   # CUDA device ids; empty: children see the parent's devices
    launch_deadline_s: float | None = None
    kill_after_s: float | None = None
    log_dir: Path | None = None


# --- state of a run directory ----------------------------------------------------------------------------------
def group_matches(group: str, patterns: list[str]) -> bool:
    """Whether a run group is one of `patterns`: group names or shell-style patterns ("*_gemma3_270m" takes one
    model's part of a profile that holds several)."""
    return any(fnmatch.fnmatchcase(group, pattern) for pattern in patterns)


def select_groups(known, patterns: list[str], *, where: str = "the profile") -> list[str]:
    """The groups of `known` that `patterns` select (group_matches), sorted: run_all's --groups and every script that
    takes the same argument (scripts/gpu/restore_runs.py) select the same groups. A pattern that selects none is a
    ConfigError naming it and the groups of `where`."""
    known = sorted(set(known))
    unknown = [pattern for pattern in patterns if not any(group_matches(group, [pattern]) for group in known)]
    if unknown:
        raise ConfigError(f"--groups names unknown group(s) {', '.join(unknown)}; groups of {where}: "
                          f"{', '.join(known)}")
    return [group for group in known if group_matches(group, patterns)]


def is_final(summary: dict | None) -> bool:
    return bool(summary) and (summary.get("status") in FINAL_STATUSES or summary.get("error_kind") == "unsupported")


def run_state(run_dir: Path, *, fresh: bool = False) -> str:
    """done | resume | redo | new | broken (see the module docstring)."""
    if not run_dir.exists():
        return "new"
    if fresh:
        return "redo"
    try:
        summary = read_summary(run_dir)
    except RunFileError:
        return "broken"
    if is_final(summary):
        return "done"
    if RunDir(run_dir).has_checkpoint():
        return "resume"
    return "redo"


def broken_outcome(item: PlannedRun) -> Outcome:
    """The outcome of a run whose summary.json cannot be read (run_state "broken"): the directory is not touched; the
    note (also printed, one line) names the file, why, and how to train the run again."""
    try:
        read_summary(item.run_dir)
        problem = f"{item.run_dir}: summary.json became readable again; rerun to use it"
    except RunFileError as exc:
        problem = str(exc)
    note = f"{problem}; left as it is: delete {item.run_dir} (or rerun with --fresh) to train it again"
    print(f"error: {note}", file=sys.stderr)
    return Outcome(item, "error", None, item.run_dir, note)


def outcome_from_summary(item: PlannedRun, summary: dict | None, run_dir: Path, *, reused: bool = False) -> Outcome:
    if summary is None:
        return Outcome(item, "error", None, run_dir, "the run wrote no summary.json (killed or crashed)")
    status = summary.get("status", "error")
    if summary.get("error_kind") == "unsupported":
        status = "skipped"
    if status == "interrupted":
        return Outcome(item, status, summary, run_dir, "stopped on request; rerun to resume from its checkpoint",
                       reused=reused)
    changed = changed_settings(summary.get("config") or {}, item.cfg) if reused and item.cfg is not None else []
    changed = [c for c in changed if not (item.lr_from and c.startswith("method.lr:"))]  # stale lrs: lr_extension
    note = (f"kept, though trained with other settings than this call's ({'; '.join(changed)}): --fresh, or delete "
            "it, to train it again" if changed else "")
    return Outcome(item, status, summary, run_dir, note or summary.get("error") or "", reused=reused)


# --- learning rate chosen by a sweep (the rules: experiments/lr_selection.py, lr_extension.py) -------------------
def waits_for(item: PlannedRun, pending: list[PlannedRun], running: list[PlannedRun]) -> bool:
    """A run with lr_from waits until no run of its method in the sweep group (extensions included) is pending or
    running."""
    return bool(item.lr_from) and any(p.group == item.lr_from and p.method == item.method
                                      for p in [*pending, *running])


def sweep_finished(runs: list[PlannedRun]) -> bool:
    """Whether a sweep method's training runs all ended with a final status (its grid may then be extended; a
    SuperGLUE sweep only after its evaluator ran, experiments.run_all)."""
    return not trained_by_evaluator(runs[0]) and all(is_final(read_summary(r.run_dir)) for r in runs)


def settle(item: PlannedRun, output_root: Path, fresh: bool = False) -> tuple[PlannedRun, str, Outcome | None]:
    """(the run as it will train, its state, None), or (.., .., its outcome) when there is nothing to train: a
    finished run (reused), a sweep without a result (skipped). A run with lr_from gets the sweep's present choice; a
    finished or checkpointed run at another lr is stale: moved aside and trained again (experiments/lr_extension)."""
    try:
        resolved = resolve_lr(item, output_root)
    except (LrSelectionError, RunFileError) as exc:  # RunFileError: a sweep run's summary.json cannot be read
        state = run_state(item.run_dir, fresh=fresh)
        if state == "done":  # nothing to compare with: kept as it is
            return item, "done", outcome_from_summary(item, read_summary(item.run_dir), item.run_dir, reused=True)
        if state == "broken":
            return item, state, broken_outcome(item)
        return item, "", Outcome(item, "skipped", note=str(exc))
    state = run_state(resolved.run_dir, fresh=fresh)
    if state == "broken":  # left as it is, named (broken_outcome)
        return resolved, state, broken_outcome(resolved)
    old = stale_lr(resolved) if item.lr_from and state in ("done", "resume") else None
    if old is not None:
        resolved.notice = stale_notice(resolved, old, supersede(resolved.run_dir, old))
        state = "new"
    if state == "done":
        return resolved, state, outcome_from_summary(resolved, read_summary(resolved.run_dir), resolved.run_dir,
                                                     reused=True)
    return resolved, state, None


# --- runs an evaluator trains -------------------------------------------------------------------------------------
def hand_to_evaluator(item: PlannedRun) -> Outcome:
    """Write the run's config.yaml (what the evaluator trains from) and pass the run on; results it already holds
    stay (the evaluator skips tasks it has done with the same settings)."""
    from experiments.config import config_to_dict
    from experiments.results import atomic_write_yaml

    run_dir = RunDir(item.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(run_dir.config, config_to_dict(item.cfg))
    return Outcome(item, "ok", None, run_dir.path, note="trained and scored per task by the superglue evaluator")


DEFERRED_NOTE = "waits for the evaluator of its sweep"


def is_deferred(outcome: Outcome) -> bool:
    """A run passed over until the evaluator of its sweep ran (hand_over); run_all hands it over afterwards."""
    return outcome.status == "not started" and outcome.note.startswith(DEFERRED_NOTE)


def hand_over(item: PlannedRun, planned: list[PlannedRun], output_root: Path) -> Outcome:
    """hand_to_evaluator with the lr its sweep chose (lr_from). When runs of the sweep for this method are in the
    same plan, their scores come from an evaluator that runs after every run of the plan was handed on: the run is
    deferred (is_deferred) instead of choosing from what an earlier session left."""
    if item.lr_from:
        if any(p.group == item.lr_from and p.method == item.method for p in planned):
            return Outcome(item, "not started", note=f"{DEFERRED_NOTE} ({item.lr_from}): its lr comes from the "
                                                     "scores that evaluator writes")
        try:
            item = resolve_lr(item, output_root)
        except (LrSelectionError, RunFileError) as exc:
            return Outcome(item, "skipped", note=str(exc))
        old = stale_lr(item)  # results of another lr: the evaluator would refuse them (other settings)
        if old is not None:
            item.notice = stale_notice(item, old, supersede(item.run_dir, old))
    return hand_to_evaluator(item)


# --- in-process execution (one run at a time) -------------------------------------------------------------------
def prepared_config(item: PlannedRun, state: str):
    cfg = copy.deepcopy(item.cfg)
    if state == "resume":
        cfg.train.resume_from = str(item.run_dir)
    elif state == "redo":
        cfg.output.overwrite = True
    return cfg


def run_in_process(item: PlannedRun, state: str, *, progress: bool) -> Outcome:
    from experiments.run import run_experiment

    try:
        summary, run_dir = run_experiment(prepared_config(item, state), progress=progress, on_exists="refuse")
    except Exception as exc:  # a broken run directory or config write: record it, go on with the next method
        remedy = f"; delete {item.run_dir} (or rerun with --fresh) to train it from the start" * (state == "resume")
        return Outcome(item, "error", None, item.run_dir, note=f"{type(exc).__name__}: {exc}{remedy}")
    return outcome_from_summary(item, summary, run_dir)


# --- child processes ----------------------------------------------------------------------------------------------
def child_command(item: PlannedRun, state: str) -> list[str]:
    if item.config is None:
        raise ValueError(f"run {item.group}/{item.method} has no config name: it cannot run in a child process")
    flags = ["--no-progress", "--refuse-existing"]
    overrides = list(item.overrides)
    if state == "resume":
        overrides.append(f"train.resume_from={item.run_dir}")
    elif state == "redo":
        flags = ["--no-progress", "--overwrite"]
    return [sys.executable, "-m", "experiments.run", "--config", item.config, *flags, *overrides]


def child_env(gpu: str | None, jobs: int, devices: int = 1, *, exclusive: bool = False) -> dict:
    """The environment of one of `jobs` child processes spread over `devices` GPUs, pinned to `gpu` (None: the
    parent's devices). Also used by evaluators that train in child processes (eval.superglue)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    # recorded in summary.json (environment.shared_device_runs): step times of runs that shared a device are not
    # measurements, and the tables and figures leave them out; an exclusive run is alone on its device
    env["BADAM_SHARED_DEVICE_RUNS"] = "1" if exclusive else str(-(-jobs // max(1, devices)))
    # several children on one host: share the cores instead of each starting one thread per core
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    return env


@dataclass
class _Child:
    item: PlannedRun
    process: subprocess.Popen
    log: Path
    slot: int


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-300:]


def _stop(child: _Child, grace_s: float = 120.0) -> None:
    """SIGTERM: the run finishes its step, writes a checkpoint and exits (status interrupted); SIGKILL if it does not
    within grace_s."""
    child.process.send_signal(signal.SIGTERM)
    try:
        child.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait()


def _slot_device(slot: int, gpus: list[str]) -> str | None:
    """The GPU a job slot is pinned to (round robin); None: every slot sees all devices (one shared pool)."""
    return gpus[slot % len(gpus)] if gpus else None


def next_launch(planned: list[PlannedRun], pending: list[int], running: dict[int, _Child], free_slots: list[int],
                gpus: list[str]) -> tuple[int, int] | None:
    """(index of the run to start next, its slot), or None when nothing can start now. Runs waiting for their sweep
    (waits_for) wait; a run that is not exclusive takes a free slot whose device holds no exclusive run; an exclusive
    run takes a free slot whose device runs nothing, and only when no other ready run could start."""
    active = [c.item for c in running.values()]
    busy = {_slot_device(c.slot, gpus) for c in running.values()}
    held = {_slot_device(c.slot, gpus) for c in running.values() if c.item.exclusive}
    ready = [i for i in pending if not waits_for(planned[i], [planned[j] for j in pending if j != i], active)]
    for exclusive, blocked in ((False, held), (True, busy)):
        candidates = [i for i in ready if planned[i].exclusive == exclusive]
        slot = next((s for s in free_slots if _slot_device(s, gpus) not in blocked), None)
        if candidates and slot is not None:
            return candidates[0], slot
        if candidates and not exclusive:
            return None  # the others go first: an exclusive run never takes a device a ready run is waiting for
    return None


def run_parallel(planned: list[PlannedRun], *, output_root: Path, options: ParallelOptions, fresh: bool = False,
                 on_outcome=None) -> list[Outcome]:
    """Run every planned run (skipped, finished and waiting ones included) with `options.jobs` children at once;
    returns the outcomes in planned order, then those of the runs added by extend_at_edge."""
    started = time.monotonic()
    log_dir = options.log_dir or output_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    planned = with_recorded_extensions(planned, output_root)
    outcomes: dict[int, Outcome] = {}
    pending: list[int] = []
    for index, item in enumerate(planned):
        if item.cfg is None:
            outcomes[index] = Outcome(item, "skipped", note=item.skip_reason or "")
        elif trained_by_evaluator(item):
            outcomes[index] = hand_over(item, planned, output_root)
        elif item.lr_from or run_state(item.run_dir, fresh=fresh) != "done":
            pending.append(index)  # a finished run with lr_from is reused once its sweep settled, if not stale
        else:
            outcomes[index] = outcome_from_summary(item, read_summary(item.run_dir), item.run_dir, reused=True)
    running: dict[int, _Child] = {}
    prepared: dict[int, tuple[PlannedRun, str]] = {}   # runs with lr_from whose lr is resolved (settle)
    free_slots = list(range(max(1, options.jobs)))

    def finish(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    def extend() -> None:  # sweep methods whose runs all ended, choice at the edge of the grid: one more lr
        busy = [*(planned[j] for j in pending), *(c.item for c in running.values())]
        for item in new_extensions(planned, output_root, busy=busy, settled=sweep_finished):
            planned.append(item)
            pending.append(len(planned) - 1)

    extend()
    while pending or running:
        elapsed = time.monotonic() - started
        ended = [index for index, child in running.items() if child.process.poll() is not None]
        for index in ended:
            child = running.pop(index)
            free_slots.append(child.slot)
            outcome = outcome_from_summary(child.item, read_summary(child.item.run_dir), child.item.run_dir)
            if outcome.summary is None:
                outcome.note = f"{outcome.note}; exit code {child.process.returncode}; log {child.log}: " \
                               f"{_tail(child.log)}"
            finish(index, outcome)
        if ended:
            extend()
        if options.kill_after_s is not None and elapsed >= options.kill_after_s:
            for child in running.values():   # all at once: each needs a few seconds for its checkpoint
                child.process.send_signal(signal.SIGTERM)
            for index, child in list(running.items()):
                _stop(child)
                del running[index]
                summary = read_summary(child.item.run_dir)
                if is_final(summary):  # it finished on its own just before the deadline
                    finish(index, outcome_from_summary(child.item, summary, child.item.run_dir))
                    continue
                resumable = RunDir(child.item.run_dir).has_checkpoint()
                finish(index, Outcome(child.item, "interrupted", summary, child.item.run_dir,
                                      note=f"stopped at the deadline ({options.kill_after_s:.0f} s); rerun to "
                                           + ("resume from its checkpoint" if resumable else "start it again")))
            for index in pending:
                finish(index, Outcome(planned[index], "not started", note="deadline reached"))
            pending = []
            break
        launch_open = options.launch_deadline_s is None or elapsed < options.launch_deadline_s
        if not launch_open and not running:
            for index in pending:
                finish(index, Outcome(planned[index], "not started", note="launch deadline reached"))
            pending = []
            break
        active = [c.item for c in running.values()]
        for index in [i for i in pending if planned[i].lr_from and i not in prepared]:
            if not waits_for(planned[index], [planned[j] for j in pending if j != index], active):
                item, state, outcome = settle(planned[index], output_root, fresh)  # needs no slot
                if outcome is not None:
                    pending.remove(index)
                    finish(index, outcome)
                else:
                    prepared[index] = (item, state)
        while launch_open and free_slots:
            choice = next_launch(planned, pending, running, free_slots, options.gpus)
            if choice is None:
                break
            ready, slot = choice
            pending.remove(ready)
            item, state, outcome = (*prepared.pop(ready), None) if ready in prepared else \
                settle(planned[ready], output_root, fresh)
            if outcome is not None:
                finish(ready, outcome)
                continue
            free_slots.remove(slot)
            gpu = _slot_device(slot, options.gpus)
            log = log_dir / f"{item.group}.{item.cfg.run_name}.log"
            env = child_env(gpu, options.jobs, len(options.gpus), exclusive=item.exclusive)
            with open(log, "ab") as handle:
                process = subprocess.Popen(child_command(item, state), cwd=REPO_ROOT, env=env,
                                           stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            running[ready] = _Child(item, process, log, slot)
        if pending or running:
            time.sleep(0.5)
    return [outcomes[i] for i in range(len(planned))]


def run_sequential(planned: list[PlannedRun], *, output_root: Path, fresh: bool = False, progress: bool = True,
                   on_outcome=None) -> list[Outcome]:
    """One run at a time in this process (the CPU default): same skip / resume / lr_from / extension rules as
    run_parallel; a sweep method's extension runs follow its last run."""
    queue = with_recorded_extensions(planned, output_root)
    outcomes: list[Outcome] = []
    while len(outcomes) < len(queue):
        item = queue[len(outcomes)]
        if item.cfg is None:
            outcome = Outcome(item, "skipped", note=item.skip_reason or "")
        elif trained_by_evaluator(item):
            outcome = hand_over(item, queue, output_root)
        else:
            resolved, state, outcome = settle(item, output_root, fresh)
            if outcome is None:
                outcome = run_in_process(resolved, state, progress=progress)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if item.extend_at_edge:
            rest = queue[len(outcomes):]
            queue[len(outcomes):] = [*new_extensions(queue, output_root, busy=rest, settled=sweep_finished), *rest]
    return outcomes


def exit_code_of(main) -> int:
    """main(), with Ctrl-C ending the suite in one line instead of a traceback: finished runs are kept and skipped by
    the same command, the stopped run is redone (or resumed from its checkpoint) then."""
    ctrl_c_raises()  # the import-time handler of experiments.process_env gives way to KeyboardInterrupt
    try:
        return main()
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C: finished runs are kept; rerun the same command to continue", file=sys.stderr)
        return 130  # the shell's code for a process ended by SIGINT
