"""The suite's main job (./run_all.sh): train every method of a profile on the same data, run the evaluators, build the
tables, figures and report.md, print a summary table and the total wall time.

A profile (experiments/configs/profiles/<name>.yaml) lists run groups; each names a config, the methods to run on it (a
list, or `all`: every registered method; method.name is an override, so one config serves every method), overrides for
all of them and per method, and the results group the runs go to (<output_dir>/<group>/<config>-<method>/, the layout
`python -m plots` reads). What a method cannot do comes from its class (baselines/base.py), not from the profile: a
CUDA-only method is skipped on a CPU with its declared reason, a fused-update method gets one batch of B x G instead of
G micro-batches of B, a method that cannot clip runs without clipping; the plan says so. A profile may still list `skip`
with a reason. A method that turns out unsupported at run time (MethodUnsupportedError) is reported as skipped. An
out-of-memory or failed run is recorded and the suite goes on.

A run group may also list `seeds` (one run per seed, named <stem>-<method>-s<seed>; `first_seed_overrides` apply to
the first seed only, e.g. saving the model for the evaluators), `lrs` ({method: [lr, ...]}: one run per lr, named
<stem>-<method>-lr<lr>, a learning-rate sweep), `lr_from` (an earlier group: each method's lr is the one of its sweep
run with the lowest final eval loss, of a SuperGLUE sweep the highest mean validation score, recorded in
<group>/lr_selection.json; a SuperGLUE group whose sweep runs in the same invocation is handed to its evaluator after
the sweep's evaluator ran; a finished run at an lr the sweep no longer chooses is moved to <group>/superseded/ and
trained again), `extend_at_edge: N` beside `lrs` (up to N more lrs per method beyond the edge of the grid while the
choice lies there, experiments/lr_extension.py) and `exclusive: true` (with --jobs, each run alone on its GPU, after the others: timing
runs; shared_device_runs 1). experiments/suite.py and experiments/lr_selection.py have the details.

Evaluators (`evaluators:` of a profile) run as child processes, `python -m eval <name> <run dirs> --options JSON`: each
evaluator package's evaluate_runs(run_dirs, **options), so this module imports nothing above experiments/. A group
whose config is SuperGLUE is trained and scored per task by the superglue evaluator. The tables, figures and
report.md come from `python -m plots.report <output_dir>`, also a child process.

A rerun with the same output directory skips runs that already ended with a final status (a note names one trained with
other settings than this call's), resumes runs that left a checkpoint and redoes failed ones (`--fresh` redoes
everything). `--jobs N` trains N runs at once as child processes, spread over the GPUs (`--gpus`); `--launch-deadline` /
`--kill-after` fit a suite into a time slot, and what did not finish continues on the next invocation. Exit code: 0 when
every run ended with a result (ok, oom, diverged, unsupported), 1 when a run ended in error, 3 when runs were left
unfinished by a deadline, 2 for a bad request.

    python -m experiments.run_all                      # the "cpu" profile: <= 10 minutes on 2 CPU cores
    python -m experiments.run_all --profile cpu-smoke  # every registered method, 3 steps, tiny model
    python -m experiments.run_all --profile gpu-small  # SmolLM2 on one GPU, longer, every method
    python -m experiments.run_all --profile paper      # the paper's experiments (GPU, hours to days)
"""
from __future__ import annotations

from experiments.process_env import apply_defaults, quiet_ctrl_c_while_starting

apply_defaults()  # before torch is imported: OpenMP waiting policy, CUDA allocator (see experiments/process_env.py)
if __name__ == "__main__":
    quiet_ctrl_c_while_starting()  # one line, not an import traceback, for a Ctrl-C while torch loads

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from baselines.registry import method_names
from experiments.config import PROFILE_DIR, ConfigError, load_config, parse_yaml_file
from experiments.lr_extension import check_records, dry_run_lines, edge_notes, extend_evaluated_sweeps
from experiments.lr_selection import LrSelectionError
from experiments.paths import REPO_ROOT
from experiments.run_plan import added_method_lines, plan_runs
from experiments.outcome_table import format_table
from experiments.suite import (Outcome, ParallelOptions, PlannedRun, exit_code_of, hand_to_evaluator, is_deferred,
                               run_parallel, run_sequential, sweep_finished)

