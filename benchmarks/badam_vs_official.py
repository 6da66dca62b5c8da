"""GPU benchmark: our badam optimizers against the official badam 1.4 (and against our own earlier code), one process
per optimizer, alternating over repeats (the benchmark protocol, experiments/repeats.py).

Setup (identical for all): random-init Llama-3-8B config in bf16 built directly on the GPU, batch 2 x 728 random token
ids (throughput and memory do not depend on the token values), labels = inputs, non-reentrant activation checkpointing
without input-require-grads hooks.

Block mode (workers ``ours``, ``before`` = badam/ at --before-rev, ``official`` = 1.4's BlockOptimizer, and the
optional ``ours_nockpt`` = ours without activation checkpointing): AdamW(lr=1e-6, weight_decay=0) over all
parameters as the base optimizer, one block per layer (32 blocks). Phases per process (--phases picks a subset):
  * k1_epoch     K=1, ascending: 2 warm-up steps, then one full block-epoch (every block visited once) is measured.
  * k100_steady  K=100, ascending from the middle layer: 3 warm-up steps, then --steady-steps (30) measured steps of
                 that block (no switch happens: a steady state inside one block visit).
  * k100_accum2  as k100_steady with 2 micro-batches of batch x length per step (gradient accumulation): 2 warm-up
                 and --accum-steps (5) measured steps.
Ratio mode (workers ``ours_ratio`` = badam.BlockOptimizerRatio, ``official_ratio`` = 1.4's BlockOptimizerRatio):
1.4's defaults (update_ratio --update-ratio (0.1), adjacent masks, embeddings and lm_head frozen, preserve_threshold
100), switch_every 100, lr 1e-6, no weight decay, no clipping; phase ratio_steady: 2 warm-up + --ratio-steps (6)
measured steps.

Protocol: the workers run A B C A B C ... --repeats times (default 3); every time ratio is formed per repeat from that
repeat's two workers and reported as the median with its [min-max] band ("≈ 1" when the band holds 1); a target is
met only when the whole band is within it ("undecided" when the band straddles it). A repeat whose workers all
finished in --out is kept by a later invocation (--fresh runs it again); an incomplete one runs again whole, so the two
sides of a ratio come from one session. With --launch-deadline a repeat starts only if the previous repeat's duration
still fits; the exit code is then 3 and the same command continues (a device call has a time limit).

Every worker times each phase from a collected, frozen heap and an empty CUDA cache, as the harness (--no-settle: not;
badam_bench_worker.settle says why); a phase's JSON also has the GC collections of its measured steps and each forward.
Per step, CUDA events time forward, backward and update (optimizer.step + zero_grad, including any block switch).
Block switches are timed separately (synchronize around ours / before's `_activate`, 1.4's
`switch_trainable_params`). Model FLOPs per step come from experiments/flops.py (BAdam's backward depends on the active
block) and give MFU against the device's dense bf16 peak.

Memory (torch.cuda allocated bytes): weights; `activations` = peak of a forward/backward with no optimizer and the
lowest layer trainable (its gradients dropped at once) minus weights; `peak` per phase; `update_peak` = highest
allocation inside optimizer.step (no activations are alive then) minus weights; `held_after_backward` = bytes the
optimizer holds when backward ends (fp32 masters, states, mask indices and gradients: the model's bf16 p.grad and any
fp32 sums for ours, fp32 master gradients for before, the model's bf16 gradients for 1.4, 1.4 ratio mode's sparse COO
gradients with their int64 indices). Optimizer memory is reported two ways:
  * optimizer_bytes       = max(update_peak, held_after_backward): what the optimizer needs at its worst moment;
  * peak_minus_activations = peak - weights - activations (the whole-run formula; when the overall peak falls in
                            early backward, where all hold the same states next to the logits, it hides differences).

--profile-dir: torch.profiler over the last 3 steps of each K=100 phase (last repeat only), with forward / backward /
update ranges; per worker a table (.txt) and records (.json), and per pair (ours vs 1.4, ours vs ours_nockpt) a diff
of phase and op times per step, also in summary.md: where the steady-state step loses or gains time (profiling.py
says how each figure is read; profile_summaries.py writes them again from the records).

Usage (GPU; about 3 minutes per repeat for ours + official at all phases on one H100):
    python benchmarks/badam_vs_official.py --out results/bench/badam_vs_official_v3 --official-path DIR \
        --optimizers ours,official,ours_nockpt --phases k100_steady --repeats 5 --profile-dir results/bench/...
Usage (CPU smoke test): python benchmarks/badam_vs_official.py --tiny --out /tmp/bench --repeats 1
DIR holds the unpacked badam 1.4 wheel (a folder containing badam/block_optim.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):  # run as a script from a bare checkout (nothing installed on the GPU machine)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import profiling  # noqa: E402
from badam_bench_worker import BLOCK_WORKERS, PHASES, RATIO_WORKERS, worker  # noqa: E402
from experiments.process_env import apply_defaults  # noqa: E402
from experiments.repeats import Band, band, format_band, ratio_band, repeat_fits  # noqa: E402
from experiments.results import source_commit  # noqa: E402

OPTIMIZERS = BLOCK_WORKERS + RATIO_WORKERS
DEFAULT_OPTIMIZERS = ("ours", "before", "official", "ours_ratio", "official_ratio")
ALL_PHASES = PHASES["block"] + PHASES["ratio"]
# badam/ before BlockOptimizer kept gradients on p.grad (commit of main that issue 12's change started from)
BEFORE_REV = "e6ad06c319551db7634b93ebd374931065512c99"
TARGETS = {"step_time_ratio": 0.90, "optimizer_memory_ratio": 0.90, "switch_ms": 20.0, "peak_vs_before": 1.03,
           "ratio_peak_ratio": 0.90, "ratio_optimizer_memory_ratio": 0.90}
BLOCK_PHASES = ("k1_epoch", "k100_steady", "k100_accum2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for the JSON results, logs and the Markdown table")
    parser.add_argument("--official-path", default=None,
                        help="folder with the unpacked badam 1.4 (default: $BADAM_OFFICIAL_PATH or .venv/reference)")
    parser.add_argument("--before-rev", default=BEFORE_REV,
                        help="git revision whose badam/ the 'before' worker runs (default: the last one with gradients "
                             "folded off p.grad), or a folder holding that badam/ package")
    parser.add_argument("--tiny", action="store_true", help="tiny Llama on CPU, to check the script itself")
    parser.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                        help=f"comma-separated subset of {','.join(OPTIMIZERS)} (default: all but ours_nockpt)")
    parser.add_argument("--phases", default=",".join(ALL_PHASES),
                        help=f"comma-separated subset of {','.join(ALL_PHASES)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="workers run alternately, A B A B ..., this many times; ratios are paired per repeat "
                             "and reported with their [min-max] band (default 3)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=728)
    parser.add_argument("--steady-steps", type=int, default=None, help="measured K=100 steps (default 30; 4 tiny)")
    parser.add_argument("--accum-steps", type=int, default=None, help="measured accumulation steps (default 5; 3 tiny)")
    parser.add_argument("--ratio-steps", type=int, default=None, help="measured ratio-mode steps (default 6; 3 tiny)")
    parser.add_argument("--update-ratio", type=float, default=0.1, help="ratio mode's update_ratio (1.4's default)")
    parser.add_argument("--cudnn-attention", action="store_true",
                        help="let scaled_dot_product_attention use cuDNN (off by default, as in the harness)")
    parser.add_argument("--worker-timeout", type=float, default=240.0,
                        help="seconds after which a worker is stopped and recorded as an error (default 240)")
    parser.add_argument("--profile-dir", default=None,
                        help="also write a torch.profiler table of the last 3 steady-state steps per optimizer here")
    parser.add_argument("--launch-deadline", type=float, metavar="SECONDS",
                        help="start no repeat that would, at the previous repeat's pace, end after this many seconds "
                             "(exit code 3; the same command continues, keeping the finished repeats)")
    parser.add_argument("--no-settle", dest="settle", action="store_false",
                        help="time each phase from the state the worker is in (before 2026-11-26: bench v3's gap)")
    parser.add_argument("--fresh", action="store_true",
                        help="run every repeat again (default: a repeat whose workers all finished in --out is kept)")
    parser.add_argument("--worker", choices=OPTIMIZERS, help=argparse.SUPPRESS)  # internal: run one optimizer here
    parser.add_argument("--worker-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    unknown = [o for o in chosen if o not in OPTIMIZERS]
    if unknown or not chosen:
        parser.error(f"--optimizers: unknown {unknown or 'empty list'}; valid choices are {', '.join(OPTIMIZERS)}")
    if not 0.0 < args.update_ratio <= 1.0:
        parser.error(f"--update-ratio must be in (0, 1], got {args.update_ratio}")
    args.optimizers = chosen
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad_phases = [x for x in phases if x not in ALL_PHASES]
    if bad_phases or not phases:
        parser.error(f"--phases: unknown {bad_phases or 'empty list'}; valid choices are {', '.join(ALL_PHASES)}")
    args.phases = phases
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.launch_deadline is not None and args.launch_deadline <= 0:
        parser.error(f"--launch-deadline must be a positive number of seconds, got {args.launch_deadline}")
    if args.tiny and args.seq_len == 728:
        args.seq_len = 32
    for name, full, tiny in (("steady_steps", 30, 4), ("accum_steps", 5, 3), ("ratio_steps", 6, 3)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    return args


# ------------------------------------------------------------------------------------------------- main side ----
def gib(n):
    if not isinstance(n, (int, float)):
        return "n/a"
    value = n / 2**30
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.1e}"  # tiny CPU runs hold kilobytes


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _ok_runs(results, name) -> list[dict]:
    return [r for r in results.get(name) or [] if "error" not in r]


def _ok(results, name) -> bool:
    return bool(_ok_runs(results, name))


def _step_by_repeat(results, name, phase) -> dict[int, float]:
    return {i: r["phases"][phase]["median_ms"]["step"] for i, r in enumerate(results.get(name) or [], start=1)
            if "error" not in r and phase in r["phases"]}


def _first(results, name, phase) -> dict:
    """The phase of the first repeat that ran it (memory is the same in every repeat; figures differ in time)."""
    return next((r["phases"][phase] for r in _ok_runs(results, name) if phase in r["phases"]),
                {"memory": {}, "median_ms": {}})


def fmt_band(b: Band | None) -> str:
    if b is None:
        return "n/a"
    return f"{b.median:.3f}" if b.n == 1 else format_band(b, 3)


def verdict(b: Band | None, limit: float) -> str:
    """yes when the whole band is within the target, NO when all of it misses, else undecided."""
    if b is None:
        return "n/a"
    if b.high <= limit:
        return "yes"
    return "NO" if b.low > limit else "undecided (band straddles the target)"


def _phase_rows(results, names, phases):
    rows = []
    for phase in phases:
        for name in names:
            runs = results.get(name)
            if not runs:
                continue
            ok = [r for r in _ok_runs(results, name) if phase in r["phases"]]
            if not ok:
                errors = [r for r in runs if "error" in r]
                if errors:
                    rows.append(f"| {phase} | {name} | error: {errors[0]['error']} |||||||||")
                continue
            ms = {k: band(r["phases"][phase]["median_ms"][k] for r in ok)
                  for k in ("forward", "backward", "update", "step")}
            mem = ok[0]["phases"][phase]["memory"]
            switch = band(r["phases"][phase]["switch_ms"]["median"] for r in ok)
            mfu = band((r["phases"][phase].get("compute") or {}).get("mfu") for r in ok)
            step = ms["step"]
            step_cell = f"{step.median:.1f}" + (f" ({step.low:.1f}-{step.high:.1f})" if step.n > 1 else "")
            rows.append(f"| {phase} | {name} | {len(ok)} | {ms['forward'].median:.1f} | {ms['backward'].median:.1f} | "
                        f"{ms['update'].median:.1f} | {step_cell} | "
                        f"{'-' if switch is None else f'{switch.median:.1f}'} | "
                        f"{'-' if mfu is None else f'{100 * mfu.median:.1f}'} | {gib(mem['peak_allocated_bytes'])} | "
                        f"{gib(mem['optimizer_bytes'])} | {gib(mem['peak_minus_activations_bytes'])} |")
    return rows


def _block_ratio_rows(results, phases) -> list[str]:
    lines = ["", "| phase | peak ours/before | peak ours/1.4 | optimizer memory ours/1.4 | step time ours/1.4 | "
                 "targets met |", "|---|---|---|---|---|---|"]
    for phase in phases:
        ours, before, official = (_first(results, n, phase) for n in ("ours", "before", "official"))
        if not ours["median_ms"]:
            continue
        peak = ours["memory"]["peak_allocated_bytes"]
        vs_before = band([ratio(peak, before["memory"].get("peak_allocated_bytes"))])
        peak14 = band([ratio(peak, official["memory"].get("peak_allocated_bytes"))])
        mem14 = band([ratio(ours["memory"]["optimizer_bytes"], official["memory"].get("optimizer_bytes"))])
        time14 = ratio_band(_step_by_repeat(results, "ours", phase), _step_by_repeat(results, "official", phase))
        lines.append(f"| {phase} | {fmt_band(vs_before)} | {fmt_band(peak14)} | {fmt_band(mem14)} | "
                     f"{fmt_band(time14)} | peak vs before: {verdict(vs_before, TARGETS['peak_vs_before'])}; "
                     f"memory vs 1.4: {verdict(mem14, TARGETS['optimizer_memory_ratio'])}; "
                     f"time vs 1.4: {verdict(time14, TARGETS['step_time_ratio'])} |")
    if _ok(results, "ours_nockpt"):
        lines += ["", "Without activation checkpointing (ours_nockpt: layers above the active block keep their "
                      "activations instead of recomputing them):", "",
                  "| phase | step time ours_nockpt/ours | peak ours_nockpt/ours |", "|---|---|---|"]
        for phase in phases:
            nockpt, ours = _first(results, "ours_nockpt", phase), _first(results, "ours", phase)
            if not nockpt["median_ms"] or not ours["median_ms"]:
                continue
            step = ratio_band(_step_by_repeat(results, "ours_nockpt", phase), _step_by_repeat(results, "ours", phase))
            peak = band([ratio(nockpt["memory"]["peak_allocated_bytes"], ours["memory"]["peak_allocated_bytes"])])
            lines.append(f"| {phase} | {fmt_band(step)} | {fmt_band(peak)} |")
    for other in ("official", "before"):
        if _ok(results, other) and "losses" in _first(results, "ours", "k1_epoch"):
            diffs = [abs(a - b) for a, b in zip(_first(results, "ours", "k1_epoch")["losses"],
                                                  _first(results, other, "k1_epoch").get("losses", []))]
            if diffs:
                lines += ["", f"Same data and initial weights: the k1_epoch losses of ours and {other} differ by at "
                          f"most {max(diffs):.2e} over {len(diffs)} steps (one block per step, every block once)."]
    return lines


def markdown(results: dict, meta: dict) -> str:
    """summary.md; results = {worker: [result of repeat 1, 2, ...]} (a single result dict counts as one repeat)."""
    results = {n: (r if isinstance(r, list) else [r]) for n, r in results.items()}
    repeats = meta.get("repeats", 1)
    lines = ["# badam vs official badam 1.4 (block mode and ratio mode)", "",
             f"- date: {meta['date']}", f"- device: {meta['device']}",
             f"- torch {meta['torch']}, transformers {meta['transformers']}", f"- command: `{meta['command']}`",
             f"- model: {meta['model']}, bf16, batch {meta['batch_size']} x {meta['seq_len']} random token ids, "
             "non-reentrant checkpointing (ours_nockpt: none)", f"- `before` = badam/ at {meta['before_rev']}",
             f"- protocol: {repeats} repeat(s), workers alternating (A B A B ...); times are medians over repeats "
             "(step: min-max over repeats in brackets); time ratios are paired per repeat, shown as median "
             "(min-max) and '≈ 1' when the band holds 1; a target is met ('yes') only when the whole band is "
             "within it", ""]
    if meta["device"] == "cpu":
        lines += ["CPU run (script check only): no allocator statistics, so `optimizer GiB` counts the optimizer's "
                  "tensors, and timings on a shared CPU mean little.", ""]
    header = ["| phase | optimizer | repeats | forward ms | backward ms | update ms | step ms | switch ms (median) | "
              "MFU % | peak GiB | optimizer GiB | peak-weights-activations GiB |", "|" + "---|" * 12]
    block_phases = [p for p in BLOCK_PHASES if p in meta.get("phases", BLOCK_PHASES)]
    block = _phase_rows(results, BLOCK_WORKERS, block_phases)
    if block:
        lines += ["## Block mode (BlockOptimizer)", ""] + header + block
    if _ok(results, "ours"):
        lines += _block_ratio_rows(results, block_phases)
    ratio_rows = _phase_rows(results, RATIO_WORKERS, ("ratio_steady",))
    if ratio_rows:
        lines += ["", f"## Ratio mode (BlockOptimizerRatio, update_ratio {meta['update_ratio']})", ""] + header
        lines += ratio_rows
    if _ok(results, "ours_ratio") and _ok(results, "official_ratio"):
        ours, theirs = (_first(results, n, "ratio_steady") for n in RATIO_WORKERS)
        peak_r = band([ratio(ours["memory"]["peak_allocated_bytes"], theirs["memory"]["peak_allocated_bytes"])])
        mem_r = band([ratio(ours["memory"]["optimizer_bytes"], theirs["memory"]["optimizer_bytes"])])
        time_r = ratio_band(_step_by_repeat(results, "ours_ratio", "ratio_steady"),
                            _step_by_repeat(results, "official_ratio", "ratio_steady"))
        lines += ["", "| ratio mode | peak ours/1.4 | optimizer memory ours/1.4 | step time ours/1.4 | targets met |",
                  "|---|---|---|---|---|",
                  f"| ratio_steady | {fmt_band(peak_r)} | {fmt_band(mem_r)} | {fmt_band(time_r)} | "
                  f"peak: {verdict(peak_r, TARGETS['ratio_peak_ratio'])}; "
                  f"memory: {verdict(mem_r, TARGETS['ratio_optimizer_memory_ratio'])} |"]
    lines += ["", f"Targets: {json.dumps(TARGETS)}. See the script's docstring for how each figure is measured. "
              "MFU = model FLOPs (experiments/flops.py: BAdam's backward depends on the active block) / step time / "
              "the device's dense bf16 peak."]
    return "\n".join(lines) + "\n"


def profile_diffs(folder: Path) -> str:
    """Markdown diffs of the profiled workers' steady-state steps: ours against 1.4 and against ours_nockpt."""
    out = []
    for a, b in (("ours", "official"), ("ours", "ours_nockpt"), ("ours_ratio", "official_ratio")):
        for stem_a in sorted(folder.glob(f"profile_{a}_K*.json")):
            stem_b = folder / stem_a.name.replace(f"profile_{a}_", f"profile_{b}_", 1)
            if not stem_b.is_file():
                continue
            text = profiling.diff(json.loads(stem_a.read_text()), json.loads(stem_b.read_text()), label_a=a,
                                  label_b=b)
            (folder / f"profile_diff_{a}_vs_{b}_K{stem_a.stem.split('_K', 1)[1]}.md").write_text(text)
            out += [f"### {stem_a.stem} vs {stem_b.stem}", "", text]
    return "\n".join(out)


