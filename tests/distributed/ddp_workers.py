"""train.distributed=ddp cases, run on every rank inside the one spawn of tests/distributed/conftest.py (through
workers.all_cases). Each returns what the tests in test_ddp.py need (rank 0's view, or every rank's when it matters)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from experiments import ddp as DDP
from experiments import distributed as D
from experiments.checkpoint import Position
from tests.distributed.common import full_weights, make_method, tiny_llama
from tests.distributed.workers import harness_args, rank_steps

DDP_CASES = [("badam", "float32"), ("badam", "bfloat16"), ("lora", "float32"), ("adam", "float32")]
# 4 blocks (embeddings, 2 layers, head): 24 random orders, so rank 0's schedule winning over rank 1's seed shows
LIBRARY_OPTIONS = {"switch_block_every": 2, "switch_mode": "random", "include_embedding": True,
                   "include_lm_head": True}
LIBRARY_STEPS = 6


def ddp_setup(ctx, method_name: str, dtype: torch.dtype, shard_frozen: bool = False, **options):
    """What the loop does under train.distributed=ddp: prepare, replicate rank 0's weights, build, attach."""
    method = make_method(method_name)
    for key, value in options.items():
        setattr(method.options, key, value)
    model = DDP.replicate(method.prepare_model(tiny_llama(dtype)), ctx)
    method.build_optimizer(model)
    return model, method, DDP.DataParallel(model, method, ctx, shard_frozen=shard_frozen)


def weights_of(model, method) -> dict | None:
    """full_weights, gathered onto rank 0 when the frozen blocks are sharded (None on the other ranks then)."""
    shards = DDP.frozen_shards(method)
    if shards is None:
        return full_weights(model)
    state = shards.gathered_state_dict(model)
    return None if state is None else {k: v.float() for k, v in state.items()}


def train_ddp(model, method, dp, steps: list[list[dict]]) -> tuple[list[float], list, list[float]]:
    """The loop's order (micro-batches but the last inside no_sync); returns this rank's mean loss, the active block
    before each step, and a checksum of the averaged gradient right after the last backward (read as a clip would)."""
    losses, blocks, grad_sums = [], [], []
    for micro in steps:
        blocks.append(method.describe().get("active_block"))
        total = 0.0
        for batch in micro:
            loss = model(**batch).loss
            with dp.micro_batch(batch is micro[-1]):
                method.backward(loss / len(micro), last_micro_batch=batch is micro[-1])
            total += float(loss.detach()) / len(micro)
        grad_sums.append(float(sum(g.double().sum() for g in held_gradients(method))))
        method.clip_and_norm(1.0)
        method.step()
        method.zero_grad()
        losses.append(total)
    return losses, blocks, grad_sums


def held_gradients(method) -> list[torch.Tensor]:
    """The gradients the method's next update reads (BlockOptimizer: p.grad and fp32 sums; others: the masters')."""
    if hasattr(method.optimizer, "gradient_tensors"):
        return method.optimizer.gradient_tensors()
    return [m.grad for m in method.master_weights.masters if m.grad is not None]


def equivalence(ctx) -> dict:
    results = {}
    for method_name, dtype_name in DDP_CASES:
        model, method, dp = ddp_setup(ctx, method_name, getattr(torch, dtype_name))
        losses, blocks, grad_sums = train_ddp(model, method, dp, rank_steps(ctx, 4))
        every = D.gather_objects({"losses": losses, "blocks": blocks, "grad_sums": grad_sums,
                                  "weights": full_weights(model)}, ctx)
        results[f"{method_name}/{dtype_name}"] = {
            "weights": every[0]["weights"], "losses": [sum(x) / len(x) for x in zip(*(e["losses"] for e in every))],
            "blocks_per_rank": [e["blocks"] for e in every], "grad_sums_per_rank": [e["grad_sums"] for e in every],
            "replicas_equal": all(torch.equal(e["weights"][k], every[0]["weights"][k])
                                  for e in every for k in every[0]["weights"]),
            "split": method.memory_split(model), "describe": method.describe(), "dp": dp.describe()}
    return results


