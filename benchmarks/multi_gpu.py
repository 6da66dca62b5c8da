"""BAdam (or another method) on 1..N GPUs with FSDP2 or data parallel: per-GPU peak memory, tokens/s and scaling.

Launch one run per GPU count (each run < 5 minutes at the defaults):
    torchrun --nproc_per_node 1 benchmarks/multi_gpu.py --out results/bench/multi_gpu
    torchrun --nproc_per_node 2 benchmarks/multi_gpu.py --out results/bench/multi_gpu
    torchrun --nproc_per_node 4 benchmarks/multi_gpu.py --out results/bench/multi_gpu
    torchrun --nproc_per_node 4 benchmarks/multi_gpu.py --out results/bench/multi_gpu --model llama3-70b --steps 8
    # data parallel (train.distributed=ddp) against the plain single-GPU path, 5 alternating rounds, one block-epoch
    torchrun --nproc_per_node 2 benchmarks/multi_gpu.py --out results/bench/multi_gpu --mode ddp --compare-single 5 \
        --switch-every 1 --steps 35
    # the same with every decoder layer compiled (torch.compile, checkpointing and the rest eager; name gets _compiled)
    torchrun --nproc_per_node 2 benchmarks/multi_gpu.py --out results/bench/multi_gpu --mode ddp --compare-single 5 \
        --switch-every 1 --steps 35 --compile-layers
    # CPU check of the script itself (2 gloo processes, tiny Llama):
    torchrun --nproc_per_node 2 benchmarks/multi_gpu.py --out /tmp/bench_multi --tiny

Setting (the paper's): random-init Llama (experiments/model_configs.py) in bf16, built on the meta device, sharded
with fully_shard per layer + root, then each rank allocates and initialises only its shards (so 70B never sits on one
GPU); bf16 autocast, batch 2 per GPU of length 728 (random token ids, labels = inputs), non-reentrant gradient
checkpointing, AdamW lr 1e-6, clipping at 1.0, BAdam with one block per layer, ascending order, K = --switch-every (a
short K makes the run cross block switches, so the peak includes a switch). Steps after --warmup are timed (CUDA
synchronised), median reported.

Each run writes <out>/<model>_<method>_n<N>.json (per-rank figures, command, device, versions, date) and rewrites
<out>/summary.md from every JSON in <out>: scaling = (tokens/s on N GPUs) / (N x best single-GPU tokens/s) of the
same model and method. Predicted per-GPU bytes (BAdam) = (2 P + 16 P_block) / N: bf16 weights of all P parameters plus,
for the largest block, an fp32 master, fp32 gradient and two fp32 Adam moments, all sharded over N GPUs; the measured
peak adds activations, the all-gathered layer(s) and the logits.

The best single-GPU tokens/s is the highest of the same model, method and batch in <out>: a 1-GPU FSDP2 run or the
median of the single-GPU phases of a `--mode ddp --compare-single R` run (benchmarks/multi_gpu_ddp.py), which are
measured alternately with the data-parallel phases in the same processes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.process_env import apply_defaults  # noqa: E402  (needs the repo on sys.path)

apply_defaults()  # the harness's allocator setting, before torch is imported, so both measure alike

import torch  # noqa: E402

from experiments import distributed as dist_mod  # noqa: E402
from badam.data_parallel import MAX_IN_FLIGHT  # noqa: E402
from experiments.layer_compile import BACKENDS, compile_method_layers  # noqa: E402
from experiments.measure import synchronize  # noqa: E402
from badam.hf import CHECKPOINTING_POLICIES  # noqa: E402
from experiments.memory_model import sharded_bytes_per_device  # noqa: E402
from experiments.repeats import band  # noqa: E402
from experiments.results import source_commit  # noqa: E402
from multi_gpu_ddp import (best_single, bind_to_cpu_share, combine_replicated, host_facts,  # noqa: E402
                           replicated_table, run_replicated, start_profiler, timed_steps, utilization, write_profile)
from multi_gpu_diagnostics import checkpointing_note, compile_backend, compiled_note, compiled_suffix  # noqa: E402

GIB = 1024 ** 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the JSON results and summary.md")
    p.add_argument("--model", default="llama3-8b", help="random architecture (experiments/model_configs.py)")
    p.add_argument("--method", default="badam", help="registered method (baselines/registry.py)")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per GPU per step")
    p.add_argument("--seq-len", type=int, default=728)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps in total, warm-up included")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--switch-every", type=int, default=5, help="BAdam's K (steps per block)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    p.add_argument("--checkpointing", choices=CHECKPOINTING_POLICIES, default="non-reentrant",
                   help="badam.hf.enable_block_checkpointing's policy (badam/checkpointing.py): non-reentrant (every "
                        "layer, the harness's; default), block (none below the active block), block-reentrant (also "
                        "reentrant above it), block-graphed / block-reentrant-graphed (the same with CUDA graphs, "
                        "badam/layer_graphs.py); the name gets _ckpt-<policy> for all but non-reentrant")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--separate-ends", action="store_true",
                        help="give the embeddings and the output head FSDP groups of their own (less memory per GPU, "
                             "slower in our runs; see experiments.distributed.shard_model)")
    layout.add_argument("--ends-in-root", action="store_true",
                        help="embeddings and head in the root group (the default; the flag names it explicitly)")
    p.add_argument("--keep-gathered", action="store_true",
                   help="layers keep their all-gathered weights from forward to backward (reshard_after_forward="
                        "False): no second all-gather in backward, but every GPU then holds the whole bf16 model")
    p.add_argument("--keep-gathered-layers", type=int, default=0, metavar="M",
                   help="up to M of the layers backward reaches (BAdam: the active layer and above) keep their "
                        "gathered weights from forward to backward, no second all-gather (-1: all; "
                        "experiments/fsdp_gather.py)")
    p.add_argument("--forward-prefetch", type=int, default=0, metavar="N",
                   help="issue the all-gathers of the next N layers ahead in forward (0: FSDP2's default; see "
                        "experiments.distributed.shard_model)")
    p.add_argument("--profile-dir", default=None,
                   help="also write rank 0's torch.profiler table (CUDA kernels incl. NCCL) of the last 3 steps here")
    p.add_argument("--mode", choices=("fsdp2", "ddp"), default="fsdp2",
                   help="fsdp2: the model sharded (default); ddp: every GPU holds the whole model and only gradients "
                        "travel, as train.distributed=ddp (benchmarks/multi_gpu_ddp.py)")
    p.add_argument("--compare-single", type=int, default=0, metavar="R",
                   help="ddp: R alternating rounds of rank 0 alone (the plain single-GPU path) and all ranks")
    p.add_argument("--reduce-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="ddp: dtype of the gradient all-reduce (train.ddp_reduce_dtype)")
    p.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT, metavar="B",
                   help=f"ddp: bucket all-reduces pending during backward before the compute stream waits for the "
                        f"oldest (default {MAX_IN_FLIGHT}; name gets _inflightB otherwise)")
    p.add_argument("--alone-phase", action="store_true",
                   help="ddp with --compare-single: each round also runs every rank on its own at the same time, "
                        "nothing averaged (host contention without communication; name gets _alone)")
    p.add_argument("--single-every-rank", action="store_true",
                   help="ddp with --compare-single: the single phase runs on every rank in turn, not only rank 0 "
                        "(each GPU's own baseline; name gets _solo)")
    p.add_argument("--cpu-affinity", choices=("none", "split"), default="none",
                   help="split: each local rank is pinned to its own share of the machine's physical cores before "
                        "anything starts (name gets _pinned); none: the OS places the threads (default)")
    p.add_argument("--compile-layers", nargs="?", const="inductor", default=None, choices=BACKENDS,
                   metavar="BACKEND",
                   help="compile every decoder layer's forward with torch.compile (BACKEND, default inductor; "
                        "aot_eager/eager check Dynamo alone), checkpointing and everything else eager "
                        "(experiments/layer_compile.py); name gets _compiled (_compiled-BACKEND)")
    p.add_argument("--overlap-update", action="store_true",
                   help="--mode ddp, BAdam: the update (and the wait for the all-reduce) on a side CUDA stream, "
                        "overlapping the next forward (BlockOptimizer.overlap_update; badam/overlap.py), clipping "
                        "inside it; both the single and the ddp phases")
    p.add_argument("--shard-frozen", action="store_true",
                   help="--mode ddp, BAdam: each rank keeps 1/N of every frozen block, gathered per layer for its "
                        "forward and recomputation (BlockOptimizer.shard_frozen_blocks; badam/frozen_shards.py); "
                        "the data-parallel phases only, the single phase stays the plain path; without "
                        "--compare-single the model is built on meta and placed layer by layer (70B); name gets "
                        "_shardfrozen")
    p.add_argument("--shard-prefetch", type=int, default=1, metavar="N",
                   help="--shard-frozen: units whose all-gather is issued ahead (default 1; name gets -pN otherwise)")
    p.add_argument("--shard-gather-stream", choices=("side", "compute"), default="compute",
                   help="--shard-frozen: issue the prefetched all-gathers from the compute stream (default) or from "
                        "a side CUDA stream (name gets -sidestream)")
    p.add_argument("--tag", default="", help="appended to the result name (repeats of one setting side by side)")
    p.add_argument("--rewrite-summary", action="store_true",
                   help="only rewrite <out>/summary.md from the JSONs in <out> (e.g. after merging folders); no run")
    p.add_argument("--tiny", action="store_true", help="CPU/gloo check: tiny-llama, length 32, 4 steps")
    args = p.parse_args(argv)
    if args.mode == "ddp" and (args.separate_ends or args.keep_gathered or args.forward_prefetch
                               or args.keep_gathered_layers):
        p.error("--separate-ends, --keep-gathered(-layers) and --forward-prefetch are FSDP2 layouts; not with "
                "--mode ddp")
    if args.no_checkpointing and args.checkpointing != "non-reentrant":
        p.error("--checkpointing chooses how layers checkpoint: not with --no-checkpointing")
    if args.overlap_update and (args.mode != "ddp" or args.method not in ("badam", "bsgd")):
        p.error("--overlap-update is BlockOptimizer's (methods badam, bsgd) and is measured with --mode ddp")
    if args.shard_frozen and (args.mode != "ddp" or args.method not in ("badam", "bsgd") or args.overlap_update
                              or "graphed" in args.checkpointing):
        p.error("--shard-frozen is BlockOptimizer's (methods badam, bsgd) under --mode ddp, without --overlap-update "
                "and without the graphed checkpointing policies (gathered weights have no fixed address)")
    if args.shard_prefetch < 0:
        p.error(f"--shard-prefetch must be >= 0; got {args.shard_prefetch}")
    if args.shard_frozen:  # what shard_frozen_blocks gets (and the JSON records)
        args.shard_frozen = {"prefetch": args.shard_prefetch, "gather_stream": args.shard_gather_stream == "side"}
    if args.max_in_flight < 1:
        p.error(f"--max-in-flight must be >= 1; got {args.max_in_flight}")
    if args.max_in_flight != MAX_IN_FLIGHT and args.mode != "ddp":
        p.error("--max-in-flight paces ddp's gradient all-reduces: it needs --mode ddp")
    if args.keep_gathered and args.keep_gathered_layers:
        p.error("--keep-gathered keeps every layer gathered; --keep-gathered-layers chooses some: use one")
    if args.keep_gathered_layers < -1:
        p.error(f"--keep-gathered-layers must be >= -1; got {args.keep_gathered_layers}")
    if args.compare_single and args.mode != "ddp":
        p.error("--compare-single alternates single-GPU and data-parallel phases: it needs --mode ddp")
    if args.compare_single < 0:
        p.error(f"--compare-single must be >= 0; got {args.compare_single}")
    if (args.alone_phase or args.single_every_rank) and not args.compare_single:
        p.error("--alone-phase and --single-every-rank add phases to the rounds of --compare-single R (with --mode "
                "ddp)")
    if args.tiny:
        args.model = "tiny-llama"
        args.seq_len = min(args.seq_len, 32)
        args.steps, args.warmup, args.switch_every = min(args.steps, 4), 1, 2
    if args.forward_prefetch < 0:
        p.error(f"--forward-prefetch must be >= 0; got {args.forward_prefetch}")
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) so that some steps are timed")
    return args


def build_method(args):
    from baselines.registry import get_method_class

    cls = get_method_class(args.method)
    if args.method in ("badam", "bsgd"):
        options = cls.Options(switch_block_every=args.switch_every, switch_mode="ascending", start_block=0, seed=0)
    else:
        options = cls.Options()
    return cls(options, lr=args.lr, weight_decay=0.0)


def allocated(device) -> int | None:
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None


def block_sizes(method, model) -> dict:
    """Total parameters P, and the largest block's parameters for BAdam (global counts, not per rank)."""
    from badam.partition import assign_to_blocks

    named = list(model.named_parameters())  # tied weights appear once
    total = sum(p.numel() for _, p in named)
    prefixes = getattr(method.optimizer, "block_prefix_list", None)
    if not prefixes:
        return {"total_params": total, "largest_block_params": None, "num_blocks": None}
    blocks = assign_to_blocks([n for n, _ in named], prefixes)
    largest = max(sum(named[i][1].numel() for i in block) for block in blocks)
    return {"total_params": total, "largest_block_params": largest, "num_blocks": len(blocks)}


