"""The data-parallel side of benchmarks/multi_gpu.py (`--mode ddp`), and the training-step loop both modes time.

`--mode ddp`: every rank builds the whole random-init model on its GPU (same seed; rank 0's weights are broadcast
anyway), and the method's gradients are averaged as under `train.distributed=ddp` (experiments/ddp.py; BAdam: only the
active block's gradient travels). `--compare-single R` alternates R rounds of phases in the same processes:
  single: rank 0 trains alone with no process group attached (the plain one-GPU path of the harness: the same model,
          method and step as `train.distributed=none`), the other ranks wait at a barrier; with --single-every-rank
          every rank in turn (each GPU's own baseline; scaling stays against rank 0's);
  alone:  (with --alone-phase) every rank trains at the same time, each on its own, nothing averaged: the host and the
          GPUs as busy as under ddp, without communication, so alone vs single shows what two processes cost each
          other (host contention) and ddp vs alone what the averaging and the ranks' waiting for each other cost;
  ddp:    every rank trains, gradients averaged.
Each phase builds a fresh optimizer (BAdam restarts its schedule, so step i trains the same block in every phase),
runs --warmup untimed steps and then the timed ones; scaling = ddp tokens/s / (N x single tokens/s), per round and
for the medians, so the single-GPU baseline is measured on the same GPU, in the same process, in the same minutes.

Per step and rank, besides the GPU time of each phase (CUDA events), the host side: the wall time the Python thread
spent issuing each phase (``host_*_ms``; close to the GPU time when the step is launch-bound), the main thread's CPU
time in the forward (``cpu_forward_ms``; well below the host wall time when the thread was descheduled), the
process's involuntary context switches, and under ddp the all-reduce's overlap window and exposed tail
(BlockGradientSync.take_timing). benchmarks/multi_gpu_diagnostics.py turns them into the comparisons. --overlap-update:
every phase queues its updates on a side stream (the forward then holds the wait for them, "update" the queueing).
--shard-frozen: the ddp phases keep 1/N of each frozen block per rank (BlockOptimizer.shard_frozen_blocks).
"""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from pathlib import Path

import torch
from multi_gpu_diagnostics import (checkpointing_note, compile_backend, compiled_note, diagnose, in_flight_note,
                                   overlap_note, spread)
from multi_gpu_diagnostics import markdown as diagnostics_markdown

GIB = 1024 ** 3


def _involuntary_switches() -> int | None:
    """Involuntary context switches of this process so far (every thread; Linux/macOS), None where unknown."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    except (ImportError, AttributeError, OSError):
        return None


_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def host_cpu_state() -> dict:
    """What the machine below the process did to its CPUs (Linux; {} elsewhere), to name the cause of the batch-2 host
    stretches of issue 18 (a thread running slower with CPU time = wall time and no context switches: the hypervisor
    taking the vCPUs, or a lower clock):
      steal_ms  CPU time the hypervisor gave to others so far, all vCPUs together (/proc/stat, the 'cpu' line's 8th
                value, in clock ticks)
      cpu       the CPU this thread last ran on (/proc/thread-self/stat, field 39)
      cpu_mhz   that CPU's current clock (cpufreq's scaling_cur_freq; many VMs do not expose it)"""
    state = {}
    try:
        with open("/proc/stat") as fh:
            state["steal_ms"] = int(fh.readline().split()[8]) * 1000.0 / _TICKS_PER_S
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open("/proc/thread-self/stat") as fh:
            state["cpu"] = int(fh.read().rsplit(")", 1)[1].split()[36])   # fields after the name start at field 3
        with open(f"/sys/devices/system/cpu/cpu{state['cpu']}/cpufreq/scaling_cur_freq") as fh:
            state["cpu_mhz"] = int(fh.read()) / 1000.0
    except (OSError, IndexError, ValueError):
        pass
    return state


class HostClock:
    """Host-side time of each phase of a step: wall time of the issuing thread (no device synchronisation) and, for
    the phases run on this thread, its CPU time."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall[name] = (time.perf_counter() - wall) * 1000.0
            self.cpu[name] = (time.thread_time() - cpu) * 1000.0