def library(ctx) -> dict:
    """BlockOptimizer(..., process_group=...) used directly, as a library user would: a different seed on every rank
    (rank 0's schedule must win), every micro-batch averaged (no no_sync), then a rank built differently."""
    import torch.distributed as dist

    from badam import BlockOptimizer

    model = tiny_llama(torch.float32)
    with torch.no_grad():  # a different start on rank 1: the broadcast must replace it by rank 0's weights
        next(model.parameters()).add_(float(ctx.rank))
    base = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    optimizer = BlockOptimizer(base, list(model.named_parameters()), **LIBRARY_OPTIONS, seed=100 + ctx.rank,
                               verbose=0, process_group=dist.group.WORLD)
    blocks, orders = [], []
    for micro in rank_steps(ctx, LIBRARY_STEPS):
        blocks.append(optimizer.current_block)
        orders.append(list(optimizer._order))
        for batch in micro:
            (model(**batch).loss / len(micro)).backward()  # averaged at every backward: the sum of averages
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # a plain torch clip on p.grad: the average
        optimizer.step()
        optimizer.zero_grad()
    every = D.gather_objects({"blocks": blocks, "orders": orders, "weights": full_weights(model)}, ctx)
    mismatch = None
    try:  # rank 1 asks for another K: every rank must get a clear error (not a hang)
        other = tiny_llama(torch.float32)
        BlockOptimizer(torch.optim.AdamW(other.parameters()), list(other.named_parameters()),
                       switch_block_every=2 + ctx.rank, verbose=0, process_group=dist.group.WORLD)
    except ValueError as exc:
        mismatch = str(exc)
    return {"blocks_per_rank": [e["blocks"] for e in every], "orders_per_rank": [e["orders"] for e in every],
            "weights": every[0]["weights"], "replicas_equal": all(
                torch.equal(e["weights"][k], every[0]["weights"][k]) for e in every for k in every[0]["weights"]),
            "mismatch_errors": D.gather_objects(mismatch, ctx)}



def library_overlap(ctx) -> dict:
    """overlap_update with a recording stand-in for the side stream (tests/badam/test_overlap.py): every backward's
    all-reduces stay in flight until step(), which averages them, clips (max_grad_norm) and updates; against the same
    data-parallel optimizer clipping with clip_grad_norm_ before a plain step. bf16 weights, no_sync for all
    micro-batches but the last."""
    import contextlib

    import torch.distributed as dist

    from badam import BlockOptimizer
    from tests.badam.test_overlap import RecordingSide

    runs = []
    for overlap in (False, True):
        model = tiny_llama(torch.bfloat16)
        base = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        optimizer = BlockOptimizer(base, list(model.named_parameters()), **LIBRARY_OPTIONS, seed=100, verbose=0,
                                   process_group=dist.group.WORLD)
        if overlap:
            optimizer.overlap_update(model, max_grad_norm=1.0, side=RecordingSide([]))
        deferred, norms = 0, []
        for micro in rank_steps(ctx, LIBRARY_STEPS):
            for k, batch in enumerate(micro):
                with optimizer.no_sync() if k < len(micro) - 1 else contextlib.nullcontext():
                    (model(**batch).loss / len(micro)).backward()
            deferred += optimizer.gradient_sync._deferred
            norms.append(float(optimizer.clip_grad_norm_(1.0)) if not overlap else None)
            optimizer.step()
            norms[-1] = norms[-1] if not overlap else float(optimizer.last_grad_norm)
            optimizer.zero_grad()
        runs.append({"weights": full_weights(model), "norms": norms, "deferred": deferred})
    plain, overlapped = runs
    return {"equal": all(torch.equal(plain["weights"][k], overlapped["weights"][k]) for k in plain["weights"]),
            "norms": (plain["norms"], overlapped["norms"]), "deferred": (plain["deferred"], overlapped["deferred"])}

