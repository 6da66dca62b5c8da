"""Time runs of a profile under the benchmark protocol: compared configurations alternate, A B C A B C ..., over
--repeats repeats in one warm process, and every ratio is reported with its band (experiments/repeats.py).

    # paper-scale time comparison on one GPU (the paper-gpu-1 profile's time group; about 3 minutes per repeat
    # on an H100): repeats land in results/paper_time_llama3_8b/<run>-rep<i>/
    python benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_time_llama3_8b --repeats 3 \
        --output-dir results --set model.tokenizer=PATH --launch-deadline 540
    # the same machinery once per run, plain names (e.g. to redo a few paper_memtime runs after a warm-up)
    python benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_memtime_llama3_8b --methods lomo,lora \
        --once --fresh --output-dir results --set model.tokenizer=PATH

What it does, per invocation:
1. Plans the groups' runs exactly as `python -m experiments.run_all` would (same configs, overrides, names).
2. Warm-up: trains the longest planned run once into a scratch folder that is deleted afterwards. The first run in a
   process meets every sequence length for the first time (cuDNN / cuBLAS plans): 433 against 223 ms per step for the
   same method on an H100. Every invocation with a run left to do warms up, so a continued session starts warm too.
3. Runs repeat 1 of every configuration in profile order, then repeat 2, ... in this process, each as
   <run name>-rep<i> in its group's folder. A repeat whose runs are all finished is skipped; a repeat left
   incomplete by an earlier invocation is run again as a whole, so that the runs paired in a ratio always come from
   one session (one machine, minutes apart). With --launch-deadline a repeat starts only if the previous repeat's
   duration still fits before the deadline; the exit code is then 3 and the same command continues.
4. Writes <group>/protocol.json and protocol.md: per configuration the median and [min, max] over repeats of
   forward / backward / update / step milliseconds and of MFU, and every configuration's paired ratio to the
   reference configuration (--reference, default the group's BAdam run) with its band ("≈ 1" when it holds 1).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a bare checkout
    sys.path.insert(0, str(REPO))

from experiments import run_all  # noqa: E402  (applies the harness's process defaults before torch loads)
from experiments.config import ConfigError, changed_settings  # noqa: E402
from experiments.repeats import (alternate, band, format_band, ratio_band, repeat_fits, repeat_name,  # noqa: E402
                                split_repeat)
from experiments.results import atomic_write_text, read_summary  # noqa: E402
from experiments.suite import PlannedRun, run_in_process, run_state  # noqa: E402

PHASES = ("forward", "backward", "update", "step")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True, help="profile name or path of a profile .yaml")
    p.add_argument("--groups", required=True, help="comma-separated run groups of the profile")
    p.add_argument("--methods", help="comma-separated subset of the methods the groups run (only their own runs)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per configuration (default 3, the minimum)")
    p.add_argument("--once", action="store_true", help="run every planned run once under its own name (no "
                                                       "-rep suffix, no ratios): a warm single pass")
    p.add_argument("--fresh", action="store_true", help="redo runs that already finished")
    p.add_argument("--reference", help="configuration (run name without -rep<i>) the ratios divide by (default: the "
                                       "group's first badam run)")
    p.add_argument("--output-dir", type=Path, help="results root (default: the profile's output_dir)")
    p.add_argument("--set", action="append", default=[], metavar="section.key=value", help="override for every run")
    p.add_argument("--launch-deadline", type=float, metavar="SECONDS",
                   help="start no repeat that would, at the previous repeat's pace, end after this many seconds")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (first-seen shapes are then timed)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the runs in the order they would run, train nothing")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.launch_deadline is not None and args.launch_deadline <= 0:
        p.error(f"--launch-deadline must be a positive number of seconds, got {args.launch_deadline}")
    return args


# --- planning -----------------------------------------------------------------------------------------------------
def renamed(item: PlannedRun, run_name: str) -> PlannedRun:
    clone = copy.deepcopy(item)
    clone.cfg.run_name = run_name
    clone.overrides = tuple(o for o in item.overrides if not o.startswith("run_name=")) + (f"run_name={run_name}",)
    return clone


def plan(args) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(the configurations to compare, the skipped ones) in profile order."""
    profile = run_all.load_profile(args.profile)
    output_root = (args.output_dir or REPO / profile.get("output_dir", f"runs/{profile['name']}")).resolve()
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    planned = run_all.plan_runs(profile, output_root=output_root, extra_overrides=tuple(args.set),
                                only_groups=groups)
    if args.methods:  # the profile's own runs of these methods (run_all --methods would add them to every entry)
        methods = {m.strip() for m in args.methods.split(",") if m.strip()}
        unknown = methods - {p.method for p in planned}
        if unknown:
            raise ConfigError(f"--methods names {', '.join(sorted(unknown))}, which the groups do not run; they run "
                              f"{', '.join(sorted({p.method for p in planned}))}")
        planned = [p for p in planned if p.method in methods]
    return [p for p in planned if p.cfg is not None], [p for p in planned if p.cfg is None]