def timed_steps(args, ctx, model, method, gen, profile=None, sync=None) -> list[dict]:
    """args.steps optimizer steps of batch args.batch_size x args.seq_len random ids (labels = inputs) under bf16
    autocast, each timed with the harness's StepTimer (CUDA events per phase) and a HostClock; `profile(step)` is
    called before each step (the caller starts/stops a profiler there); `sync` (a BlockGradientSync) adds the
    all-reduce's window and tail.

    The steps run on a collected, frozen heap, as the harness's training loop does (experiments/loop.py); without it
    a full (generation-2) collection traverses everything torch and transformers keep alive (0.1-0.4 s, measured for
    issue 17) in whichever step allocates at that moment, a pause the harness does not have (the CPU-bound 0.25-0.45 s
    forward stalls, one per 100-150 steps, of the 2026-11-26 2-GPU runs look like it; under ddp the other rank waits).
    Each step records the collector's milliseconds and full collections inside it (``gc_ms``, ``gc_full``) and what
    the host did meanwhile (``steal_ms``, ``cpu``, ``cpu_mhz``: host_cpu_state)."""
    from badam_bench_worker import GcWatch
    from experiments.measure import StepTimer

    vocab, overlap = model.config.vocab_size, args.overlap_update
    autocast = torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)
    timer = StepTimer(ctx.device, stream_only=overlap and method.optimizer.overlap_active)
    counter = flop_counter(model)
    if sync is not None:
        sync.record_timing = True
    steps = []
    gc.collect()
    gc.freeze()
    try:
        with GcWatch() as collector:
            for step in range(args.steps):
                steps.append(_timed_step(args, ctx, model, method, gen, vocab, autocast, timer, counter, collector,
                                         profile, sync, step))
    finally:
        gc.unfreeze()
    if steps and "previous" in steps[-1]:  # overlapped on a GPU: each step read its predecessor's figures
        late = [s.pop("previous") for s in steps[1:]] + [_overlapped_step_figures(method, sync)]
        for record, figures in zip(steps, late):
            record.update(figures)
    return steps


def _overlapped_step_figures(method, sync) -> dict:
    """The last overlapped update's clip norm and all-reduce timing, read during the next step (after its backward):
    right after step() the main stream (norm) or the host (timing) would wait for the update meant to overlap."""
    norm = method.optimizer.last_grad_norm
    return {"grad_norm": None if norm is None else float(norm), **((sync.take_timing() if sync else None) or {})}


def _timed_step(args, ctx, model, method, gen, vocab, autocast, timer, counter, collector, profile, sync,
                step: int) -> dict:
    """One timed step of timed_steps (its record; ``new_graphs``: graphs Dynamo compiled in it, --compile-layers)."""
    from experiments.layer_compile import compiled_graphs

    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen).to(ctx.device)
    if profile is not None:
        profile(step)
    flops = counter.count(counter.snapshot(), [{"input_ids": ids}]) if counter is not None else None
    host = HostClock()
    full_before = collector.collections[2]
    collector.open_span()
    switches, cpu_before = _involuntary_switches(), host_cpu_state()   # read outside the step's clock (~0.1 ms)
    graphs = compiled_graphs()
    timer.start_step()
    with timer.phase("forward"), host.phase("forward"), autocast:
        loss = model(input_ids=ids, labels=ids).loss
    with timer.phase("backward"), host.phase("backward"):
        method.backward(loss)
    overlap = args.overlap_update
    lagged = timer.stream_only  # overlapped on a GPU (timed_steps decided); on a CPU the update ran in step()
    with timer.phase("update"), host.phase("update"):
        previous = _overlapped_step_figures(method, sync) if lagged and step else None
        norm = None if overlap else method.clip_and_norm(1.0)  # overlapped: clipped inside the queued update
        method.step()
        norm = float(method.optimizer.last_grad_norm) if overlap and not lagged else norm
        method.zero_grad()
    times = timer.end_step(everything=step == args.steps - 1)
    after, cpu_after = _involuntary_switches(), host_cpu_state()
    steal = cpu_after["steal_ms"] - cpu_before["steal_ms"] if "steal_ms" in cpu_before and "steal_ms" in cpu_after \
        else None
    gc_ms = collector.close_span()
    reduce = sync.take_timing() if sync is not None and not lagged else None
    record = {"step": step + 1, "ms": times["step"], "forward_ms": times["forward"], "backward_ms": times["backward"],
              "update_ms": times["update"], "loss": float(loss.detach()), "grad_norm": norm,
              **{k: v for k, v in method.describe().items() if k == "active_block"},
              **{f"host_{name}_ms": ms for name, ms in host.wall.items()}, "cpu_forward_ms": host.cpu["forward"],
              "involuntary_switches": None if switches is None else after - switches, **(reduce or {}),
              "gc_ms": gc_ms, "gc_full": collector.collections[2] - full_before,
              "new_graphs": compiled_graphs() - graphs,
              "steal_ms": steal, "cpu": cpu_after.get("cpu"), "cpu_mhz": cpu_after.get("cpu_mhz"),
              "model_flops": flops.model if flops else None, "hardware_flops": flops.hardware if flops else None}
    record.update({"previous": previous} if previous else {})
    if ctx.is_main:
        print(f"step {step + 1}/{args.steps}: {record['ms']:.0f} ms, loss {record['loss']:.4f}", flush=True)
    return record


