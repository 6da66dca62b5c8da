"""The suite's main job (./run_all.sh): train every method of a profile on the same data, run the evaluators that
exist, build the tables, print a summary table and the total wall time.

A profile (experiments/configs/profiles/<name>.yaml) lists run groups; each names a config, the methods to run on it
(method.name is an override, so one config serves every method), overrides for all of them and per method, and the
results group the runs go to (<output_dir>/<group>/<config>-<method>/, the layout `python -m plots` reads). Methods a
profile cannot run (e.g. CUDA-only ones on the CPU profile) are listed under `skip` with the reason; a method that
turns out unsupported at run time (MethodUnsupportedError) is reported the same way. An out-of-memory or failed run is
recorded and the suite goes on.

    python -m experiments.run_all                      # the "cpu" profile: <= 10 minutes on 2 CPU cores
    python -m experiments.run_all --profile gpu-small  # SmolLM2 on one GPU, longer, every method
    python -m experiments.run_all --profile paper      # the paper's experiments (GPU, hours to days)
"""
from __future__ import annotations

from experiments.process_env import apply_defaults

apply_defaults()  # before torch is imported: OpenMP waiting policy, CUDA allocator (see experiments/process_env.py)

import argparse
import dataclasses
import importlib
import importlib.util
import sys
import time
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from baselines.registry import method_names
from experiments.config import PROFILE_DIR, ConfigError, RunConfig, load_config
from experiments.paths import REPO_ROOT
from experiments.results import read_summary

DEFAULT_PROFILE = "cpu"
PROFILE_KEYS = ("description", "output_dir", "time_budget_s", "runs", "skip", "evaluators", "plots")
RUN_KEYS = ("config", "group", "name", "methods", "overrides", "method_overrides")
EVALUATOR_KEYS = ("name", "groups", "methods", "options")


@dataclasses.dataclass
class PlannedRun:
    group: str
    method: str
    cfg: RunConfig | None            # None when skipped
    skip_reason: str | None = None


@dataclasses.dataclass
class Outcome:
    planned: PlannedRun
    status: str                      # ok | oom | error | skipped
    summary: dict | None = None
    run_dir: Path | None = None
    note: str = ""


# --- profiles ---------------------------------------------------------------------------------------------------
def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict:
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; valid profiles: {', '.join(profile_names())}")
    profile = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    _check_keys(profile, PROFILE_KEYS, f"profile {name}")
    if not profile.get("runs"):
        raise ConfigError(f"profile {name} lists no runs")
    valid = set(method_names())
    for method in profile.get("skip") or {}:
        if method not in valid:
            raise ConfigError(f"profile {name}: skip names unknown method {method!r}; valid methods: "
                              f"{', '.join(sorted(valid))}")
    for entry in profile["runs"]:
        _check_keys(entry, RUN_KEYS, f"profile {name}, run group {entry.get('group', '?')}")
        for key in ("config", "group", "methods"):
            if not entry.get(key):
                raise ConfigError(f"profile {name}: every run group needs {key!r} (got {entry})")
        unknown = [m for m in [*entry["methods"], *(entry.get("method_overrides") or {})] if m not in valid]
        if unknown:
            raise ConfigError(f"profile {name}, group {entry['group']}: unknown method(s) {', '.join(unknown)}; "
                              f"valid methods: {', '.join(sorted(valid))}")
    for evaluator in profile.get("evaluators") or []:
        _check_keys(evaluator, EVALUATOR_KEYS, f"profile {name}, evaluator")
    profile["name"] = name
    return profile


