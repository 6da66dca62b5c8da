"""The data-parallel side of benchmarks/multi_gpu.py (`--mode ddp`), and the training-step loop both modes time.

`--mode ddp`: every rank builds the whole random-init model on its GPU (same seed; rank 0's weights are broadcast
anyway), and the method's gradients are averaged as under `train.distributed=ddp` (experiments/ddp.py; BAdam: only the
active block's gradient travels). `--compare-single R` alternates R rounds of two phases in the same processes:
  single: rank 0 trains alone with no process group attached (the plain one-GPU path of the harness: the same model,
          method and step as `train.distributed=none`), the other ranks wait at a barrier;
  ddp:    every rank trains, gradients averaged.
Each phase builds a fresh optimizer (BAdam restarts its schedule), runs --warmup untimed steps and then the timed
ones; scaling = ddp tokens/s / (N x single tokens/s), per round and for the medians, so the single-GPU baseline is
measured on the same GPU, in the same process, in the same minutes.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

GIB = 1024 ** 3


def timed_steps(args, ctx, model, method, gen, profile=None) -> list[dict]:
    """args.steps optimizer steps of batch args.batch_size x args.seq_len random ids (labels = inputs) under bf16
    autocast, each timed with the harness's StepTimer (CUDA events per phase); `profile(step)` is called before each
    step (the caller starts/stops a profiler there)."""
    from experiments.measure import StepTimer

    vocab = model.config.vocab_size
    autocast = torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)
    timer = StepTimer(ctx.device)
    steps = []
    for step in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen).to(ctx.device)
        if profile is not None:
            profile(step)
        timer.start_step()
        with timer.phase("forward"), autocast:
            loss = model(input_ids=ids, labels=ids).loss
        with timer.phase("backward"):
            method.backward(loss)
        with timer.phase("update"):
            norm = method.clip_and_norm(1.0)
            method.step()
            method.zero_grad()
        times = timer.end_step()
        steps.append({"step": step + 1, "ms": times["step"], "forward_ms": times["forward"],
                      "backward_ms": times["backward"], "update_ms": times["update"], "loss": float(loss.detach()),
                      "grad_norm": norm, **{k: v for k, v in method.describe().items() if k == "active_block"}})
        if ctx.is_main:
            print(f"step {step + 1}/{args.steps}: {steps[-1]['ms']:.0f} ms, loss {steps[-1]['loss']:.4f}", flush=True)
    return steps


def start_profiler(device):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    profiler.__enter__()
    return profiler


def write_profile(profiler, folder: Path, stem: str, device) -> None:
    profiler.__exit__(None, None, None)
    folder.mkdir(parents=True, exist_ok=True)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=30)
    (folder / f"{stem}_profile.txt").write_text(f"torch.profiler, rank 0, the last 3 steps, sorted by {sort}\n\n"
                                                f"{table}\n")


def _release(method, data_parallel) -> None:
    """Drop a phase's optimizer, masters, hooks and gradients so the next phase starts from the weights alone."""
    if data_parallel is not None:
        data_parallel.sync.detach()
    if hasattr(method.optimizer, "release"):  # BlockOptimizer
        method.optimizer.release()
    masters = getattr(method, "master_weights", None)
    if masters is not None:
        masters.release()
    method.optimizer = None