def flop_counter(model):
    """experiments.flops' model of this model's matmul FLOPs (what trains is read before each step), None for a
    model it cannot read."""
    from experiments.flops import FlopCounter

    try:
        return FlopCounter(model)
    except (ValueError, KeyError, AttributeError, TypeError, StopIteration):
        return None


def utilization(steps_per_rank: list[list[dict]], warmup: int, device_name: str | None) -> dict:
    """Model FLOP/s per GPU over the timed steps (this rank's matmul FLOPs per step over the slowest rank's step
    time, summed) and MFU against the device's dense bf16 peak (experiments/flops.py; None on a CPU)."""
    from experiments.flops import utilization_summary

    per_step = [{"step": i + 1, "model_flops": max(s.get("model_flops") or 0 for s in step) or None,
                 "t_step_ms": max(s["ms"] for s in step)} for i, step in enumerate(zip(*steps_per_rank))]
    timed = per_step[warmup:]
    if not timed or not all(r["model_flops"] for r in timed):
        return {"model_tflops_per_s_per_gpu": None, "mfu": None}
    compute = utilization_summary(per_step, warmup, device_name)
    return {"model_tflops_per_s_per_gpu": compute["model_tflops_per_s"], "mfu": compute["mfu"]}


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
    from badam.hf import layer_graphs_of
    from experiments import ddp as ddp_mod
    from experiments.measure import synchronize

    method.build_optimizer(model)
    place = ddp_mod.placement(model, ctx.device, seed=0)  # a model built on meta: placed as it is sharded
    data_parallel = ddp_mod.DataParallel(model, method, ctx, args.reduce_dtype, args.max_in_flight,
                                         shard_frozen=args.shard_frozen, place=place) if kind == "ddp" else None
    if args.overlap_update:  # every phase kind alike: the single path gets the overlap too
        method.optimizer.overlap_update(model, max_grad_norm=1.0)
    synchronize(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    held = int(torch.cuda.memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None
    if kind != "single":
        ctx.barrier()  # every rank starts its timed steps together (alone: busy side by side, as under ddp)
    if ctx.is_main:
        gpus = 1 if kind == "single" else ctx.world_size
        print(f"--- round {round_ + 1}, {kind} ({gpus} GPU{'s' if gpus > 1 else ''})", flush=True)
    profiler = None

    def profile(step: int) -> None:
        nonlocal profiler
        if profile_stem and ctx.is_main and step == args.steps - 3:
            profiler = start_profiler(ctx.device)

    steps = timed_steps(args, ctx, model, method, gen, profile, data_parallel.sync if data_parallel else None)
    if profiler is not None:
        write_profile(profiler, Path(args.profile_dir), profile_stem, ctx.device)
    peak = int(torch.cuda.max_memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None
    split = method.memory_split(model)
    graphs = layer_graphs_of(model)  # policy block-graphed: replays and recordings so far (cumulative)
    if place is None:  # placed from meta (the only phase): releasing would gather the whole model onto the GPU
        _release(method, data_parallel)
    model.zero_grad(set_to_none=True)
    return {"kind": kind, "round": round_ + 1, "steps": steps, "peak_allocated_bytes": peak,
            "held_at_start_bytes": held, "memory_split_end": split,
            "layer_graphs": graphs.stats() if graphs is not None else None}


def run_replicated(args, ctx, build_method, stem: str) -> dict:
    """One rank's part of a --mode ddp run (see the module docstring); with args.profile_dir, the last round's
    phases are profiled (<stem>_single / <stem>_ddp)."""
    from badam.hf import record_layer_graphs
    from experiments import ddp as ddp_mod
    from experiments.layer_compile import compile_method_layers
    from experiments.measure import synchronize
    from experiments.models import load_model

    method = build_method(args)
    ddp_mod.check_method_supported(method.name)
    synchronize(ctx.device)
    t0 = time.perf_counter()
    on_meta = args.shard_frozen and not args.compare_single  # placed unit by unit in the one ddp phase
    model, _ = load_model(f"random:{args.model}", dtype="bf16", device="meta" if on_meta else str(ctx.device),
                          gradient_checkpointing=not args.no_checkpointing, checkpointing_policy=args.checkpointing,
                          tokenizer=False, seed=0)
    model = ddp_mod.replicate(method.prepare_model(model), ctx)
    compiled = compile_method_layers(model, args.compile_layers, method) if args.compile_layers else None
    model.train()
    model.config.use_cache = False
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len),
                        generator=torch.Generator().manual_seed(1)).to(ctx.device)  # (the global RNG untouched)
    with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16):  # as timed_steps: graphed policies record
        recorded = record_layer_graphs(model, input_ids=ids, labels=ids)     # every layer's graph before the phases
    synchronize(ctx.device)
    init_s = time.perf_counter() - t0
    weights = int(torch.cuda.memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None
    gen = torch.Generator().manual_seed(1000 + ctx.rank)
    total = sum(p.numel() for p in model.parameters())  # before any phase: sharded parameters hold no elements
    phases = []
    rounds = max(1, args.compare_single)
    for round_ in range(rounds):
        last = args.profile_dir and round_ == rounds - 1
        if args.compare_single:
            for solo in range(ctx.world_size if args.single_every_rank else 1):
                if ctx.rank == solo:
                    phases.append(_phase("single", round_, args, ctx, model, method, gen,
                                         last and ctx.is_main and f"{stem}_single"))
                ctx.barrier()
        if args.alone_phase:
            phases.append(_phase("alone", round_, args, ctx, model, method, gen, last and f"{stem}_alone"))
        phases.append(_phase("ddp", round_, args, ctx, model, method, gen, last and f"{stem}_ddp"))
    weights = phases[0]["held_at_start_bytes"] if on_meta else weights  # placed (and sharded) in its one phase
    return {"rank": ctx.rank, "init_s": init_s, "weights_bytes": weights, "phases": phases,
            "sizes": {"total_params": total}, "host": host_facts(),
            "compile_layers": compiled.stats() if compiled else None, "layer_graphs_recorded": recorded}


def split_cpus(cpus: list[int], core_of: dict[int, object], parts: int) -> list[list[int]]:
    """`cpus` divided into `parts` shares of whole physical cores (hyperthread siblings stay together), as even as
    the cores allow, in CPU order; ValueError when there are fewer cores than parts."""
    cores: dict[object, list[int]] = {}
    for cpu in sorted(cpus):
        cores.setdefault(core_of.get(cpu, cpu), []).append(cpu)
    groups = list(cores.values())
    if len(groups) < parts:
        raise ValueError(f"--cpu-affinity split: {len(groups)} physical cores for {parts} processes on this machine; "
                         "use --cpu-affinity none")
    bounds = [round(k * len(groups) / parts) for k in range(parts + 1)]
    return [sorted(c for group in groups[bounds[k]:bounds[k + 1]] for c in group) for k in range(parts)]


def _core_ids(cpus: list[int]) -> dict[int, object]:
    """CPU -> (package, core) from sysfs; CPUs it does not describe count as cores of their own."""
    out = {}
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            out[cpu] = ((topology / "physical_package_id").read_text().strip(),
                        (topology / "core_id").read_text().strip())
        except OSError:
            continue
    return out


def bind_to_cpu_share(local_rank: int, local_world: int) -> list[int]:
    """Pin this process (every thread it has now; later ones inherit it) to its share of the allowed CPUs:
    split_cpus over the physical cores, share number local_rank. Linux only."""
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--cpu-affinity split needs Linux (os.sched_setaffinity); use --cpu-affinity none")
    allowed = sorted(os.sched_getaffinity(0))
    mine = split_cpus(allowed, _core_ids(allowed), local_world)[local_rank]
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread), mine)
    return mine