def library_sharded(ctx) -> dict:
    """shard_frozen_blocks on 2 ranks (badam/frozen_shards.py) against the same data-parallel optimizer unsharded: bf16,
    embeddings and head as blocks, transformers' non-reentrant checkpointing (a frozen layer is gathered for its forward
    and again for its recomputation in backward), no_sync for all micro-batches but the last; then the state dict
    gathered on rank 0 and loaded back into a fresh sharded model."""
    import contextlib

    import torch.distributed as dist

    from badam import BlockOptimizer

    runs = []
    for shard in (0, 1, 2):  # unsharded; sharded with the next unit's all-gather issued ahead; with the next two
        model = tiny_llama(torch.bfloat16)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        base = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        optimizer = BlockOptimizer(base, list(model.named_parameters()), **LIBRARY_OPTIONS, seed=100, verbose=0,
                                   process_group=dist.group.WORLD)
        shards = optimizer.shard_frozen_blocks(model, prefetch=shard) if shard else None
        losses, held = [], []
        for micro in rank_steps(ctx, LIBRARY_STEPS):
            for k, batch in enumerate(micro):
                with optimizer.no_sync() if k < len(micro) - 1 else contextlib.nullcontext():
                    loss = model(**batch).loss
                    (loss / len(micro)).backward()
                losses.append(float(loss))
            optimizer.step()
            optimizer.zero_grad()
            storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
            held.append(sum(storages.values()) + (shards.shard_bytes() if shard else 0))
        state = shards.gathered_state_dict(model) if shard else full_weights(model)
        runs.append({"losses": losses, "state": state, "held_bytes": held, "optimizer": optimizer, "model": model})
    plain, sharded, deeper = runs
    shards = sharded["optimizer"].frozen_shards
    fresh = tiny_llama(torch.bfloat16)
    with torch.no_grad():  # other weights: loading must replace every one of them
        for p in fresh.parameters():
            p.add_(1.0)
    fresh_optimizer = BlockOptimizer(torch.optim.AdamW(fresh.parameters()), list(fresh.named_parameters()),
                                     **LIBRARY_OPTIONS, seed=100, verbose=0, process_group=dist.group.WORLD)
    fresh_shards = fresh_optimizer.shard_frozen_blocks(fresh)
    fresh_shards.load_gathered_state_dict(fresh, D.broadcast_object(sharded["state"], ctx))
    reloaded = fresh_shards.gathered_state_dict(fresh)
    result = {"losses": (plain["losses"], sharded["losses"]),
              "held_bytes": (plain["held_bytes"], sharded["held_bytes"]),
              "units": [u.name for u in shards.units], "gathers": shards.gathers, "prefetched": shards.prefetched,
              "deeper": {"losses_equal": deeper["losses"] == sharded["losses"], "gathers": deeper["optimizer"]
                         .frozen_shards.gathers, "prefetched": deeper["optimizer"].frozen_shards.prefetched},
              "sharded_names": sorted(shards.sharded_names(sharded["model"]))}
    if ctx.rank == 0:
        result["equal"] = all(torch.equal(plain["state"][k], sharded["state"][k].float()) for k in plain["state"])
        result["reloaded_equal"] = all(torch.equal(reloaded[k], sharded["state"][k]) for k in reloaded)
        result["deeper"]["equal"] = all(torch.equal(deeper["state"][k], sharded["state"][k]) for k in reloaded)
    sharded["optimizer"].release()  # gathers the model back: every weight whole again, equal to the state dict
    result["released"] = all(torch.equal(v.float(), full_weights(sharded["model"])[k])
                             for k, v in D.broadcast_object(sharded["state"], ctx).items())
    return result