DEFAULT_PROFILE = "cpu"
PROFILE_KEYS = ("description", "output_dir", "time_budget_s", "runs", "skip", "evaluators", "plots")
RUN_KEYS = ("config", "group", "name", "methods", "overrides", "method_overrides", "seeds", "first_seed_overrides",
            "lrs", "lr_from", "extend_at_edge", "exclusive")
EVALUATOR_KEYS = ("name", "groups", "methods", "options")


# --- profiles ---------------------------------------------------------------------------------------------------
def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict:
    """A profile by name (experiments/configs/profiles/<name>.yaml) or by the path of a YAML file of your own."""
    path = PROFILE_DIR / f"{name}.yaml"
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        path = Path(name)
    elif not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; valid profiles: {', '.join(profile_names())} "
                          "(or the path of a profile .yaml file)")
    profile = parse_yaml_file(path) or {}  # a syntax error: one line with the line and column
    _check_keys(profile, PROFILE_KEYS, f"profile {name}")
    if not profile.get("runs"):
        raise ConfigError(f"profile {name} lists no runs")
    if not isinstance(profile["runs"], list):
        raise ConfigError(f"profile {name}: runs must be a list of run groups, got {profile['runs']!r:.60}")
    valid = set(method_names())
    for method in profile.get("skip") or {}:
        if method not in valid:
            raise ConfigError(f"profile {name}: skip names unknown method {method!r}; valid methods: "
                              f"{', '.join(sorted(valid))}")
    for entry in profile["runs"]:
        group = entry.get("group", "?") if isinstance(entry, dict) else "?"
        _check_keys(entry, RUN_KEYS, f"profile {name}, run group {group}")
        for key in ("config", "group", "methods"):
            if not entry.get(key):
                raise ConfigError(f"profile {name}: every run group needs {key!r} (got {entry})")
        if entry["methods"] == "all":  # every registered method, a new one included (the cpu-smoke profile)
            entry["methods"] = sorted(valid)
        if not isinstance(entry["methods"], list):  # a bare string would be read letter by letter
            raise ConfigError(f"profile {name}, group {entry['group']}: methods must be a list, e.g. "
                              f"[{entry['methods']}], or all (every registered method), got {entry['methods']!r}")
        unknown = [m for m in [*entry["methods"], *(entry.get("method_overrides") or {})] if m not in valid]
        if unknown:
            raise ConfigError(f"profile {name}, group {entry['group']}: unknown method(s) {', '.join(unknown)}; "
                              f"valid methods: {', '.join(sorted(valid))}")
    seen_groups: list[str] = []
    for entry in profile["runs"]:
        _check_group_extras(entry, valid, seen_groups, f"profile {name}, group {entry['group']}")
        seen_groups.append(entry["group"])
    evaluators = profile.get("evaluators") or []
    for evaluator in evaluators:
        _check_keys(evaluator, EVALUATOR_KEYS, f"profile {name}, evaluator")
        if evaluator.get("name") not in evaluator_names():
            raise ConfigError(f"profile {name}: unknown evaluator {evaluator.get('name')!r}; valid evaluators: "
                              f"{', '.join(evaluator_names())}")
    for entry in profile["runs"]:
        _check_evaluator_trained(entry, evaluators, f"profile {name}, group {entry['group']}")
    profile["name"] = path.stem if path.parent != PROFILE_DIR else name
    return profile


def _check_evaluator_trained(entry: dict, evaluators: list[dict], where: str) -> None:
    """A group whose config is trained by an evaluator (data.format superglue) must list that evaluator."""
    if load_config(entry["config"]).data.format != "superglue":
        return
    if not any(e.get("name") == "superglue" and (not e.get("groups") or entry["group"] in e["groups"])
               for e in evaluators):
        raise ConfigError(f"{where}: its config {entry['config']} is SuperGLUE, which the superglue evaluator trains "
                          "and scores per task; add an evaluator {name: superglue, groups: [" + entry["group"] + "]}")


