"""Run a profile's evaluators as soon as the runs they read have finished, while the rest of the suite still trains.

run_all runs the evaluators after the last run of the profile; on a lent GPU machine whose weights cannot be carried
back, that can be too late. This waits (polling the run directories, never training anything itself) until every
planned run that the evaluators read and that keeps its weights (output.save_model) has a final summary, then hands
those runs to run_all's evaluators, exactly as run_all would at the end:

    python3 scripts/gpu/evaluate_when_done.py --profile quality-gpu --output-dir runs/quality-gpu --timeout 3600 \
        [--groups '*_gemma3_270m']

With --each (the math part of the quality profile), each run goes to its evaluators as soon as it is final, one child
process per run and evaluator (`python -m eval <name> <run_dir> --options JSON`) on the least busy GPU, at most
--per-gpu at a time on a GPU, and an evaluator with `base: true` gets the base model's run directory
(`<group>/<stem>-base`, eval/runs.py) at once, before any run has finished. So the evaluations overlap the training
of the slower methods, and a session cut short keeps every run that was evaluated (its weights are not carried back).

Exit code 0 when the evaluators ran (their notes say which runs they skipped), 1 when an --each evaluation failed, 3 on
timeout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from eval.runs import GpuPool, visible_gpus, write_base_run_dir
from experiments.lr_extension import due_extension, same_lr, trained_lr, with_recorded_extensions
from experiments.lr_selection import LrSelectionError, select_lr
from experiments.results import read_summary
from experiments.run_all import load_profile, plan_runs, run_evaluators
from experiments.suite import group_matches, is_final, outcome_from_summary


def awaited_runs(profile: dict, output_root: Path, only_groups: list[str] | None = None) -> list:
    """The planned runs some evaluator reads and that save their model (the others give an evaluator nothing), of
    the groups matching `only_groups` (names or patterns, as run_all's --groups) when given."""
    specs = profile.get("evaluators") or []
    groups = sorted({g for spec in specs for g in (spec.get("groups") or [])
                     if only_groups is None or group_matches(g, only_groups)})
    if only_groups is not None and not groups:
        return []
    planned = plan_runs(profile, output_root=output_root, only_groups=groups or None)
    wanted = []
    for item in planned:
        if item.cfg is None or not item.cfg.output.save_model:
            continue
        if any((not spec.get("groups") or item.group in spec["groups"])
               and (not spec.get("methods") or item.method in spec["methods"]) for spec in specs):
            wanted.append(item)
    return wanted


def at_chosen_lr(item, planned: list, output_root: Path) -> bool:
    """A run whose lr comes from a sweep (lr_from) is final for its evaluators only once that sweep is settled (its
    runs final at every lr it tries, its recorded extensions included and none due) and the run's directory holds
    results of the lr the sweep chooses now. A finished run restored from an earlier session may be stale: run_all
    moves it to superseded/ and trains it again when an extension moved the choice, and evaluating it first would
    score the superseded run (seen on 2026-11-26: MT-bench and rank were run on the old adam and lora runs)."""
    if not item.lr_from:
        return True
    sweep = [p for p in planned if p.group == item.lr_from and p.method == item.method]
    if not sweep or not all(is_final(read_summary(p.run_dir)) for p in sweep):
        return False
    if sweep[0].extend_at_edge > 0 and due_extension(sweep, output_root, record=False):
        return False
    try:
        chosen = select_lr(output_root, item.lr_from, item.method)["chosen_lr"]
    except LrSelectionError:
        return False
    trained = trained_lr(item.run_dir)
    return trained is not None and same_lr(trained, chosen)


def final_runs(wanted: list, profile_plan: list, output_root: Path) -> list:
    """The awaited runs that are final now (at the lr their sweep chooses, where they take it from one).
    `profile_plan`: the whole profile's plan (plan_runs, made once); the runs of the extensions its sweeps recorded
    so far are added here, on every look, since a sweep may record one while this waits."""
    planned = with_recorded_extensions(profile_plan, output_root)
    return [item for item in wanted
            if is_final(read_summary(item.run_dir)) and at_chosen_lr(item, planned, output_root)]


def _reads(spec: dict, item) -> bool:
    return (not spec.get("groups") or item.group in spec["groups"]) and \
        (not spec.get("methods") or item.method in spec["methods"])


def _command(spec: dict, run_dir: Path) -> list[str]:
    options = {k: v for k, v in (spec.get("options") or {}).items() if k not in ("base", "jobs_per_gpu")}
    return [sys.executable, "-m", "eval", spec["name"], str(run_dir), "--options", json.dumps(options)]


def evaluate_each(profile: dict, wanted: list, output_root: Path, pool: GpuPool, *, poll: float,
                  timeout: float) -> int:
    """--each: the base model's run directories at once, then every awaited run as soon as it is final."""
    specs = profile.get("evaluators") or []
    handed = {}   # the child's pool index by (evaluator, run directory)
    for spec in specs:
        if not (spec.get("options") or {}).get("base"):
            continue
        for item in (i for i in wanted if _reads(spec, i)):
            stem = item.cfg.run_name.split(f"-{item.method}")[0]
            base_dir = write_base_run_dir(output_root / item.group / f"{stem}-base", model=item.cfg.model.source,
                                          model_config={"source": item.cfg.model.source},
                                          note=f"untuned base model: {spec['name']} only")
            if (spec["name"], base_dir) not in handed:
                handed[(spec["name"], base_dir)] = pool.submit(_command(spec, base_dir))
    started, waiting = time.monotonic(), list(wanted)
    profile_plan = plan_runs(profile, output_root=output_root)
    while True:
        for item in final_runs(waiting, profile_plan, output_root):
            waiting.remove(item)
            for spec in (s for s in specs if _reads(s, item)):
                handed[(spec["name"], item.run_dir)] = pool.submit(_command(spec, item.run_dir))
            print(f"{item.group}/{item.run_dir.name} final: handed to its evaluators", flush=True)
        if pool.poll() and not waiting:
            break
        if time.monotonic() - started > timeout:
            print(f"timeout: still unfinished: {', '.join(str(i.run_dir) for i in waiting)}", file=sys.stderr)
            return 3
        time.sleep(poll)
    failed = [f"{name} {run_dir.name}" for (name, run_dir), index in handed.items() if pool.codes[index] != 0]
    print(f"{len(handed)} evaluation(s) done after {time.monotonic() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--poll", type=float, default=20.0, help="seconds between looks at the run directories")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    parser.add_argument("--groups", help="comma-separated groups (names or patterns, as run_all's --groups): wait "
                                         "only for these, e.g. the part of the profile this session trains")
    parser.add_argument("--each", action="store_true",
                        help="evaluate each run as soon as it is final, in its own child on a GPU (and the base model "
                             "at once)")
    parser.add_argument("--per-gpu", type=int, default=3, help="with --each: evaluations at a time on one GPU")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    only = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    wanted = awaited_runs(profile, args.output_dir, only)
    if not wanted:
        print(f"profile {args.profile}: no evaluator reads a run that saves its model; nothing to wait for")
        return 0
    if args.each:
        gpus = visible_gpus()
        if not gpus:
            print("error: --each evaluates on GPUs and none is visible", file=sys.stderr)
            return 2
        return evaluate_each(profile, wanted, args.output_dir, GpuPool(gpus, per_gpu=args.per_gpu), poll=args.poll,
                             timeout=args.timeout)
    started, profile_plan = time.monotonic(), plan_runs(profile, output_root=args.output_dir)
    while True:
        final = final_runs(wanted, profile_plan, args.output_dir)
        waiting = [item for item in wanted if item not in final]
        if not waiting:
            break
        if time.monotonic() - started > args.timeout:
            print(f"timeout: still unfinished: {', '.join(str(i.run_dir) for i in waiting)}", file=sys.stderr)
            return 3
        time.sleep(args.poll)
    print(f"all {len(wanted)} evaluated run(s) final after {time.monotonic() - started:.0f} s; running evaluators",
          flush=True)
    outcomes = [outcome_from_summary(item, read_summary(item.run_dir), item.run_dir) for item in wanted]
    for note in run_evaluators(profile, outcomes):
        print(note, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
