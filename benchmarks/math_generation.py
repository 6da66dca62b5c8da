"""GPU benchmark: how fast eval.math generates for the six math sets (8,809 items), through the evaluator itself.

It loads the model once, warms up with one batch of the longest prompts (not timed: CUDA context, kernels, and with
`--compile` the first compilations), then runs `eval.math.evaluate_math` on the chosen datasets exactly as the
evaluator runs (greedy, batches sorted by prompt length, KV cache, stop strings; MAmmoTH scoring), with a hook that
records every batch. Reported, per dataset and in total:
- wall time of the evaluation (generation, saving and scoring; the model load is reported apart), device synchronised;
- generated tokens (per row up to and including its end-of-sequence token, padding excluded) per second: the
  dataset's tokens over its generation time, and the median and spread (min / max) of the per-batch rates;
- accuracy (a sanity check that the run produced real answers) and the peak GPU memory.
Target (issue 15): a 0.5B model on one H100 generates the six sets in at most 10 minutes.

Usage (GPU):  python benchmarks/math_generation.py --model /path/to/model-or.gguf --out results/bench/math_generation
                  [--batch-size 512] [--cache static --compile]
Usage (CPU check): python benchmarks/math_generation.py --model smollm2-135m-instruct --out /tmp/mg --device cpu
                  --limit 4 --batch-size 4 --max-new-tokens 16 --threads 1
Files: <out>/math_generation.json (the figures, command, device, versions), <out>/summary.md (one table), and the
evaluator's own outputs in <out>/eval/ (math.json, math/<dataset>.jsonl samples).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a bare checkout
    sys.path.insert(0, str(REPO))

from experiments.process_env import apply_defaults  # noqa: E402  (needs the repo on sys.path)

TARGET_S = 600.0
TARGET_ITEMS = 8809   # the six sets in full: 1,319 + 5,000 + 254 + 1,042 + 220 + 974


def parse_args(argv=None):
    from eval.generation import CACHE_MODES
    from eval.math import PAPER_DATASETS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a local model folder, a .gguf file, a hub id or an alias")
    p.add_argument("--out", required=True, help="directory for the results (must not hold an earlier run's samples)")
    p.add_argument("--datasets", default=",".join(PAPER_DATASETS))
    p.add_argument("--limit", type=int, default=None, help="items per dataset (default: all)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="at most this many padded prompt tokens per batch (eval.math --max-batch-tokens)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--prompt-style", default="alpaca", choices=("alpaca", "chat", "chat_question"))
    p.add_argument("--cache", choices=CACHE_MODES, default="dynamic")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (needs --cache static)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="default: bf16, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (CPU check runs on shared cores)")
    args = p.parse_args(argv)
    for name in ("limit", "batch_size", "max_batch_tokens", "max_new_tokens", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.compile and args.cache != "static":
        p.error("--compile needs --cache static")
    if (Path(args.out) / "eval" / "math").exists():
        p.error(f"{args.out}/eval/math already holds samples: a resumed run would not be timed; choose a new --out")
    return args


def _spread(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "batches": 0}
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "batches": len(values)}


def main(argv=None) -> int:
    apply_defaults()
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from eval.math import load_for_math, load_items, resolve_tasks, select_subset
    from eval.math.generation import GenerationOptions, encode_prompts, generate_encoded, prepare_tokenizer
    from eval.math.prompts import adds_special_tokens, build_prompt
    from eval.math.runner import batches_by_length, evaluate_math
    from experiments.results import environment_info

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible (use --device cpu for a check run)", file=sys.stderr)
        return 2
    dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    tasks = resolve_tasks(args.datasets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    model, tokenizer = load_for_math(args.model, device=args.device, dtype=dtype)
    load_s = time.perf_counter() - started
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, cache=args.cache, compile=args.compile,
                                batch_rows=args.batch_size)

    # Warm-up: one batch of the longest prompts of the first dataset (the shape the run starts with).
    tok = prepare_tokenizer(tokenizer)
    warm_items = select_subset(load_items(tasks[0]), args.limit)
    prompts = [build_prompt(item, args.prompt_style, tok) for item in warm_items]
    encoded = sorted(encode_prompts(tok, prompts, adds_special_tokens(args.prompt_style)), key=len, reverse=True)
    warm_start = time.perf_counter()
    model.eval()
    first = batches_by_length([len(ids) for ids in encoded], args.batch_size, args.max_batch_tokens)[0]
    generate_encoded(model, tok, encoded[first.start:first.stop], options)
    warmup_s = time.perf_counter() - warm_start
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    batches: dict[str, list[float]] = {}

    def on_batch(name, batch):
        if batch.seconds > 0:
            batches.setdefault(name, []).append(batch.total_new_tokens / batch.seconds)

    results = evaluate_math(model, tokenizer, out_dir=out / "eval", model_name=args.model, tasks=tasks,
                            limit=args.limit, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                            max_new_tokens=args.max_new_tokens,
                            prompt_style=args.prompt_style, cache=args.cache, compile=args.compile,
                            extra_info={"device": args.device, "dtype": dtype}, on_batch=on_batch)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    items = sum(entry["total"] for entry in results["datasets"].values())
    per_dataset = {name: {"items": entry["total"], "new_tokens": entry["new_tokens"],
                          "generation_s": entry["generation_s"], "tokens_per_s": entry["tokens_per_s"],
                          "batch_tokens_per_s": _spread(batches.get(name, [])),
                          "accuracy_pct": round(entry["accuracy_pct"], 2)}
                   for name, entry in results["datasets"].items()}
    report = {
        "benchmark": "math_generation", "model": args.model, "dtype": dtype,
        "settings": {"batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens,
                     "max_new_tokens": args.max_new_tokens, "cache": args.cache,
                     "compile": args.compile, "prompt_style": args.prompt_style, "limit": args.limit,
                     "datasets": [task.name for task in tasks]},
        "items": items, "model_load_s": round(load_s, 1), "warmup_s": round(warmup_s, 1),
        "wall_s": round(results["wall_time_s"], 1), "generation_s": results["generation_s"],
        "new_tokens": results["new_tokens"], "tokens_per_s": results["tokens_per_s"],
        "items_per_s": round(items / results["wall_time_s"], 2) if results["wall_time_s"] else None,
        "peak_allocated_bytes": peak, "datasets": per_dataset,
        "paper_average_pct": results["paper_average_pct"],
        "target": {"items": TARGET_ITEMS, "max_wall_s": TARGET_S,
                   "met": items >= TARGET_ITEMS and results["wall_time_s"] <= TARGET_S},
        "environment": {**environment_info(args.device), "command": shlex.join([sys.executable, *sys.argv])},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "math_generation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(_table(report))
    print(_table(report))
    return 0


def _table(report: dict) -> str:
    lines = [f"# eval.math generation: {report['model']} on {report['environment']['device_name']}", "",
             f"batch {report['settings']['batch_size']}, max_new_tokens {report['settings']['max_new_tokens']}, "
             f"cache {report['settings']['cache']}, compile {report['settings']['compile']}, {report['dtype']}", "",
             "| dataset | items | new tokens | generation s | tokens/s | per-batch tokens/s median (min-max) | "
             "accuracy % |", "|---|---:|---:|---:|---:|---|---:|"]
    for name, d in report["datasets"].items():
        b = d["batch_tokens_per_s"]
        spread = f"{b['median']} ({b['min']}-{b['max']}, {b['batches']} batches)" if b["batches"] else "-"
        lines.append(f"| {name} | {d['items']} | {d['new_tokens']} | {d['generation_s']} | {d['tokens_per_s']} | "
                     f"{spread} | {d['accuracy_pct']} |")
    target = report["target"]
    lines += ["", f"Total: {report['items']} items, {report['new_tokens']} tokens in {report['wall_s']} s wall "
              f"({report['tokens_per_s']} tokens/s while generating); model load {report['model_load_s']} s, "
              f"warm-up {report['warmup_s']} s (not counted). Target {target['items']} items in <= "
              f"{target['max_wall_s']:.0f} s: {'met' if target['met'] else 'not met'}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