def _check_group_extras(entry: dict, valid_methods: set, earlier_groups: list[str], where: str) -> None:
    if not isinstance(entry.get("exclusive", False), bool):
        raise ConfigError(f"{where}: exclusive must be true or false, got {entry['exclusive']!r}")
    seeds = entry.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
                              or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{where}: seeds must be a list of distinct integers, got {seeds!r}")
    lrs = entry.get("lrs")
    if lrs is not None:
        if not isinstance(lrs, dict):
            raise ConfigError(f"{where}: lrs must map method names to lists of learning rates, got {lrs!r}")
        for method, values in lrs.items():
            if method not in valid_methods:
                raise ConfigError(f"{where}: lrs names unknown method {method!r}; valid methods: "
                                  f"{', '.join(sorted(valid_methods))}")
            try:
                ok = isinstance(values, list) and values and all(float(v) > 0 for v in values)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"{where}: lrs.{method} must be a list of positive numbers, got {values!r}")
    extend = entry.get("extend_at_edge", 0)
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0 or (extend and not lrs):
        raise ConfigError(f"{where}: extend_at_edge takes an integer >= 0 (extra lrs per method beyond the edge of "
                          f"its grid) on a group with lrs, got {extend!r}" + ("" if lrs else " on a group without lrs"))
    short = [m for m, values in (lrs or {}).items() if len({float(v) for v in values}) < 2]
    if extend and short:  # the step past the edge is the one between the two outermost lrs
        raise ConfigError(f"{where}: extend_at_edge needs at least two lrs per method (the step beyond the edge is "
                          f"the one between the two outermost); lrs.{short[0]} has "
                          f"[{', '.join(f'{float(v):g}' for v in lrs[short[0]])}]")
    source = entry.get("lr_from")
    if source is not None and source not in earlier_groups:
        raise ConfigError(f"{where}: lr_from names {source!r}, which is not an earlier run group of the profile "
                          f"(earlier groups: {', '.join(earlier_groups) or 'none'})")
    if source is not None and lrs:
        raise ConfigError(f"{where}: a group takes its lr either from lrs or from lr_from, not both")