def schedule(configs: list[PlannedRun], repeats: int, once: bool) -> list[list[PlannedRun]]:
    """The runs of each repeat, in the protocol's alternating order."""
    if once:
        return [list(configs)]
    by_repeat: dict[int, list[PlannedRun]] = {}
    for index, item in alternate(configs, repeats):
        by_repeat.setdefault(index, []).append(renamed(item, repeat_name(item.cfg.run_name, index)))
    return [by_repeat[i] for i in sorted(by_repeat)]


# --- running ------------------------------------------------------------------------------------------------------
def warm_up(configs: list[PlannedRun], progress: bool) -> dict:
    """Train the longest planned run once into a scratch folder (deleted), so that timed runs start warm."""
    longest = max(configs, key=lambda p: p.cfg.train.max_steps or 0)
    scratch = Path(tempfile.mkdtemp(prefix="time_protocol_warmup_"))
    item = renamed(longest, "warmup")
    item.cfg.output.dir = str(scratch)
    started = time.perf_counter()
    try:
        outcome = run_in_process(item, "new", progress=progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"run": longest.cfg.run_name, "group": longest.group, "status": outcome.status,
            "seconds": round(time.perf_counter() - started, 1)}


def run_repeat(runs: list[PlannedRun], *, fresh: bool, progress: bool, log: list[dict], whole: bool = True) -> bool:
    """Run one repeat; False when every run of it had already finished (nothing was run). whole: an incomplete
    repeat is run again as a whole (its pairs must come from one session); else finished runs are kept."""
    states = {id(item): run_state(item.run_dir, fresh=fresh) for item in runs}
    if all(state == "done" for state in states.values()):
        return False
    for item in runs:
        if not whole and states[id(item)] == "done":
            continue
        state = "redo" if item.run_dir.exists() else "new"
        started = time.perf_counter()
        outcome = run_in_process(item, state, progress=progress)
        log.append({"group": item.group, "run": item.cfg.run_name, "status": outcome.status,
                    "seconds": round(time.perf_counter() - started, 1), "note": outcome.note[:300]})
        print(f"[protocol] {item.group}/{item.cfg.run_name}: {outcome.status} "
              f"({log[-1]['seconds']:.0f} s)", flush=True)
    return True


# --- reporting ----------------------------------------------------------------------------------------------------
def _run_values(summary: dict | None) -> dict | None:
    if not summary or summary.get("status") != "ok":
        return None
    timing = summary.get("timing_ms") or {}
    compute = summary.get("compute") or {}
    environment = summary.get("environment") or {}
    return {**{phase: timing.get(phase) for phase in PHASES}, "mfu": compute.get("mfu"),
            "model_tflops_per_s": compute.get("model_tflops_per_s"), "tokens_per_s": summary.get("tokens_per_s"),
            "device_name": environment.get("device_name"), "date": environment.get("date")}


def collect(group_dir: Path) -> dict[str, dict[int, dict]]:
    """{configuration: {repeat: values}} of the finished repeated runs in a group folder."""
    out: dict[str, dict[int, dict]] = {}
    for summary_path in sorted(group_dir.glob("*/summary.json")):
        base, index = split_repeat(summary_path.parent.name)
        values = _run_values(read_summary(summary_path.parent))
        if index is not None and values is not None:
            out.setdefault(base, {})[index] = values
    return out


def report(group: str, group_dir: Path, order: list[str], reference: str | None, methods: dict[str, str]) -> dict:
    data = collect(group_dir)
    if reference is None:
        reference = next((name for name in order if methods.get(name) == "badam"), order[0] if order else None)
    configs = {}
    for name in order:
        runs = data.get(name, {})
        entry = {"method": methods.get(name), "repeats": sorted(runs),
                 "devices": sorted({str(v["device_name"]) for v in runs.values()}),
                 "values": {key: _as_dict(band(v[key] for v in runs.values()))
                            for key in (*PHASES, "mfu", "model_tflops_per_s", "tokens_per_s")}}
        if reference in data and name != reference:
            entry["ratio_to_reference"] = {phase: _as_dict(ratio_band(
                {i: v[phase] for i, v in runs.items()}, {i: v[phase] for i, v in data[reference].items()}))
                for phase in PHASES}
        configs[name] = entry
    return {"group": group, "reference": reference, "configurations": configs,
            "protocol": "alternating repeats in one process after a warm-up; ratios paired per repeat; band = "
                        "[min, max] over repeats (experiments/repeats.py)"}


def _as_dict(b):
    return None if b is None else b.as_dict()