def resume(ctx, out_dir: Path, total: int = 5, save_after: int = 3, shard_frozen: bool = False) -> dict:
    """bf16 BAdam under ddp: uninterrupted vs checkpoint.pt (experiments.ddp) after `save_after` steps, then a fresh
    model, method and attachment that load it and train on (shard_frozen: all three with the frozen blocks sharded)."""
    model, method, dp = ddp_setup(ctx, "badam", torch.bfloat16, shard_frozen)
    train_ddp(model, method, dp, rank_steps(ctx, total))
    straight = {"weights": weights_of(model, method), "describe": method.describe()}

    model, method, dp = ddp_setup(ctx, "badam", torch.bfloat16, shard_frozen)
    train_ddp(model, method, dp, rank_steps(ctx, save_after))
    out_dir.mkdir(parents=True, exist_ok=True)
    DDP.save_checkpoint(out_dir, model, method, Position(step=save_after), total, ctx)
    del model, method, dp
    model, method, dp = ddp_setup(ctx, "badam", torch.bfloat16, shard_frozen)
    position = DDP.load_checkpoint(str(out_dir), model, method, ctx)
    train_ddp(model, method, dp, rank_steps(ctx, total, first=position.step))
    resumed = {"weights": weights_of(model, method), "describe": method.describe(), "step": position.step,
               "split": method.memory_split(model), "dp": dp.describe()}
    return {"straight": straight, "resumed": resumed}


def harness(ctx, out_dir: Path, model_dir: Path) -> dict:
    """experiments.run's run_experiment as `torchrun -m experiments.run ... train.distributed=ddp` calls it: stopped
    after 2 steps with a checkpoint, then resumed to the end (compared with the fsdp2 harness run of the same config;
    the bitwise resume is resume() above, through the same checkpoint functions)."""
    from experiments import run as run_cli
    from experiments.config import load_config

    ddp_ctx = dataclasses.replace(ctx, mode="ddp")

    def run(name: str, *extra: str):
        a = harness_args(model_dir, out_dir / name, "train.distributed=ddp", "train.device=cpu",
                         "train.grad_accum=1", *extra)
        return run_cli.run_experiment(load_config(a[1], [x for x in a[2:] if "=" in x]), progress=False,
                                      dist_ctx=ddp_ctx)

    half, half_dir = run("half", "train.stop_after_steps=2", "train.save_every=2")
    resumed, _ = run("half", f"train.resume_from={half_dir}", "train.save_every=2", "output.save_model=true")
    _, shard_dir = run("sharded", "train.stop_after_steps=2", "train.save_every=2", "train.ddp_shard_frozen=true")
    run("sharded", f"train.resume_from={shard_dir}", "train.save_every=2", "output.save_model=true",
        "train.ddp_shard_frozen=true")
    # a random model built on the meta device: placed and sharded unit by unit, never whole on a rank
    placed, placed_dir = run("placed", "model.source=random:tiny-llama", "train.ddp_shard_frozen=true",
                             "output.save_model=true")
    compiled, compiled_dir = run("compiled", "train.compile_layers=aot_eager")  # Dynamo on every rank, under ddp
    return {"statuses": [half["status"], resumed["status"]], "distributed": resumed.get("distributed"),
            "placed": {"status": placed["status"], "dir": str(placed_dir)},
            "compiled": {"status": compiled["status"], "dir": str(compiled_dir),
                         "compile_layers": compiled.get("compile_layers")}}