def _check_keys(mapping, valid, where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {mapping!r}")
    unknown = sorted(set(mapping) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")


# --- running ------------------------------------------------------------------------------------------------------
def run_planned(planned: list[PlannedRun], *, progress: bool = True, output_root: Path | None = None,
                fresh: bool = False, parallel: ParallelOptions | None = None) -> list[Outcome]:
    """Run the plan (skipping finished runs, resuming checkpointed ones); in this process one at a time, or as
    child processes when `parallel` asks for several jobs or a deadline."""
    root = output_root or _common_root(planned)
    if parallel is not None and (parallel.jobs > 1 or parallel.launch_deadline_s is not None
                                 or parallel.kill_after_s is not None):
        report = (lambda o: tqdm.write(f"  {o.planned.group}/{o.run_dir.name if o.run_dir else o.planned.method}: "
                                       f"{o.status}")) if progress else None
        return run_parallel(planned, output_root=root, options=parallel, fresh=fresh, on_outcome=report)
    return run_sequential(planned, output_root=root, fresh=fresh, progress=progress)


def _common_root(planned: list[PlannedRun]) -> Path:
    dirs = [Path(p.cfg.output.dir).parent for p in planned if p.cfg is not None]
    return dirs[0] if dirs else Path(".")


def evaluator_names() -> list[str]:
    """The evaluators `python -m eval --list` offers (asked in a child process: the harness imports nothing above it)."""
    global _EVALUATORS
    if _EVALUATORS is None:
        done = subprocess.run([sys.executable, "-m", "eval", "--list"], cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"python -m eval --list failed: {done.stderr.strip()[-300:]}")
        _EVALUATORS = done.stdout.split()
    return _EVALUATORS


_EVALUATORS: list[str] | None = None


def _run_child(command: list[str]) -> tuple[int, str]:
    """Run a child process of the suite (an evaluator, the tables); its output goes to the console. Returns
    (exit code, its note from the note file)."""
    with tempfile.TemporaryDirectory(prefix="badam-note-") as folder:
        note_file = Path(folder) / "note.txt"
        code = subprocess.call([*command, "--note-file", str(note_file)], cwd=REPO_ROOT)
        note = note_file.read_text(encoding="utf-8") if note_file.is_file() else ""
    return code, note


def run_evaluators(profile: dict, outcomes: list[Outcome]) -> list[str]:
    """For each evaluator the profile lists: `python -m eval <name> <run dirs> --options JSON`, i.e. the evaluator's
    evaluate_runs(run_dirs, **options) in a child process, over the runs of its groups and methods that ended ok.
    Evaluators read <run_dir>/model (output.save_model) or <run_dir>/config.yaml and write <run_dir>/eval/.
    Returns one note per evaluator; a failed evaluator never hides the training results."""
    notes = []
    for spec in profile.get("evaluators") or []:
        name = spec["name"]
        groups, methods = spec.get("groups"), spec.get("methods")
        run_dirs = [o.run_dir for o in outcomes if o.status == "ok" and o.run_dir is not None
                    and (not groups or o.planned.group in groups) and (not methods or o.planned.method in methods)]
        if not run_dirs:
            notes.append(f"evaluator {name}: no successful runs to evaluate")
            continue
        started = time.perf_counter()
        command = [sys.executable, "-m", "eval", name, *map(str, run_dirs),
                   "--options", json.dumps(spec.get("options") or {})]
        code, extra = _run_child(command)
        if code == 0:
            notes.append(f"evaluator {name}: {len(run_dirs)} run(s) in {time.perf_counter() - started:.0f} s, "
                         f"results in <run_dir>/eval/{extra}")
        else:
            notes.append(f"evaluator {name} failed (exit code {code}; its error is printed above)")
    return notes


def run_deferred(profile: dict, outcomes: list[Outcome], *, output_root: Path,
                 fresh: bool = False) -> tuple[list[Outcome], list[str]]:
    """Hand over the runs that waited for their sweep's evaluator (experiments.suite.hand_over), now that it ran,
    and run the evaluators of their groups. Returns the outcomes with theirs replaced, and the evaluators' notes."""
    waiting = [i for i, o in enumerate(outcomes) if is_deferred(o)]
    later = run_planned([outcomes[i].planned for i in waiting], progress=False, output_root=output_root,
                        fresh=fresh)
    merged = list(outcomes)
    for index, outcome in zip(waiting, later):
        merged[index] = outcome
    groups = {o.planned.group for o in later}
    evaluators = [e for e in profile.get("evaluators") or [] if not e.get("groups") or groups & set(e["groups"])]
    return merged, run_evaluators({**profile, "evaluators": evaluators}, later)


def run_report(output_root: Path, profile: dict) -> str:
    """The tables, figures and report.md of the results under output_root (`python -m plots.report`, a child
    process: plots/ is above the harness)."""
    # the title: the description's first sentence (its first line may break mid-sentence)
    description = " ".join((profile.get("description") or "").split())
    first_sentence = re.split(r"(?<=[.;])\s", description, maxsplit=1)[0].rstrip(".;")
    command = [sys.executable, "-m", "plots.report", str(output_root), "--title",
               f"profile {profile['name']}: {first_sentence}"]
    code, note = _run_child(command)
    return note if code == 0 else f"tables, figures and report failed (exit code {code}; the error is above)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"profile under experiments/configs/profiles/ (default {DEFAULT_PROFILE})")
    parser.add_argument("--methods", help="comma-separated methods: a subset of the profile's, or any registered "
                                          "method, which then runs in every group with the group's settings")
    parser.add_argument("--groups", help="comma-separated subset of the profile's run groups (names or patterns: *_x)")
    parser.add_argument("--seeds", help="comma-separated seeds: of groups that list seeds, run only these")
    parser.add_argument("--set", action="append", default=[], metavar="section.key=value",
                        help="override applied to every run (repeatable), e.g. --set train.max_steps=2")
    parser.add_argument("--output-dir", type=Path, help="results root (default: the profile's output_dir)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluators")
    parser.add_argument("--no-plots", action="store_true", help="skip the tables, figures and report.md")
    parser.add_argument("--dry-run", action="store_true", help="resolve and print the plan, train nothing")
    parser.add_argument("--list-profiles", action="store_true", help="print the profiles and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--fresh", action="store_true",
                        help="redo every run (default: skip runs that finished, resume checkpointed ones)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, as child processes (default 1: in this process)")
    parser.add_argument("--gpus", help="comma-separated CUDA device ids the jobs are spread over (default: all)")
    parser.add_argument("--launch-deadline", type=float, metavar="SECONDS",
                        help="start no run after this many seconds (the rest continues on the next invocation)")
    parser.add_argument("--kill-after", type=float, metavar="SECONDS",
                        help="stop runs still going after this many seconds (resumable if they checkpointed)")
    return parser


def _parallel_options(args, output_root: Path) -> ParallelOptions:
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    for flag, value in (("--launch-deadline", args.launch_deadline), ("--kill-after", args.kill_after)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be a positive number of seconds, got {value}")
    if args.gpus:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if not all(g.isdigit() for g in gpus):
            raise ConfigError(f"--gpus takes CUDA device ids such as 0,1; got {args.gpus!r}")
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    return ParallelOptions(jobs=args.jobs, gpus=gpus, launch_deadline_s=args.launch_deadline,
                           kill_after_s=args.kill_after, log_dir=output_root / "logs")


def _run_label(outcome: Outcome) -> str:
    return f"{outcome.planned.group}/{outcome.run_dir.name if outcome.run_dir else outcome.planned.method}"


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.list_profiles:
        for name in profile_names():
            print(f"{name:<10} {(load_profile(name).get('description') or '').strip().splitlines()[0]}")
        return 0
    try:
        profile = load_profile(args.profile)
        output_root = (args.output_dir or REPO_ROOT / profile.get("output_dir", f"runs/{args.profile}")).resolve()
        only = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
        planned = plan_runs(profile, output_root=output_root, only_methods=only, extra_overrides=tuple(args.set),
                            only_groups=groups, only_seeds=seeds)
        check_records(planned, output_root)
        parallel = _parallel_options(args, output_root)
    except (ConfigError, LrSelectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"profile {args.profile}: {len(planned)} run(s) -> {output_root}")
    listed = {m for entry in profile["runs"] for m in entry["methods"]}
    added = sorted({m for m in only or [] if m not in listed})
    if added:
        print(f"  not in the profile, run in every group with the group's settings (once where groups share them): "
              f"{', '.join(added)}")
        print("\n".join(added_method_lines(profile, planned, added)))
    adapted = {(p.group, p.method): p.adaptations for p in planned if p.adaptations}
    for (group, method), notes in adapted.items():
        print(f"  {group}/{method}, adapted to what the method can do: {'; '.join(notes)}")
    if args.dry_run:
        print("\n".join(dry_run_lines(planned, output_root, finished=sweep_finished)))
        return 0
    outcomes = run_planned(planned, progress=not args.no_progress, output_root=output_root, fresh=args.fresh,
                           parallel=parallel)
    notes = [] if args.no_eval else run_evaluators(profile, outcomes)
    if not args.no_eval:
        outcomes, extension_notes = extend_evaluated_sweeps(
            outcomes, output_root, hand_over=hand_to_evaluator, evaluate=lambda groups, later: run_evaluators(
                {**profile, "evaluators": [e for e in profile.get("evaluators") or []
                                           if not e.get("groups") or groups & set(e["groups"])]}, later))
        notes += extension_notes
    if not args.no_eval and any(map(is_deferred, outcomes)):
        outcomes, later_notes = run_deferred(profile, outcomes, output_root=output_root, fresh=args.fresh)
        notes += later_notes
    notes += edge_notes(planned, output_root)
    if not args.no_plots:
        notes.append(run_report(output_root, profile))
    print()
    print(format_table(outcomes))
    for note in notes:
        print(f"note: {note}")
    for o in outcomes:   # the table cuts notes to its column
        if o.reused and o.note.startswith("kept, though"):
            print(f"note: {_run_label(o)}: {o.note}")
    elapsed = time.perf_counter() - started
    budget = profile.get("time_budget_s")
    over = f" (over the profile's budget of {budget} s)" if budget and elapsed > budget else ""
    print(f"total wall time: {elapsed:.1f} s{over}")
    failed = [o for o in outcomes if o.status == "error"]
    unfinished = [o for o in outcomes if o.status in ("interrupted", "not started")]
    if failed:
        print(f"failed ({len(failed)}): " + ", ".join(_run_label(o) for o in failed), file=sys.stderr)
        for o in failed:  # the table cuts notes to its column; the reason and what to do are the point here
            if o.note:
                print(f"  {_run_label(o)}: {o.note.splitlines()[0]}", file=sys.stderr)
        return 1
    if unfinished:
        print(f"unfinished ({len(unfinished)}): rerun the same command to continue", file=sys.stderr)
        return 3
    return 0


__all__ = ["load_profile", "plan_runs", "run_planned", "run_evaluators", "format_table", "main"]

if __name__ == "__main__":
    sys.exit(exit_code_of(main))