def host_facts() -> dict:
    """The CPUs this rank may run on, the machine's count, torch's intra-op threads (where contention comes from)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpus": cpus, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _phase_summary(args, phase_per_rank: list[dict], gpus: int, device_name: str | None = None) -> dict:
    timed = range(args.warmup, args.steps)
    step_ms = statistics.median(max(p["steps"][i]["ms"] for p in phase_per_rank) for i in timed)
    phases = {f"median_{name}_ms": statistics.median(max(p["steps"][i][f"{name}_ms"] for p in phase_per_rank)
                                                     for i in timed) for name in ("forward", "backward", "update")}
    tokens = args.batch_size * args.seq_len * gpus
    peaks = [p["peak_allocated_bytes"] for p in phase_per_rank]
    return {"kind": phase_per_rank[0]["kind"], "round": phase_per_rank[0]["round"], "gpus": gpus,
            "median_step_ms": step_ms, **phases, "tokens_per_s": tokens / (step_ms / 1000.0),
            **utilization([p["steps"] for p in phase_per_rank], args.warmup, device_name),
            "peak_allocated_bytes_max": max(peaks) if all(x is not None for x in peaks) else None,
            "losses_rank0": [s["loss"] for s in phase_per_rank[0]["steps"]]}


def combine_replicated(args, ctx, per_rank: list[dict], device_name: str | None = None) -> dict:
    """The run's JSON: per-phase figures (step time: slowest rank), medians and spreads over the rounds, scaling;
    device_name (CUDA) gives MFU."""
    summaries = []
    for phase in per_rank[0]["phases"]:
        if phase["kind"] == "single":
            summaries.append(_phase_summary(args, [phase], 1, device_name))
            continue
        same = [next(p for p in r["phases"] if (p["kind"], p["round"]) == (phase["kind"], phase["round"]))
                for r in per_rank]  # this phase on every rank
        summaries.append(_phase_summary(args, same, ctx.world_size, device_name))
    ddp = [s for s in summaries if s["kind"] == "ddp"]
    single = [s for s in summaries if s["kind"] == "single"]
    alone = [s for s in summaries if s["kind"] == "alone"]
    result = {
        "model": args.model, "method": args.method, "mode": "ddp", "gpus": ctx.world_size,
        "batch_per_gpu": args.batch_size, "seq_len": args.seq_len, "gradient_checkpointing": not args.no_checkpointing,
        "checkpointing": None if args.no_checkpointing else args.checkpointing,
        "steps": args.steps, "warmup": args.warmup, "switch_every": args.switch_every,
        "reduce_dtype": args.reduce_dtype, "max_in_flight": args.max_in_flight,
        "overlap_update": args.overlap_update, "shard_frozen": args.shard_frozen,
        "rounds": max(1, args.compare_single), "phases": summaries,
        "cpu_affinity": args.cpu_affinity, "tag": args.tag, "compile_layers": per_rank[0]["compile_layers"],
        "ddp_tokens_per_s": spread([s["tokens_per_s"] for s in ddp]),
        "ddp_median_step_ms": statistics.median(s["median_step_ms"] for s in ddp),
        **{f"ddp_median_{name}_ms": statistics.median(s[f"median_{name}_ms"] for s in ddp)
           for name in ("forward", "backward", "update")},
        "ddp_peak_allocated_bytes_max": max((s["peak_allocated_bytes_max"] or 0) for s in ddp) or None,
        "weights_bytes_per_rank": [r["weights_bytes"] for r in per_rank],
        "init_s_max": max(r["init_s"] for r in per_rank), "total_params": per_rank[0]["sizes"]["total_params"],
        "per_rank": per_rank,
    }
    if alone:  # as if the ranks had waited for each other every step (slowest rank per step), nothing averaged
        result["alone_tokens_per_s"] = spread([s["tokens_per_s"] for s in alone])
    for kind, rows in (("single", single), ("ddp", ddp)):
        if rows and all(s["mfu"] is not None for s in rows):
            result[f"{kind}_mfu"] = spread([s["mfu"] for s in rows])
    if single:
        result["single_tokens_per_s"] = spread([s["tokens_per_s"] for s in single])
        result["single_peak_allocated_bytes_max"] = max((s["peak_allocated_bytes_max"] or 0) for s in single) or None
        # per round: this round's ddp phase against the single phase just before it
        result["scaling_per_round"] = spread([d["tokens_per_s"] / (ctx.world_size * s["tokens_per_s"])
                                               for s, d in zip(single, ddp)])
        result["scaling_of_medians"] = result["ddp_tokens_per_s"]["median"] / (
            ctx.world_size * result["single_tokens_per_s"]["median"])
    result["diagnostics"] = diagnose(result)
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
             "Alternating rounds in the same processes: rank 0 alone without a process group (single; with "
             "--single-every-rank each rank in turn), with --alone-phase every rank on its own at the same time "
             "(alone), then every rank data parallel (ddp). Median [min-max] over the rounds; scaling against rank "
             "0's single phases.", "",
             "| model | method | GPUs | batch/GPU x len | reduce (setting) | rounds | single tokens/s | ddp tokens/s | "
             "scaling per round | scaling of medians | ddp forward / backward / update ms | "
             "peak GiB/GPU single / ddp | MFU single / ddp |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(s, fmt="{:.0f}"):  # a spread as "median [min-max]"
        return "n/a" if not s else f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"

    for r in sorted(rows, key=lambda r: (r["model"], r["method"], r["batch_per_gpu"], r["gpus"], variant(r))):
        phases = " / ".join(f"{r[f'ddp_median_{p}_ms']:.0f}" for p in ("forward", "backward", "update"))
        scaling = f"{r['scaling_of_medians']:.3f}" if "scaling_of_medians" in r else "n/a"
        lines.append(f"| {r['model']} | {r['method']} | {r['gpus']} | {r['batch_per_gpu']} x {r['seq_len']} | "
                     f"{variant(r)} | {r['rounds']} | {cell(r.get('single_tokens_per_s'))} | "
                     f"{cell(r['ddp_tokens_per_s'])} | {cell(r.get('scaling_per_round'), '{:.3f}')} | "
                     f"{scaling} | {phases} | {_gib(r.get('single_peak_allocated_bytes_max'))} / "
                     f"{_gib(r['ddp_peak_allocated_bytes_max'])} | {_mfu(r.get('single_mfu'))} / "
                     f"{_mfu(r.get('ddp_mfu'))} |")
    return lines + diagnostics_markdown(rows)


def _mfu(band: dict | None) -> str:
    return "n/a" if not band else f"{band['median']:.3f}"


def variant(result: dict) -> str:
    """The reduce dtype, then what else set this run apart (CPU pinning, compiled layers, checkpointing, tag)."""
    extra = [in_flight_note(result), ", CPUs split" if result.get("cpu_affinity") == "split" else "",
             compiled_note(compile_backend(result)), checkpointing_note(result.get("checkpointing")),
             overlap_note(result), f", {result['tag']}" if result.get("tag") else ""]
    return result["reduce_dtype"] + "".join(extra)