def bench(ctx, out_dir: Path) -> dict:
    """benchmarks/multi_gpu.py --mode ddp --compare-single 2 --alone-phase --single-every-rank on the tiny Llama, inside
    this process group (the CLI's arguments and summary are tested in test_multi_gpu_benchmark.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import multi_gpu

    args = multi_gpu.parse_args(["--out", str(out_dir), "--tiny", "--mode", "ddp", "--compare-single", "2",
                                 "--alone-phase", "--single-every-rank", "--steps", "2"])
    mine = multi_gpu.run_replicated(args, ctx, multi_gpu.build_method, multi_gpu.result_stem(args, ctx.world_size))
    result = multi_gpu.combine_replicated(args, ctx, D.gather_objects(mine, ctx))
    # --shard-frozen without single phases: the model built on meta and placed layer by layer in the one ddp phase
    args = multi_gpu.parse_args(["--out", str(out_dir), "--tiny", "--mode", "ddp", "--shard-frozen", "--steps", "2"])
    mine = multi_gpu.run_replicated(args, ctx, multi_gpu.build_method, multi_gpu.result_stem(args, ctx.world_size))
    result["placed"] = multi_gpu.combine_replicated(args, ctx, D.gather_objects(mine, ctx))
    return result


def bench_compiled(ctx, out_dir: Path) -> dict:
    """The benchmark's ddp phase with --compile-layers aot_eager (Dynamo's capture and guards, AOT autograd's backward
    feeding the gradient averaging, without inductor's code generation): 3 steps (K = 2: blocks 0, 0, 1, so every
    graph is needed); no single phase, so both ranks compile at once."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import multi_gpu

    torch._dynamo.reset()  # this process's first compilation: counted from zero
    torch._dynamo.utils.counters.clear()
    args = multi_gpu.parse_args(["--out", str(out_dir), "--tiny", "--mode", "ddp", "--compile-layers", "aot_eager",
                                 "--steps", "3"])
    mine = multi_gpu.run_replicated(args, ctx, multi_gpu.build_method, multi_gpu.result_stem(args, ctx.world_size))
    return multi_gpu.combine_replicated(args, ctx, D.gather_objects(mine, ctx))


PARTIAL_LAYOUTS = {  # parameter names of a hand-made block; *_rank0 get a gradient on rank 0 only, *_none on none
    "flags in the last bucket": ["w_all", "w_rank0", "w_none", "b_all", "b_rank0", "b_none"],  # last bucket: 3 norms
    "flags alone": ["w_all", "w_rank0", "w_none", "b_all"],  # last bucket holds one tensor: a separate all-reduce
}


def partial_gradients(ctx) -> dict:
    """BlockGradientSync (bf16 parameters, fp32 wire) on blocks where some parameters get a gradient on rank 0 only
    or on no rank: each rank's local gradients (a copy without averaging) and what it holds after the averaging
    backward, for both ways the presence flags travel."""
    from badam.data_parallel import BlockGradientSync
    from badam.mixed_precision import FP32MasterWeights

    def block(names):
        torch.manual_seed(0)
        return {n: (torch.randn(4, 4) if n[0] == "w" else torch.randn(4)).to(torch.bfloat16) for n in names}

    def backward(params):
        x = torch.full((3, 4), 0.5 + ctx.rank, dtype=torch.bfloat16)  # a different batch on every rank
        users = [n for n in params if n.endswith("_all") or (n.endswith("_rank0") and ctx.rank == 0)]
        out = sum(x @ params[n] if n[0] == "w" else params[n].expand(3, 4) for n in users)
        (out.float() ** 2).sum().backward()

    def leaves(names):
        return {n: torch.nn.Parameter(t) for n, t in block(names).items()}

    results = {}
    for layout, names in PARTIAL_LAYOUTS.items():
        local = leaves(names)
        backward(local)
        synced = leaves(names)
        masters = FP32MasterWeights(list(synced.values()), gradients="param")
        sync = BlockGradientSync(None, reduce_dtype="fp32")
        sync.attach(masters)
        backward(synced)
        every = D.gather_objects({"local": {n: p.grad for n, p in local.items()},
                                  "synced": {n: p.grad for n, p in synced.items()}}, ctx)
        results[layout] = {"flags_in_bucket": bool(sync._buckets[-1].flags), "ranks": every}
        sync.detach()
        masters.release()
    return results


def all_ddp_cases(ctx, out_dir: Path, model_dir: Path) -> dict:
    return {"equivalence": equivalence(ctx), "library": library(ctx), "library_overlap": library_overlap(ctx),
            "library_sharded": library_sharded(ctx),
            "resume": resume(ctx, out_dir / "resume"),
            "resume_sharded": resume(ctx, out_dir / "resume_sharded", shard_frozen=True),
            "harness": harness(ctx, out_dir / "harness", model_dir), "bench": bench(ctx, out_dir / "bench"),
            "partial": partial_gradients(ctx), "bench_compiled": bench_compiled(ctx, out_dir / "bench_compiled")}