def _check_keys(mapping, valid, where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {mapping!r}")
    unknown = sorted(set(mapping) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")


def plan_runs(profile: dict, *, output_root: Path, only_methods: list[str] | None = None,
              extra_overrides: tuple[str, ...] = (), only_groups: list[str] | None = None) -> list[PlannedRun]:
    """Resolve and validate every run of the profile before anything trains (a bad config fails in seconds)."""
    skip = profile.get("skip") or {}
    if only_methods:
        unknown = [m for m in only_methods if m not in method_names()]
        if unknown:
            raise ConfigError(f"--methods names unknown method(s) {', '.join(unknown)}; valid methods: "
                              f"{', '.join(method_names())}")
    if only_groups:
        known = {entry["group"] for entry in profile["runs"]}
        unknown = [g for g in only_groups if g not in known]
        if unknown:
            raise ConfigError(f"--groups names unknown group(s) {', '.join(unknown)}; groups of profile "
                              f"{profile['name']}: {', '.join(sorted(known))}")
    planned = []
    for entry in profile["runs"]:
        if only_groups and entry["group"] not in only_groups:
            continue
        stem = entry.get("name") or Path(entry["config"]).stem
        for method in entry["methods"]:
            if only_methods and method not in only_methods:
                continue
            if method in skip:
                planned.append(PlannedRun(entry["group"], method, None, skip_reason=str(skip[method])))
                continue
            overrides = [*(entry.get("overrides") or []), *((entry.get("method_overrides") or {}).get(method) or []),
                         f"method.name={method}", f"run_name={stem}-{method}",
                         f"output.dir={output_root / entry['group']}", *extra_overrides]
            try:
                cfg = load_config(entry["config"], overrides)
            except ConfigError as exc:
                raise ConfigError(f"profile {profile['name']}, group {entry['group']}, method {method}: {exc}") \
                    from exc
            planned.append(PlannedRun(entry["group"], method, cfg))
    if not planned:
        raise ConfigError(f"profile {profile['name']}: nothing to run (check --methods and --groups)")
    return planned


# --- running ------------------------------------------------------------------------------------------------------
def run_planned(planned: list[PlannedRun], *, progress: bool = True) -> list[Outcome]:
    from experiments.run import run_experiment

    outcomes = []
    bar = tqdm(planned, desc="methods", unit="run", disable=not progress)
    for item in bar:
        bar.set_postfix_str(f"{item.group}/{item.method}")
        if item.cfg is None:
            outcomes.append(Outcome(item, "skipped", note=item.skip_reason or ""))
            continue
        try:
            summary, run_dir = run_experiment(item.cfg, progress=progress)
        except Exception as exc:  # a broken run directory or config write: record it, go on with the next method
            outcomes.append(Outcome(item, "error", note=f"{type(exc).__name__}: {exc}"))
            continue
        status = summary["status"]
        note = summary.get("error") or ""
        if summary.get("error_kind") == "unsupported":
            status = "skipped"
        outcomes.append(Outcome(item, status, summary, run_dir, note))
    return outcomes


def _rank_runs(module, run_dirs: list[Path], **options) -> str:
    """eval.rank's current API: run(base, tuned, out); base = the run's starting model (summary["model"])."""
    skipped = []
    for run_dir in run_dirs:
        base = (read_summary(run_dir) or {}).get("model") or ""
        if base.startswith("random:"):
            # the evaluator would rebuild the random base with its own seed, not the run's: ΔW would be meaningless
            skipped.append(run_dir.name)
            continue
        # the base must be built in the dtype the run loaded it in, or bf16 rounding of the base shows up as ΔW
        dtype = ((read_summary(run_dir) or {}).get("config") or {}).get("model", {}).get("dtype", "fp32")
        module.run(base, str(run_dir / "model"), run_dir / "eval" / "rank.json", **{"load_dtype": dtype, **options})
    return f"; random-init base, skipped: {', '.join(skipped)}" if skipped else ""


def _math_runs(module, run_dirs: list[Path], **options) -> str:
    """eval.math's current API: evaluate_source(run_dir) reads <run_dir>/model and writes <run_dir>/eval/."""
    for run_dir in run_dirs:
        module.evaluate_source(str(run_dir), **options)
    return ""


# Used when an evaluator module has no evaluate_runs(run_dirs, **options) hook yet: its present public API.
ADAPTERS = {"rank": ("run", _rank_runs), "math": ("evaluate_source", _math_runs)}


def run_evaluators(profile: dict, outcomes: list[Outcome]) -> list[str]:
    """For each evaluator the profile lists: `eval.<name>.evaluate_runs(run_dirs, **options)` when the module has it,
    else its present API through ADAPTERS; a module that does not exist yet is skipped with a note. Evaluators read
    <run_dir>/model (output.save_model) and write <run_dir>/eval/. Returns the notes."""
    notes = []
    for spec in profile.get("evaluators") or []:
        name = spec["name"]
        module_name = f"eval.{name}"
        if importlib.util.find_spec(module_name) is None:
            notes.append(f"evaluator {name}: module {module_name} does not exist yet, skipped")
            continue
        module = importlib.import_module(module_name)
        if hasattr(module, "evaluate_runs"):
            call = lambda dirs, **kw: module.evaluate_runs(dirs, **kw)  # noqa: E731
        elif name in ADAPTERS and hasattr(module, ADAPTERS[name][0]):
            call = lambda dirs, **kw: ADAPTERS[name][1](module, dirs, **kw)  # noqa: E731
        else:
            notes.append(f"evaluator {name}: {module_name} has no evaluate_runs(run_dirs, **options), skipped")
            continue
        groups, methods = spec.get("groups"), spec.get("methods")
        run_dirs = [o.run_dir for o in outcomes if o.status == "ok" and o.run_dir is not None
                    and (not groups or o.planned.group in groups) and (not methods or o.planned.method in methods)]
        if not run_dirs:
            notes.append(f"evaluator {name}: no successful runs to evaluate")
            continue
        started = time.perf_counter()
        try:
            extra = call(run_dirs, **(spec.get("options") or {})) or ""
            notes.append(f"evaluator {name}: {len(run_dirs)} run(s) in {time.perf_counter() - started:.0f} s, "
                         f"results in <run_dir>/eval/{extra}")
        except Exception as exc:  # an evaluator failure must not hide the training results
            notes.append(f"evaluator {name} failed: {type(exc).__name__}: {exc}")
    return notes


def run_plots(output_root: Path) -> str:
    if importlib.util.find_spec("plots.__main__") is None:
        return "plots: module plots.__main__ does not exist yet, skipped"
    plots_main = importlib.import_module("plots.__main__")
    if not hasattr(plots_main, "build_all"):
        return "plots: plots.__main__ has no build_all(results, out), skipped"
    out = output_root / "tables_figures"
    try:
        written = plots_main.build_all(output_root, out)
    except Exception as exc:
        return f"plots failed: {type(exc).__name__}: {exc}"
    return f"plots: {sum(len(p) for p in written.values())} files in {out}"


# --- report -------------------------------------------------------------------------------------------------------
def _fmt_bytes(value) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def format_table(outcomes: list[Outcome]) -> str:
    header = ("group", "method", "status", "final loss", "peak memory", "median step", "note")
    rows = []
    for o in outcomes:
        s = o.summary or {}
        loss = s.get("final_loss")
        step = (s.get("timing_ms") or {}).get("step")
        memory = s.get("memory") or {}
        device = memory.get("device")
        peak = _fmt_bytes(memory.get("peak_allocated_bytes")) + (f" ({device})" if device and s.get("steps") else "")
        note = o.note.splitlines()[0][:90] if o.note else ""
        rows.append((o.planned.group, o.planned.method, o.status, "-" if loss is None else f"{loss:.4f}",
                     peak if s.get("steps") else "-", "-" if step is None else f"{step:.0f} ms", note))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"profile under experiments/configs/profiles/ (default {DEFAULT_PROFILE})")
    parser.add_argument("--methods", help="comma-separated subset of the profile's methods")
    parser.add_argument("--groups", help="comma-separated subset of the profile's run groups")
    parser.add_argument("--set", action="append", default=[], metavar="section.key=value",
                        help="override applied to every run (repeatable), e.g. --set train.max_steps=2")
    parser.add_argument("--output-dir", type=Path, help="results root (default: the profile's output_dir)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluators")
    parser.add_argument("--no-plots", action="store_true", help="skip the tables and figures")
    parser.add_argument("--dry-run", action="store_true", help="resolve and print the plan, train nothing")
    parser.add_argument("--list-profiles", action="store_true", help="print the profiles and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


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
        planned = plan_runs(profile, output_root=output_root, only_methods=only, extra_overrides=tuple(args.set),
                            only_groups=groups)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"profile {args.profile}: {len(planned)} run(s) -> {output_root}")
    if args.dry_run:
        for item in planned:
            where = item.skip_reason and f"skipped: {item.skip_reason}" or \
                f"{item.cfg.model.source}, {item.cfg.train.max_steps or item.cfg.train.epochs} " \
                f"{'steps' if item.cfg.train.max_steps else 'epochs'}"
            name = item.cfg.run_name if item.cfg else item.method
            print(f"  {item.group}/{name}: {where}")
        return 0
    outcomes = run_planned(planned, progress=not args.no_progress)
    notes = [] if args.no_eval else run_evaluators(profile, outcomes)
    if not args.no_plots:
        notes.append(run_plots(output_root))
    print()
    print(format_table(outcomes))
    for note in notes:
        print(f"note: {note}")
    elapsed = time.perf_counter() - started
    budget = profile.get("time_budget_s")
    over = f" (over the profile's budget of {budget} s)" if budget and elapsed > budget else ""
    print(f"total wall time: {elapsed:.1f} s{over}")
    failed = [o for o in outcomes if o.status in ("error", "oom")]
    return 1 if failed and len(failed) == len(outcomes) else 0


__all__ = ["load_profile", "plan_runs", "run_planned", "run_evaluators", "format_table", "main"]

if __name__ == "__main__":
    sys.exit(main())
