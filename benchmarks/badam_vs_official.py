"""GPU benchmark: our badam optimizers against the official badam 1.4 (and against our own earlier code), one process
per optimizer.

Setup (identical for all): random-init Llama-3-8B config in bf16 built directly on the GPU, batch 2 x 728 random token
ids (throughput and memory do not depend on the token values), labels = inputs, non-reentrant activation checkpointing
without input-require-grads hooks.

Block mode (workers ``ours``, ``before`` = badam/ at --before-rev, ``official`` = 1.4's BlockOptimizer): AdamW(lr=1e-6,
weight_decay=0) over all parameters as the base optimizer, one block per layer (32 blocks). Three phases per process:
  * k1_epoch     K=1, ascending: 2 warm-up steps, then one full block-epoch (every block visited once) is measured.
  * k100_steady  K=100, ascending from the middle layer: 3 warm-up steps, then --steady-steps (30) measured steps of
                 that block (no switch happens: a steady state inside one block visit).
  * k100_accum2  as k100_steady with 2 micro-batches of batch x length per step (gradient accumulation): 2 warm-up
                 and --accum-steps (5) measured steps.
Ratio mode (workers ``ours_ratio`` = badam.BlockOptimizerRatio, ``official_ratio`` = 1.4's BlockOptimizerRatio):
1.4's defaults (update_ratio --update-ratio (0.1), adjacent masks, embeddings and lm_head frozen, preserve_threshold
100), switch_every 100, lr 1e-6, no weight decay, no clipping; phase ratio_steady: 2 warm-up + --ratio-steps (6)
measured steps.

Per step, CUDA events time forward, backward and update (optimizer.step + zero_grad, including any block switch).
Block switches are timed separately (synchronize around ours / before's `_activate`, 1.4's
`switch_trainable_params`).

Memory (torch.cuda allocated bytes): weights; `activations` = peak of a forward/backward with no optimizer and the
lowest layer trainable (its gradients dropped at once) minus weights; `peak` per phase; `update_peak` = highest
allocation inside optimizer.step (no activations are alive then) minus weights; `held_after_backward` = bytes the
optimizer holds when backward ends (fp32 masters, states, mask indices and gradients: the model's bf16 p.grad and any
fp32 sums for ours, fp32 master gradients for before, the model's bf16 gradients for 1.4, 1.4 ratio mode's sparse COO
gradients with their int64 indices). Optimizer memory is reported two ways:
  * optimizer_bytes       = max(update_peak, held_after_backward): what the optimizer needs at its worst moment;
  * peak_minus_activations = peak - weights - activations (the whole-run formula; when the overall peak falls in
                            early backward, where all hold the same states next to the logits, it hides differences).

Usage (GPU; about 5 minutes on one H100; 1.4 is loaded from DIR, our earlier code from git):
    python benchmarks/badam_vs_official.py --out results/bench/badam_vs_official_v2 --official-path DIR
Usage (CPU smoke test): python benchmarks/badam_vs_official.py --tiny --out /tmp/bench
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

from badam_bench_worker import BLOCK_WORKERS, RATIO_WORKERS, worker  # noqa: E402
from experiments.process_env import apply_defaults  # noqa: E402
from experiments.results import source_commit  # noqa: E402

OPTIMIZERS = BLOCK_WORKERS + RATIO_WORKERS
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
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                        help=f"comma-separated subset of {','.join(OPTIMIZERS)}")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=728)
    parser.add_argument("--steady-steps", type=int, default=None, help="measured K=100 steps (default 30; 4 tiny)")
    parser.add_argument("--accum-steps", type=int, default=None, help="measured accumulation steps (default 5; 3 tiny)")
    parser.add_argument("--ratio-steps", type=int, default=None, help="measured ratio-mode steps (default 6; 3 tiny)")
    parser.add_argument("--update-ratio", type=float, default=0.1, help="ratio mode's update_ratio (1.4's default)")
    parser.add_argument("--worker-timeout", type=float, default=240.0,
                        help="seconds after which a worker is stopped and recorded as an error (default 240)")
    parser.add_argument("--profile-dir", default=None,
                        help="also write a torch.profiler table of the last 3 steady-state steps per optimizer here")
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


def fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def verdict(value, limit):
    return "n/a" if value is None else ("yes" if value <= limit else "NO")


def _phase_rows(results, names, phases):
    rows = []
    for phase in phases:
        for name in names:
            res = results.get(name)
            if res is None:
                continue
            if "error" in res:
                rows.append(f"| {phase} | {name} | error: {res['error']} |||||||")
                continue
            p = res["phases"][phase]
            ms, mem, sw = p["median_ms"], p["memory"], p["switch_ms"]["median"]
            rows.append(f"| {phase} | {name} | {ms['forward']:.1f} | {ms['backward']:.1f} | {ms['update']:.1f} | "
                        f"{ms['step']:.1f} | {'-' if sw is None else f'{sw:.1f}'} | "
                        f"{gib(mem['peak_allocated_bytes'])} | {gib(mem['optimizer_bytes'])} | "
                        f"{gib(mem['peak_minus_activations_bytes'])} |")
    return rows


def _ok(results, name):
    return name in results and "error" not in results[name]


def markdown(results: dict, meta: dict) -> str:
    lines = ["# badam vs official badam 1.4 (block mode and ratio mode)", "",
             f"- date: {meta['date']}", f"- device: {meta['device']}",
             f"- torch {meta['torch']}, transformers {meta['transformers']}", f"- command: `{meta['command']}`",
             f"- model: {meta['model']}, bf16, batch {meta['batch_size']} x {meta['seq_len']} random token ids, "
             "non-reentrant checkpointing", f"- `before` = badam/ at {meta['before_rev']}", ""]
    if meta["device"] == "cpu":
        lines += ["CPU run (script check only): no allocator statistics, so `optimizer GiB` counts the optimizer's "
                  "tensors, and timings on a shared CPU mean little.", ""]
    header = ["| phase | optimizer | forward ms | backward ms | update ms | step ms | switch ms (median) | "
              "peak GiB | optimizer GiB | peak-weights-activations GiB |", "|" + "---|" * 10]
    block = _phase_rows(results, BLOCK_WORKERS, BLOCK_PHASES)
    if block:
        lines += ["## Block mode (BlockOptimizer)", ""] + header + block
    if _ok(results, "ours"):
        lines += ["", "| phase | peak ours/before | peak ours/1.4 | optimizer memory ours/1.4 | step time ours/1.4 | "
                  "targets met |", "|---|---|---|---|---|---|"]
        for phase in BLOCK_PHASES:
            ours = results["ours"]["phases"][phase]
            before, official = ({"memory": {}, "median_ms": {}} if not _ok(results, n) else results[n]["phases"][phase]
                                for n in ("before", "official"))
            peak = ours["memory"]["peak_allocated_bytes"]
            vs_before = ratio(peak, before["memory"].get("peak_allocated_bytes"))
            peak14 = ratio(peak, official["memory"].get("peak_allocated_bytes"))
            mem14 = ratio(ours["memory"]["optimizer_bytes"], official["memory"].get("optimizer_bytes"))
            time14 = ratio(ours["median_ms"]["step"], official["median_ms"].get("step"))
            lines.append(f"| {phase} | {fmt(vs_before)} | {fmt(peak14)} | {fmt(mem14)} | {fmt(time14)} | "
                         f"peak vs before: {verdict(vs_before, TARGETS['peak_vs_before'])}; "
                         f"memory vs 1.4: {verdict(mem14, TARGETS['optimizer_memory_ratio'])}; "
                         f"time vs 1.4: {verdict(time14, TARGETS['step_time_ratio'])} |")
        for other in ("official", "before"):
            if _ok(results, other):
                diffs = [abs(a - b) for a, b in zip(results["ours"]["phases"]["k1_epoch"]["losses"],
                                                      results[other]["phases"]["k1_epoch"]["losses"])]
                lines += ["", f"Same data and initial weights: the k1_epoch losses of ours and {other} differ by at "
                          f"most {max(diffs):.2e} over {len(diffs)} steps (one block per step, every block once)."]
    ratio_rows = _phase_rows(results, RATIO_WORKERS, ("ratio_steady",))
    if ratio_rows:
        lines += ["", f"## Ratio mode (BlockOptimizerRatio, update_ratio {meta['update_ratio']})", ""] + header
        lines += ratio_rows
    if _ok(results, "ours_ratio") and _ok(results, "official_ratio"):
        ours, theirs = (results[n]["phases"]["ratio_steady"] for n in RATIO_WORKERS)
        peak_r = ratio(ours["memory"]["peak_allocated_bytes"], theirs["memory"]["peak_allocated_bytes"])
        mem_r = ratio(ours["memory"]["optimizer_bytes"], theirs["memory"]["optimizer_bytes"])
        time_r = ratio(ours["median_ms"]["step"], theirs["median_ms"]["step"])
        lines += ["", "| ratio mode | peak ours/1.4 | optimizer memory ours/1.4 | step time ours/1.4 | targets met |",
                  "|---|---|---|---|---|",
                  f"| ratio_steady | {fmt(peak_r)} | {fmt(mem_r)} | {fmt(time_r)} | "
                  f"peak: {verdict(peak_r, TARGETS['ratio_peak_ratio'])}; "
                  f"memory: {verdict(mem_r, TARGETS['ratio_optimizer_memory_ratio'])} |"]
    lines += ["", f"Targets: {json.dumps(TARGETS)}. See the script's docstring for how each figure is measured."]
    return "\n".join(lines) + "\n"


def run_worker(name, args, out, env) -> dict:
    result_path = out / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--worker", name,
           "--worker-result", str(result_path), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--steady-steps", str(args.steady_steps), "--accum-steps", str(args.accum_steps),
           "--ratio-steps", str(args.ratio_steps), "--update-ratio", str(args.update_ratio),
           "--before-rev", args.before_rev]
    if args.tiny:
        cmd.append("--tiny")
    if args.profile_dir:
        cmd += ["--profile-dir", str(Path(args.profile_dir).resolve())]
    if args.official_path:
        cmd += ["--official-path", env["BADAM_OFFICIAL_PATH"]]
    print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    returncode = None
    with open(out / f"{name}.log", "w") as log:
        try:
            returncode = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                        timeout=args.worker_timeout).returncode
        except subprocess.TimeoutExpired:
            pass
    if returncode == 0 and result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        tail = (out / f"{name}.log").read_text()[-2000:]
        why = f"stopped after {args.worker_timeout:.0f} s" if returncode is None else f"exited with {returncode}"
        result = {"optimizer": name, "error": f"worker {why}"}
        result_path.write_text(json.dumps({**result, "log_tail": tail}, indent=2))
        print(tail, file=sys.stderr)
    print(f"[bench] {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    apply_defaults()  # the harness's allocator and OpenMP settings (experiments/process_env.py), for every worker
    env = dict(os.environ)
    if args.official_path:
        env["BADAM_OFFICIAL_PATH"] = str(Path(args.official_path).resolve())
    started = time.perf_counter()
    results = {name: run_worker(name, args, out, env) for name in args.optimizers}
    first_ok = next((r for r in results.values() if "error" not in r), {})
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "host": platform.node(),
            "device": first_ok.get("device", "n/a"), "torch": first_ok.get("torch", "n/a"),
            "transformers": first_ok.get("transformers", "n/a"), "model": first_ok.get("model", "n/a"),
            "batch_size": args.batch_size, "seq_len": args.seq_len, "before_rev": args.before_rev,
            "update_ratio": args.update_ratio, "cuda_alloc_conf": env.get("PYTORCH_CUDA_ALLOC_CONF"),
            "source_commit": source_commit(), "wall_s": round(time.perf_counter() - started, 1), "targets": TARGETS}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    table = markdown(results, meta)
    (out / "summary.md").write_text(table)
    print(table)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