PROFILE_SECTION = ("\n## Where the steady-state steps differ (torch.profiler, the last 3 steps of each K=100 phase of "
                   "the last repeat)\n\n")


def with_profile_section(summary: str, diffs: str) -> str:
    """summary.md's text with its profile section (the diffs) replacing any earlier one (none when diffs is empty)."""
    kept = summary.split(PROFILE_SECTION, 1)[0]
    return kept + PROFILE_SECTION + diffs if diffs else kept


def _stem(name: str, args, repeat: int) -> str:
    return name if args.repeats == 1 else f"{name}_rep{repeat}"


def settings_of(args) -> dict:
    """What a worker's numbers depend on besides the optimizer: a repeat is kept only for the same settings."""
    return {"tiny": bool(args.tiny), "batch_size": args.batch_size, "seq_len": args.seq_len, "phases": args.phases,
            "steady_steps": args.steady_steps, "accum_steps": args.accum_steps, "ratio_steps": args.ratio_steps,
            "update_ratio": args.update_ratio, "before_rev": args.before_rev,
            "cudnn_attention": bool(args.cudnn_attention), "settle": bool(args.settle)}


class SettingsMismatch(RuntimeError):
    """--out holds finished repeats of other settings (they would be kept as if they were of these)."""


def _differences(result: dict, args) -> list[str]:
    """The settings in which a finished result differs from this invocation's (one without "settle" ran unsettled).
    A result without a settings record is compared on what it holds: model, batch size, sequence length and phases."""
    ours = settings_of(args)
    theirs = {"settle": False, **result["settings"]} if isinstance(result.get("settings"), dict) else None
    if theirs is None:
        kind = "block" if result.get("optimizer") in BLOCK_WORKERS else "ratio"
        theirs = {"tiny": result.get("model") == "tiny-llama", "batch_size": result.get("batch_size"),
                  "seq_len": result.get("seq_len"), "phases": sorted(result.get("phases") or {})}
        ours = {**{key: ours[key] for key in theirs},
                "phases": sorted(phase for phase in args.phases if phase in PHASES[kind])}
    return [f"{key} {theirs.get(key)!r} there, {ours[key]!r} now" for key in ours if theirs.get(key) != ours[key]]