def predicted(method_name: str, sizes: dict, world: int):
    """The shared analytic model (experiments/memory_model.py): weights and trained-parameter states sharded."""
    return sharded_bytes_per_device(method_name, sizes["total_params"], sizes["largest_block_params"], world)


def run(args, ctx) -> dict:
    method = build_method(args)
    dist_mod.check_method_supported(method.name)
    synchronize(ctx.device)
    t0 = time.perf_counter()
    model, _ = dist_mod.load_sharded_random_model(
        f"random:{args.model}", ctx, dtype="bf16", gradient_checkpointing=not args.no_checkpointing,
        checkpointing_policy=args.checkpointing, tokenizer=False, seed=0, prepare=method.prepare_model,
        separate_ends=args.separate_ends,
        reshard_after_forward=not args.keep_gathered, forward_prefetch=args.forward_prefetch,
        keep_gathered_layers=args.keep_gathered_layers)
    compiled = compile_method_layers(model, args.compile_layers, method) if args.compile_layers else None
    method.build_optimizer(model)
    model.train()
    model.config.use_cache = False
    synchronize(ctx.device)
    init_s = time.perf_counter() - t0
    weights_bytes = allocated(ctx.device)
    sizes = block_sizes(method, model)
    gen = torch.Generator().manual_seed(1000 + ctx.rank)  # each rank its own batch (data parallel)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    profiler = None

    def profile(step: int) -> None:
        nonlocal profiler
        if args.profile_dir and ctx.is_main and step == args.steps - 3:
            profiler = start_profiler(ctx.device)

    steps = timed_steps(args, ctx, model, method, gen, profile)
    if profiler is not None:
        write_profile(profiler, Path(args.profile_dir), result_stem(args, ctx.world_size), ctx.device)
    peak = int(torch.cuda.max_memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None
    reserved = int(torch.cuda.max_memory_reserved(ctx.device)) if ctx.device.type == "cuda" else None
    split = method.memory_split(model)
    return {"rank": ctx.rank, "init_s": init_s, "weights_bytes": weights_bytes, "peak_allocated_bytes": peak,
            "peak_reserved_bytes": reserved, "memory_split_end": split, "steps": steps, "sizes": sizes,
            "host": host_facts(), "compile_layers": compiled.stats() if compiled else None}


def nccl_version() -> str:
    version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def device_name(ctx) -> str | None:
    return torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None


def environment(ctx) -> dict:
    import transformers

    cuda = ctx.device.type == "cuda"
    return {"command": "torchrun --nproc_per_node {} {}".format(ctx.world_size, " ".join(sys.argv)),
            "device": torch.cuda.get_device_name(ctx.device) if cuda else platform.processor() or "cpu",
            "world_size": ctx.world_size, "backend": ctx.backend, "torch": torch.__version__,
            "cuda": torch.version.cuda, "nccl": nccl_version() if cuda else None,
            "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
            "transformers": transformers.__version__, "python": platform.python_version(),
            "hostname": socket.gethostname(), "git_commit": source_commit()["git_commit"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def combine(args, ctx, per_rank: list[dict]) -> dict:
    timed = [max(r["steps"][i]["ms"] for r in per_rank) for i in range(args.warmup, args.steps)]  # slowest rank
    step_ms = statistics.median(timed)
    phases = {f"median_{phase}_ms": statistics.median(
        max(r["steps"][i][f"{phase}_ms"] for r in per_rank) for i in range(args.warmup, args.steps))
        for phase in ("forward", "backward", "update")}
    tokens_per_step = args.batch_size * args.seq_len * ctx.world_size
    sizes = per_rank[0]["sizes"]
    estimate = predicted(args.method, sizes, ctx.world_size)
    peaks = [r["peak_allocated_bytes"] for r in per_rank]
    return {
        "model": args.model, "method": args.method, "mode": "fsdp2", "gpus": ctx.world_size,
        "batch_per_gpu": args.batch_size,
        "seq_len": args.seq_len, "gradient_checkpointing": not args.no_checkpointing,
        "checkpointing": None if args.no_checkpointing else args.checkpointing, "steps": args.steps,
        "warmup": args.warmup, "switch_every": args.switch_every, "median_step_ms": step_ms, **phases,
        "fsdp_groups": ("layers + embeddings + head + root" if args.separate_ends
                        else "layers + root (embeddings and head in the root)")
        + (", layers kept gathered after forward" if args.keep_gathered else "")
        + ((f", up to {args.keep_gathered_layers} layers" if args.keep_gathered_layers > 0 else ", every layer")
           + " reached by backward kept gathered" if args.keep_gathered_layers else "")
        + (f", forward prefetch {args.forward_prefetch}" if args.forward_prefetch else "")
        + compiled_note(args.compile_layers) + checkpointing_note(args.checkpointing)
        + (f" [{args.tag}]" if args.tag else ""),
        "tag": args.tag or None, "compile_layers": per_rank[0]["compile_layers"],
        "tokens_per_s": tokens_per_step / (step_ms / 1000.0),
        "tokens_per_s_per_gpu": tokens_per_step / (step_ms / 1000.0) / ctx.world_size,
        "peak_allocated_bytes_max": max(peaks) if all(p is not None for p in peaks) else None,
        "peak_allocated_bytes_per_rank": peaks,
        "peak_reserved_bytes_per_rank": [r["peak_reserved_bytes"] for r in per_rank],
        "weights_bytes_per_rank": [r["weights_bytes"] for r in per_rank],
        "predicted_bytes_per_gpu": None if estimate is None else estimate.bytes,
        "predicted_formula": None if estimate is None else estimate.formula,
        **sizes, "init_s_max": max(r["init_s"] for r in per_rank),
        "losses_rank0": [s["loss"] for s in per_rank[0]["steps"]],
        **utilization([r["steps"] for r in per_rank], args.warmup, device_name(ctx)),
        "per_rank": per_rank, "environment": environment(ctx),
    }


def shard_suffix(options: dict | bool) -> str:
    """_shardfrozen for --shard-frozen (parse_args makes it shard_frozen_blocks' options), with -pN / -sidestream
    where those are not the defaults; "" without it (False)."""
    if not options:
        return ""
    return "_shardfrozen" + ("" if options.get("prefetch", 1) == 1 else f"-p{options['prefetch']}") \
        + ("-sidestream" if options.get("gather_stream") else "")


def result_stem(args, world_size: int) -> str:
    batch = "" if args.batch_size == 2 else f"_b{args.batch_size}"  # 2 per GPU is the paper's setting
    tag = f"_{args.tag}" if args.tag else ""
    pinned = ("_pinned" if args.cpu_affinity == "split" else "") + compiled_suffix(args.compile_layers) \
        + ("" if args.checkpointing == "non-reentrant" else f"_ckpt-{args.checkpointing}") \
        + ("_overlap" if args.overlap_update else "") + shard_suffix(args.shard_frozen)
    if args.mode == "ddp":
        phases = (f"_vs1x{args.compare_single}" if args.compare_single else "") \
            + ("_solo" if args.single_every_rank else "") + ("_alone" if args.alone_phase else "")
        inflight = "" if args.max_in_flight == MAX_IN_FLIGHT else f"_inflight{args.max_in_flight}"
        return f"{args.model}_{args.method}_n{world_size}{batch}_ddp_{args.reduce_dtype}{inflight}{phases}{pinned}{tag}"
    layout = ("_separate-ends" if args.separate_ends else "") + ("_keep-gathered" if args.keep_gathered else "") \
        + (f"_keep{args.keep_gathered_layers if args.keep_gathered_layers > 0 else 'all'}"
           if args.keep_gathered_layers else "") \
        + (f"_prefetch{args.forward_prefetch}" if args.forward_prefetch else "")
    return f"{args.model}_{args.method}_n{world_size}{batch}{layout}{pinned}{tag}"


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f}"


def summary_markdown(out: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*_n*.json"))]
    results.sort(key=lambda r: (r["model"], r["method"], r.get("fsdp_groups", ""), r["gpus"]))
    sharded = [r for r in results if r.get("mode", "fsdp2") == "fsdp2"]
    lines = ["# Multi-GPU benchmark"]
    if sharded:
        lines += ["", "## FSDP2 (`--mode fsdp2`, as `train.distributed=fsdp2`)", "",
                  "| model | method | FSDP groups | GPUs | batch/GPU x len | step ms (median) | forward / backward / "
                  "update ms | tokens/s | tokens/s/GPU | scaling vs best 1-GPU | peak GiB/GPU (max) | "
                  "predicted GiB/GPU | weights GiB/GPU | MFU |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sharded:
        base = best_single(results, r)
        eff = f"{r['tokens_per_s'] / (r['gpus'] * base):.2f}" if base else "n/a (no 1-GPU run)"
        weights = max((w for w in r["weights_bytes_per_rank"] if w is not None), default=None)
        phases = " / ".join(f"{r[f'median_{p}_ms']:.0f}" if r.get(f"median_{p}_ms") is not None else "-"
                            for p in ("forward", "backward", "update"))
        lines.append(f"| {r['model']} | {r['method']} | {r.get('fsdp_groups', 'layers + root')} | {r['gpus']} | "
                     f"{r['batch_per_gpu']} x {r['seq_len']} | {r['median_step_ms']:.0f} | {phases} | "
                     f"{r['tokens_per_s']:.0f} | {r['tokens_per_s_per_gpu']:.0f} | {eff} | "
                     f"{_gib(r['peak_allocated_bytes_max'])} | {_gib(r['predicted_bytes_per_gpu'])} | "
                     f"{_gib(weights)} | {'n/a' if r.get('mfu') is None else format(r['mfu'], '.3f')} |")
    lines += paired_with_plain(results)
    lines += replicated_table(results)
    lines += ["", "Runs:", ""]
    for r in results:
        env = r["environment"]
        lines.append(f"- `{env['command']}` on {env['world_size']} x {env['device']}; torch {env['torch']} (CUDA "
                     f"{env['cuda']}, NCCL {env['nccl']}), transformers {env['transformers']}, {env['date']}")
    lines += ["", "Predicted = (2 P + 16 P_block) / N for BAdam (18 P / N for Adam); the measured peak also holds "
                  "activations, the all-gathered layers and the logits. Scaling = tokens/s on N GPUs / (N x the best "
                  "single-GPU tokens/s of the same model, method and batch in this folder: a 1-GPU FSDP2 run or the "
                  "median of a ddp run's single-GPU phases, measured alternately in the same processes)."]
    return "\n".join(lines) + "\n"


def paired_with_plain(results: list[dict]) -> list[str]:
    """FSDP2 runs against the plain path measured right before them: an FSDP2 run and a `--mode ddp
    --compare-single` run with the same --tag, model, method, batch, compiled layers and checkpointing policy form one
    repeat (scripts/gpu/issue18_ddp2.sh fsdp1 alternates them). Ratio = FSDP2 tokens/s / (N x that run's median
    single-GPU tokens/s); median [min-max] over the repeats. A host-bound step drifts between minutes-apart runs, so
    this pairing is the fair comparison where the best-of-folder baseline is not."""
    def tagged(r: dict) -> tuple[str | None, str]:  # (tag, FSDP groups without it); older JSONs: from the groups
        layout = r.get("fsdp_groups", "layers + root")
        tag = r.get("tag") or (layout[layout.rindex(" [") + 2:-1] if layout.endswith("]") else None)
        return tag, layout.removesuffix(f" [{tag}]") if tag else layout

    def policy(r: dict) -> str | None:  # both sides checkpoint alike; JSONs from before the policies: the default
        return r.get("checkpointing", "non-reentrant")

    same = ("model", "method", "seq_len", "batch_per_gpu")
    plain = {(*(r.get(k) for k in same), compile_backend(r), policy(r), r["tag"]): r["single_tokens_per_s"]["median"]
             for r in results
             if r.get("mode") == "ddp" and r.get("tag") and r.get("single_tokens_per_s")}
    groups: dict[tuple, list[tuple[str, float]]] = {}
    for r in results:
        tag, layout = tagged(r)
        fsdp2 = r.get("mode", "fsdp2") == "fsdp2"
        base = plain.get((*(r.get(k) for k in same), compile_backend(r), policy(r), tag)) if fsdp2 and tag else None
        if base:
            what = (r["model"], r["method"], layout, r["gpus"], r["batch_per_gpu"], r["seq_len"])
            groups.setdefault(what, []).append((tag, r["tokens_per_s"] / (r["gpus"] * base)))
    if not groups:
        return []
    lines = ["", "FSDP2 against the plain path of the same repeat (same --tag; tokens/s ratio, median [min-max]):", "",
             "| model | method | FSDP groups | GPUs | batch/GPU x len | repeats | FSDP2 / plain | per repeat |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, method, layout, gpus, batch, seq_len), pairs in sorted(groups.items()):
        spread = band(ratio for _, ratio in pairs)
        each = ", ".join(f"{tag} {ratio:.3f}" for tag, ratio in sorted(pairs))
        lines.append(f"| {model} | {method} | {layout} | {gpus} | {batch} x {seq_len} | {spread.n} | "
                     f"{spread.median:.3f} [{spread.low:.3f}-{spread.high:.3f}] | {each} |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rewrite_summary:
        out = Path(args.out)
        if not any(out.glob("*_n*.json")):
            print(f"--rewrite-summary: no result JSONs (*_n*.json) in {out}", file=sys.stderr)
            return 2
        (out / "summary.md").write_text(summary_markdown(out))
        print(f"wrote {out / 'summary.md'}")
        return 0
    if args.cpu_affinity == "split":  # before the process group's and CUDA's threads start (they inherit it)
        cpus = bind_to_cpu_share(int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        print(f"rank {os.environ.get('RANK', 0)}: pinned to CPUs {cpus}", flush=True)
    ctx = dist_mod.init_distributed("cpu" if args.tiny else "cuda")
    try:
        replicated = args.mode == "ddp"
        stem = result_stem(args, ctx.world_size)
        mine = run_replicated(args, ctx, build_method, stem) if replicated else run(args, ctx)
        per_rank = dist_mod.gather_objects(mine, ctx)
        if ctx.is_main:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            if replicated:
                result = {**combine_replicated(args, ctx, per_rank, device_name(ctx)), "environment": environment(ctx)}
            else:
                result = combine(args, ctx, per_rank)
            path = out / f"{result_stem(args, ctx.world_size)}.json"
            tmp = path.with_suffix(".json.tmp")
            # one line: every step of every phase and rank is in it (0.3 MB indented at 35 steps x 6 phases), and
            # committed results travel to the GPU machine with the tree; summary.md is the readable view
            tmp.write_text(json.dumps(result, separators=(",", ":")) + "\n")
            os.replace(tmp, path)
            (out / "summary.md").write_text(summary_markdown(out))
            if replicated:
                scaling = result.get("scaling_of_medians")
                print(f"wrote {path} and {out / 'summary.md'}: ddp {result['ddp_tokens_per_s']['median']:.0f} "
                      f"tokens/s" + (f", scaling {scaling:.3f} against the single-GPU phases" if scaling else ""),
                      flush=True)
            else:
                print(f"wrote {path} and {out / 'summary.md'}: {result['tokens_per_s']:.0f} tokens/s, peak "
                      f"{_gib(result['peak_allocated_bytes_max'])} GiB/GPU (predicted "
                      f"{_gib(result['predicted_bytes_per_gpu'])})", flush=True)
        ctx.barrier()
    finally:
        dist_mod.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