def _phase(kind: str, round_: int, args, ctx, model, method, gen, profile_stem: str | None = None) -> dict:
    """One phase: fresh optimizer (and gradient averaging for ddp), args.steps timed steps, everything released.
    profile_stem: rank 0 writes the torch.profiler table of the last 3 steps under args.profile_dir."""
    from experiments import ddp as ddp_mod
    from experiments.measure import synchronize

    method.build_optimizer(model)
    data_parallel = ddp_mod.DataParallel(model, method, ctx, args.reduce_dtype) if kind == "ddp" else None
    synchronize(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    if ctx.is_main:
        print(f"--- round {round_ + 1}, {kind} ({ctx.world_size if kind == 'ddp' else 1} GPU)", flush=True)
    profiler = None

    def profile(step: int) -> None:
        nonlocal profiler
        if profile_stem and ctx.is_main and step == args.steps - 3:
            profiler = start_profiler(ctx.device)

    steps = timed_steps(args, ctx, model, method, gen, profile)
    if profiler is not None:
        write_profile(profiler, Path(args.profile_dir), profile_stem, ctx.device)
    peak = int(torch.cuda.max_memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None
    split = method.memory_split(model)
    _release(method, data_parallel)
    model.zero_grad(set_to_none=True)
    return {"kind": kind, "round": round_ + 1, "steps": steps, "peak_allocated_bytes": peak,
            "memory_split_end": split}


def run_replicated(args, ctx, build_method, stem: str) -> dict:
    """One rank's part of a --mode ddp run (see the module docstring); with args.profile_dir, the last round's
    phases are profiled (<stem>_single / <stem>_ddp)."""
    from experiments import ddp as ddp_mod
    from experiments.measure import synchronize
    from experiments.models import load_model

    method = build_method(args)
    ddp_mod.check_method_supported(method.name)
    synchronize(ctx.device)
    t0 = time.perf_counter()
    model, _ = load_model(f"random:{args.model}", dtype="bf16", device=str(ctx.device),
                          gradient_checkpointing=not args.no_checkpointing, tokenizer=False, seed=0)
    model = ddp_mod.replicate(method.prepare_model(model), ctx)
    model.train()
    model.config.use_cache = False
    synchronize(ctx.device)
    init_s = time.perf_counter() - t0
    weights = int(torch.cuda.memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None
    gen = torch.Generator().manual_seed(1000 + ctx.rank)
    phases = []
    rounds = max(1, args.compare_single)
    for round_ in range(rounds):
        last = args.profile_dir and round_ == rounds - 1
        if args.compare_single:
            if ctx.is_main:
                phases.append(_phase("single", round_, args, ctx, model, method, gen, last and f"{stem}_single"))
            ctx.barrier()
        phases.append(_phase("ddp", round_, args, ctx, model, method, gen, last and f"{stem}_ddp"))
    total = sum(p.numel() for p in model.parameters())
    return {"rank": ctx.rank, "init_s": init_s, "weights_bytes": weights, "phases": phases,
            "sizes": {"total_params": total}}


def _phase_summary(args, phase_per_rank: list[dict], gpus: int) -> dict:
    timed = range(args.warmup, args.steps)
    step_ms = statistics.median(max(p["steps"][i]["ms"] for p in phase_per_rank) for i in timed)
    phases = {f"median_{name}_ms": statistics.median(max(p["steps"][i][f"{name}_ms"] for p in phase_per_rank)
                                                     for i in timed) for name in ("forward", "backward", "update")}
    tokens = args.batch_size * args.seq_len * gpus
    peaks = [p["peak_allocated_bytes"] for p in phase_per_rank]
    return {"kind": phase_per_rank[0]["kind"], "round": phase_per_rank[0]["round"], "gpus": gpus,
            "median_step_ms": step_ms, **phases, "tokens_per_s": tokens / (step_ms / 1000.0),
            "peak_allocated_bytes_max": max(peaks) if all(x is not None for x in peaks) else None,
            "losses_rank0": [s["loss"] for s in phase_per_rank[0]["steps"]]}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def combine_replicated(args, ctx, per_rank: list[dict]) -> dict:
    """The run's JSON: per-phase figures (step time: slowest rank), medians and spreads over the rounds, scaling."""
    rank0 = per_rank[0]["phases"]
    ddp_index = 0
    summaries = []
    for phase in rank0:
        if phase["kind"] == "single":
            summaries.append(_phase_summary(args, [phase], 1))
            continue
        others = [[p for p in r["phases"] if p["kind"] == "ddp"][ddp_index] for r in per_rank]
        summaries.append(_phase_summary(args, others, ctx.world_size))
        ddp_index += 1
    ddp = [s for s in summaries if s["kind"] == "ddp"]
    single = [s for s in summaries if s["kind"] == "single"]
    result = {
        "model": args.model, "method": args.method, "mode": "ddp", "gpus": ctx.world_size,
        "batch_per_gpu": args.batch_size, "seq_len": args.seq_len, "gradient_checkpointing": not args.no_checkpointing,
        "steps": args.steps, "warmup": args.warmup, "switch_every": args.switch_every,
        "reduce_dtype": args.reduce_dtype, "rounds": max(1, args.compare_single), "phases": summaries,
        "ddp_tokens_per_s": _spread([s["tokens_per_s"] for s in ddp]),
        "ddp_median_step_ms": statistics.median(s["median_step_ms"] for s in ddp),
        **{f"ddp_median_{name}_ms": statistics.median(s[f"median_{name}_ms"] for s in ddp)
           for name in ("forward", "backward", "update")},
        "ddp_peak_allocated_bytes_max": max((s["peak_allocated_bytes_max"] or 0) for s in ddp) or None,
        "weights_bytes_per_rank": [r["weights_bytes"] for r in per_rank],
        "init_s_max": max(r["init_s"] for r in per_rank), "total_params": per_rank[0]["sizes"]["total_params"],
        "per_rank": per_rank,
    }
    if single:
        result["single_tokens_per_s"] = _spread([s["tokens_per_s"] for s in single])
        result["single_peak_allocated_bytes_max"] = max((s["peak_allocated_bytes_max"] or 0) for s in single) or None
        # per round: this round's ddp phase against the single phase just before it
        result["scaling_per_round"] = _spread([d["tokens_per_s"] / (ctx.world_size * s["tokens_per_s"])
                                               for s, d in zip(single, ddp)])
        result["scaling_of_medians"] = result["ddp_tokens_per_s"]["median"] / (
            ctx.world_size * result["single_tokens_per_s"]["median"])
    return result


def best_single(results: list[dict], like: dict) -> float | None:
    """The best single-GPU tokens/s measured in the same folder for the same model, method, batch and length: a
    1-GPU FSDP2 run or the median of a ddp run's single phases."""
    same = [r for r in results if all(r.get(k) == like.get(k) for k in ("model", "method", "seq_len", "batch_per_gpu"))]
    found = [r["tokens_per_s"] for r in same if r.get("mode", "fsdp2") == "fsdp2" and r["gpus"] == 1]
    found += [r["single_tokens_per_s"]["median"] for r in same if r.get("single_tokens_per_s")]
    return max(found) if found else None


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f}"


def replicated_table(results: list[dict]) -> list[str]:
    rows = [r for r in results if r.get("mode") == "ddp"]
    if not rows:
        return []
    lines = ["", "## Data parallel (`--mode ddp`, as `train.distributed=ddp`) against the plain single-GPU path", "",
             "Alternating rounds in the same processes: rank 0 alone without a process group (single), then every "
             "rank data parallel (ddp). Median [min-max] over the rounds.", "",
             "| model | method | GPUs | batch/GPU x len | reduce | rounds | single tokens/s | ddp tokens/s | "
             "scaling per round | scaling of medians | ddp forward / backward / update ms | "
             "peak GiB/GPU single / ddp |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def spread(s, fmt="{:.0f}"):
        return "n/a" if not s else f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"

    for r in sorted(rows, key=lambda r: (r["model"], r["method"], r["batch_per_gpu"], r["gpus"])):
        phases = " / ".join(f"{r[f'ddp_median_{p}_ms']:.0f}" for p in ("forward", "backward", "update"))
        scaling = f"{r['scaling_of_medians']:.3f}" if "scaling_of_medians" in r else "n/a"
        lines.append(f"| {r['model']} | {r['method']} | {r['gpus']} | {r['batch_per_gpu']} x {r['seq_len']} | "
                     f"{r['reduce_dtype']} | {r['rounds']} | {spread(r.get('single_tokens_per_s'))} | "
                     f"{spread(r['ddp_tokens_per_s'])} | {spread(r.get('scaling_per_round'), '{:.3f}')} | "
                     f"{scaling} | {phases} | {_gib(r.get('single_peak_allocated_bytes_max'))} / "
                     f"{_gib(r['ddp_peak_allocated_bytes_max'])} |")
    return lines