def finished_repeat(args, out: Path, repeat: int) -> dict[str, dict] | None:
    """The results of a repeat an earlier invocation finished (every worker without error), else None: an incomplete
    repeat runs again whole, so that the two workers of a paired ratio always come from one session. A finished
    repeat of other settings raises SettingsMismatch (keeping it would mix settings; running it again would replace
    a finished result)."""
    if args.fresh:
        return None
    results = {}
    for name in args.optimizers:
        path = out / f"{_stem(name, args, repeat)}.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        if not result or "error" in result:
            return None
        differences = _differences(result, args)
        if differences:
            raise SettingsMismatch(f"{path} is a finished repeat of other settings ({'; '.join(differences)}): use "
                                   "another --out, or --fresh to run every repeat again and replace it")
        results[name] = result
    return results


def run_worker(name, args, out, env, *, repeat: int = 1, profile: bool = True) -> dict:
    stem = _stem(name, args, repeat)
    result_path = out / f"{stem}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--worker", name,
           "--worker-result", str(result_path), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--steady-steps", str(args.steady_steps), "--accum-steps", str(args.accum_steps),
           "--ratio-steps", str(args.ratio_steps), "--update-ratio", str(args.update_ratio),
           "--before-rev", args.before_rev, "--phases", ",".join(args.phases)]
    cmd += [flag for flag, on in (("--cudnn-attention", args.cudnn_attention), ("--no-settle", not args.settle),
                                  ("--tiny", args.tiny)) if on]
    if args.profile_dir and profile:
        cmd += ["--profile-dir", str(Path(args.profile_dir).resolve())]
    if args.official_path:
        cmd += ["--official-path", env["BADAM_OFFICIAL_PATH"]]
    print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    returncode = None
    with open(out / f"{stem}.log", "w") as log:
        try:
            returncode = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                        timeout=args.worker_timeout).returncode
        except subprocess.TimeoutExpired:
            pass
    if returncode == 0 and result_path.exists():
        result = {**json.loads(result_path.read_text()), "settings": settings_of(args)}
        result_path.write_text(json.dumps(result, indent=2))
    else:
        tail = (out / f"{stem}.log").read_text()[-2000:]
        why = f"stopped after {args.worker_timeout:.0f} s" if returncode is None else f"exited with {returncode}"
        result = {"optimizer": name, "error": f"worker {why}"}
        result_path.write_text(json.dumps({**result, "log_tail": tail}, indent=2))
        print(tail, file=sys.stderr)
    print(f"[bench] {stem}: {'failed' if 'error' in result else 'done'} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return result


def check_official(args) -> None:
    """badam 1.4 is found before any worker starts, when a chosen optimizer needs it (else every repeat's workers
    would fail the same way, one traceback each)."""
    from badam.reference import default_official_path, official_package_dir

    if not {"official", "official_ratio"} & set(args.optimizers):
        return
    root = Path(args.official_path) if args.official_path else default_official_path()
    if official_package_dir(root) is None:
        raise SettingsMismatch(f"official badam 1.4 not found under {root} (needed by "
                               f"{', '.join(o for o in args.optimizers if o.startswith('official'))}): pass "
                               "--official-path <folder holding badam/>, set BADAM_OFFICIAL_PATH, or install it with "
                               f"`pip install --no-deps --target {root} badam==1.4`")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    try:
        check_official(args)
        for repeat in range(1, args.repeats + 1):   # every kept repeat checked before anything runs
            finished_repeat(args, out, repeat)
    except SettingsMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    apply_defaults()  # the harness's allocator and OpenMP settings (experiments/process_env.py), for every worker
    env = dict(os.environ)
    if args.official_path:
        env["BADAM_OFFICIAL_PATH"] = str(Path(args.official_path).resolve())
    started = time.perf_counter()
    results: dict[str, list[dict]] = {name: [] for name in args.optimizers}
    last_repeat_s, unfinished, kept = None, 0, []
    for repeat in range(1, args.repeats + 1):  # A B A B ...: drifts of a shared machine fall on both sides
        earlier = finished_repeat(args, out, repeat)
        if earlier is not None:
            kept.append(repeat)
            for name in args.optimizers:
                results[name].append(earlier[name])
            continue
        elapsed = time.perf_counter() - started
        if not repeat_fits(elapsed, last_repeat_s, args.launch_deadline):
            unfinished = args.repeats - repeat + 1
            print(f"[bench] stopping before repeat {repeat}: {elapsed:.0f} s + {last_repeat_s:.0f} s per repeat > "
                  f"--launch-deadline {args.launch_deadline:.0f} s; rerun the same command to continue", flush=True)
            break
        repeat_started = time.perf_counter()
        for name in args.optimizers:
            results[name].append(run_worker(name, args, out, env, repeat=repeat, profile=repeat == args.repeats))
        last_repeat_s = time.perf_counter() - repeat_started
    if kept:
        print(f"[bench] kept the finished repeat(s) {', '.join(map(str, kept))} from {out} (--fresh runs them again)",
              flush=True)
    first_ok = next((r for runs in results.values() for r in runs if "error" not in r), {})
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "host": platform.node(),
            "device": first_ok.get("device", "n/a"), "torch": first_ok.get("torch", "n/a"),
            "transformers": first_ok.get("transformers", "n/a"), "model": first_ok.get("model", "n/a"),
            "batch_size": args.batch_size, "seq_len": args.seq_len, "before_rev": args.before_rev,
            "update_ratio": args.update_ratio, "cuda_alloc_conf": env.get("PYTORCH_CUDA_ALLOC_CONF"),
            "repeats": len(results[args.optimizers[0]]), "repeats_planned": args.repeats, "phases": args.phases,
            "optimizers": args.optimizers,
            "cudnn_attention": args.cudnn_attention,
            "source_commit": source_commit(), "wall_s": round(time.perf_counter() - started, 1), "targets": TARGETS}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    table = markdown(results, meta)
    if args.profile_dir:
        table = with_profile_section(table, profile_diffs(Path(args.profile_dir)))
    (out / "summary.md").write_text(table)
    print(table)
    if not all("error" not in r for runs in results.values() for r in runs):
        return 1
    return 3 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