def _cell(entry: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if not entry:
        return "—"
    if entry["n"] == 1:
        return f"{entry['median'] * scale:.{digits}f}"
    low, high = entry["low"] * scale, entry["high"] * scale
    return f"{entry['median'] * scale:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _ratio_cell(entry: dict | None) -> str:
    from experiments.repeats import Band

    return format_band(None if not entry else Band(entry["median"], entry["low"], entry["high"], entry["n"]))


def markdown(doc: dict, meta: dict) -> str:
    ref = doc["reference"]
    lines = [f"# Time protocol: {doc['group']}", "", f"- date: {meta['date']}", f"- command: `{meta['command']}`",
             f"- {doc['protocol']}", f"- reference for the ratios: `{ref}`", "",
             "| configuration | method | repeats | device | step ms | forward ms | backward ms | update ms | MFU % | "
             f"step / {ref} | backward / {ref} |", "|" + "---|" * 11]
    for name, entry in doc["configurations"].items():
        values, ratios = entry["values"], entry.get("ratio_to_reference") or {}
        devices = ", ".join(entry["devices"]) or "—"
        lines.append(f"| {name} | {entry['method']} | {len(entry['repeats'])} | {devices} | "
                     f"{_cell(values['step'])} | {_cell(values['forward'])} | {_cell(values['backward'])} | "
                     f"{_cell(values['update'])} | {_cell(values['mfu'], 100.0, 2)} | "
                     f"{'1' if name == ref else _ratio_cell(ratios.get('step'))} | "
                     f"{'1' if name == ref else _ratio_cell(ratios.get('backward'))} |")
    lines += ["", "Cells: median (min-max) over repeats; ratios are paired per repeat (same session, minutes apart) "
              "and read '≈ 1' when their band holds 1. MFU = model FLOPs / step time / the device's dense bf16 peak "
              "(summary.json compute block, experiments/flops.py)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        configs, skipped = plan(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for item in skipped:
        print(f"[protocol] {item.group}/{item.method}: skipped ({item.skip_reason})", flush=True)
    if not configs:
        print("error: nothing to run (check --groups and --methods)", file=sys.stderr)
        return 2
    repeats = schedule(configs, args.repeats, args.once)
    if args.dry_run:
        for index, runs in enumerate(repeats, start=1):
            for item in runs:
                state = run_state(item.run_dir, fresh=args.fresh)
                print(f"  repeat {index}: {item.group}/{item.cfg.run_name} ({state}, {item.cfg.train.max_steps} steps)")
        return 0
    for runs in repeats:   # a kept repeat of other settings would be paired with these in one ratio
        for item in runs:
            changed = [] if run_state(item.run_dir, fresh=args.fresh) != "done" else \
                changed_settings(read_summary(item.run_dir).get("config") or {}, item.cfg)
            if changed:
                print(f"error: {item.run_dir} is a finished repeat of other settings ({'; '.join(changed)}): use "
                      "another --output-dir, or --fresh to run every repeat again and replace it", file=sys.stderr)
                return 2
    log: list[dict] = []
    pending = any(run_state(item.run_dir, fresh=args.fresh) != "done" for runs in repeats for item in runs)
    warmup = None if args.no_warmup or not pending else warm_up(configs, not args.no_progress)
    if warmup is not None:
        print(f"[protocol] warm-up {warmup['group']}/{warmup['run']}: {warmup['status']} ({warmup['seconds']} s)",
              flush=True)
    unfinished, last_repeat_s = 0, None
    for index, runs in enumerate(repeats, start=1):
        elapsed = time.perf_counter() - started
        if not repeat_fits(elapsed, last_repeat_s, args.launch_deadline):
            unfinished = len(repeats) - index + 1
            print(f"[protocol] stopping before repeat {index}: {elapsed:.0f} s + {last_repeat_s:.0f} s per repeat "
                  f"> --launch-deadline {args.launch_deadline:.0f} s; rerun the same command to continue", flush=True)
            break
        repeat_started = time.perf_counter()
        if run_repeat(runs, fresh=args.fresh, progress=not args.no_progress, log=log, whole=not args.once):
            last_repeat_s = time.perf_counter() - repeat_started
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "warmup": warmup, "runs": log,
            "wall_s": round(time.perf_counter() - started, 1)}
    if not args.once:
        order, methods, groups = [], {}, {}
        for item in configs:
            order.append(item.cfg.run_name)
            methods[item.cfg.run_name] = item.method
            groups.setdefault(item.group, (Path(item.cfg.output.dir), []))[1].append(item.cfg.run_name)
        for group, (folder, names) in groups.items():
            doc = report(group, folder, names, args.reference, methods)
            doc["last_invocation"] = meta
            atomic_write_text(folder / "protocol.json", json.dumps(doc, indent=1) + "\n")
            atomic_write_text(folder / "protocol.md", markdown(doc, meta))
            print(markdown(doc, meta))
    failed = [entry for entry in log if entry["status"] not in ("ok", "oom", "diverged", "skipped")]
    if failed:
        print(f"failed: {', '.join(e['run'] for e in failed)}", file=sys.stderr)
        return 1
    return 3 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
