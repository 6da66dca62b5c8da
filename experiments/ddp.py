"""Data-parallel training (`train.distributed=ddp`): every rank holds the whole model, gradients are averaged.

Launch: `torchrun --nproc_per_node N -m experiments.run --config ... train.distributed=ddp` (the process group comes
from experiments.distributed.init_distributed, NCCL on GPUs, gloo on the CPU). Use it when the model and one block's
(BAdam) or the adapters' (LoRA) training state fit one GPU: nothing but gradients travels, where FSDP2
(`train.distributed=fsdp2`) all-gathers every layer in forward and again in backward.

How each method runs (the methods whose class sets ddp_unsupported = None; the others are refused at start with
the reason their class gives):
  * badam, bsgd: `BlockOptimizer.enable_data_parallel` (badam/data_parallel.py): only the active block's gradient is
    all-reduced, in buckets launched during the backward; block order and switches are rank 0's on every rank;
    the active block's fp32 master and optimizer states are replicated (every rank runs the same update);
  * lora, adam, sgd: the same bucketed all-reduce (`badam.data_parallel.BlockGradientSync`) attached to the method's
    fp32 masters, so it averages exactly the gradients the method's update reads (LoRA: the adapters only). Full-
    parameter methods replicate 16-18 bytes per parameter on every GPU: fine for small models, fsdp2 otherwise.
The last micro-batch of a step averages the accumulated sum (the others run inside `no_sync`), so N ranks with
grad_accum G equal one process with grad_accum N x G on the micro-batches dealt round-robin (as under fsdp2).

Before the optimizer is built, rank 0's parameters and buffers are broadcast (every rank starts from the same weights,
also for random-init models). Checkpoints: rank 0 writes the ordinary `checkpoint.pt` (every rank holds the same
model and optimizer state) with every rank's RNG states; a resume needs the same number of ranks.

`train.ddp_shard_frozen=true` (badam, bsgd; train.distributed=auto sets it when the replicated model does not fit
one GPU and this layout does, experiments/launch_mode.py): each rank then keeps 1/N of every frozen block's weights
(BlockOptimizer.shard_frozen_blocks, badam/frozen_shards.py), gathered layer by layer for forward and recomputation;
checkpoints and the saved model are gathered unit by unit onto rank 0, so they are the same files as without it. The
model is then built on the meta device (random init) or loaded on the CPU (experiments/run.py) and placed on the GPU
one unit at a time as it is sharded (`placement`), so it never sits whole on a GPU.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from badam import BlockOptimizer
from badam.data_parallel import MAX_IN_FLIGHT, BlockGradientSync
from badam.mixed_precision import FP32MasterWeights
from baselines.errors import MethodUnsupportedError

def check_method_supported(method_name: str) -> None:
    """Raise MethodUnsupportedError for a method whose class does not offer data parallelism (Method.ddp_unsupported
    says why)."""
    from baselines.registry import get_method_class, method_names

    reason = get_method_class(method_name).ddp_unsupported
    if reason is not None:
        runnable = ", ".join(n for n in method_names() if get_method_class(n).supports_ddp())
        raise MethodUnsupportedError(f"{method_name} is unsupported under train.distributed=ddp: {reason}. Methods "
                                     f"that run under ddp: {runnable}; run {method_name} with train.distributed=fsdp2 "
                                     "or on one device")


@torch.no_grad()
def replicate(model: nn.Module, ctx) -> nn.Module:
    """Rank 0's parameters and buffers on every rank (in place, one broadcast per tensor), before the method builds
    masters from them; the model is on ctx.device already. A model not placed yet (train.ddp_shard_frozen: built on
    the meta device or loaded on the CPU) is left as it is: every rank builds it the same way (`placement`)."""
    import torch.distributed as dist

    if not placed(model, ctx.device):
        return model
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)
    return model


class DataParallel:
    """What the loop needs for one ddp run: the gradient averaging attached to the method, and the context each
    micro-batch's forward and backward run in (the last one of a step averages, the others accumulate)."""

    def __init__(self, model: nn.Module, method, ctx, reduce_dtype: str = "fp32", max_in_flight: int = MAX_IN_FLIGHT,
                 shard_frozen: bool | dict = False, place=None):
        check_method_supported(method.name)
        self.ctx = ctx
        self.shard_frozen = shard_frozen
        optimizer = getattr(method, "optimizer", None)
        problem = type(method).frozen_sharding_problem(method.options) if shard_frozen else None
        if shard_frozen and (problem or not isinstance(optimizer, BlockOptimizer)):
            raise MethodUnsupportedError(f"train.ddp_shard_frozen with method {method.name}: "
                                         f"{problem or 'it keeps no BlockOptimizer'}; leave it false")
        if isinstance(optimizer, BlockOptimizer):
            optimizer.enable_data_parallel(None, reduce_dtype=reduce_dtype, broadcast_weights=False,
                                           max_in_flight=max_in_flight)
            self.sync = optimizer.gradient_sync
            if shard_frozen:  # a dict: shard_frozen_blocks' options (benchmarks/multi_gpu.py --shard-prefetch)
                optimizer.shard_frozen_blocks(model, place=place, **(shard_frozen if shard_frozen is not True else {}))
        else:
            masters = getattr(method, "master_weights", None)
            if not isinstance(masters, FP32MasterWeights):
                raise MethodUnsupportedError(f"{method.name} keeps no fp32 masters to average gradients on")
            self.sync = BlockGradientSync(None, reduce_dtype=reduce_dtype, max_in_flight=max_in_flight)
            self.sync.attach(masters)

    def micro_batch(self, last: bool):
        """Context for one micro-batch's forward and backward: averaged when it is the last of the step."""
        return contextlib.nullcontext() if last else self.sync.no_sync()

    def describe(self) -> dict:
        return {"reduce_dtype": str(self.sync.reduce_dtype).removeprefix("torch."),
                "bucket_numel": self.sync.bucket_numel, "max_in_flight": self.sync.max_in_flight,
                "optimizer_states": "replicated", "frozen_blocks": "sharded" if self.shard_frozen else "replicated"}


def data_parallel_for(model: nn.Module, method, ctx, cfg, seed: int = 0) -> DataParallel | None:
    """The loop's DataParallel under train.distributed=ddp (None otherwise); train.ddp_shard_frozen needs ddp. A model
    not on the device yet (train.ddp_shard_frozen) is placed there unit by unit while it is sharded."""
    if ctx is None or ctx.mode != "ddp":
        if cfg.ddp_shard_frozen:
            raise MethodUnsupportedError("train.ddp_shard_frozen needs train.distributed=ddp under torchrun; this run "
                                         f"is {'one process' if ctx is None else ctx.mode}: leave it false")
        return None
    return DataParallel(model, method, ctx, cfg.ddp_reduce_dtype, shard_frozen=cfg.ddp_shard_frozen,
                        place=placement(model, ctx.device, seed))


def placed(model: nn.Module, device: torch.device) -> bool:
    """Whether every parameter and buffer of `model` is on `device` already."""
    return all(t.device.type == device.type for t in list(model.parameters()) + list(model.buffers()))


def placement(model: nn.Module, device: torch.device, seed: int):
    """shard_frozen_blocks' `place` for a model that is not on `device` yet (None when it is): one module's own
    parameters go there, the Parameter objects kept (torch.utils.swap_tensors); a module built on the meta device
    gets transformers' random init for its type, seeded by the run's seed and the module's name (the same weights on
    every rank, one module at a time, so the whole model never sits on one GPU), a module loaded on the CPU is moved."""
    import zlib

    from experiments.distributed import rebuild_buffers

    if placed(model, device):
        return None

    @torch.no_grad()
    def place(name: str, module: nn.Module) -> None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's RNG untouched
            _place(name, module)

    def _place(name: str, module: nn.Module) -> None:
        drawn = False
        for p in module.parameters(recurse=False):
            if p.device.type == device.type:
                continue  # placed already (a weight tied to one placed before)
            value = torch.empty_like(p, device=device) if p.is_meta else p.detach().to(device)
            drawn |= p.is_meta
            # swap_tensors keeps the Parameter object the optimizer holds (set_data cannot leave the meta device)
            torch.utils.swap_tensors(p, nn.Parameter(value, requires_grad=p.requires_grad))
        if drawn:
            torch.manual_seed(seed + zlib.crc32(name.encode()))
            model._init_weights(module)
        metas = {k for k, b in module.named_buffers(recurse=False) if b.is_meta}
        for key, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.device.type != device.type:
                module._buffers[key] = torch.empty_like(buffer, device=device) if key in metas else buffer.to(device)
        if metas:
            rebuild_buffers(name, module, device)
    return place


def frozen_shards(method):
    """The BlockOptimizer's FrozenBlockShards when train.ddp_shard_frozen sharded its frozen blocks, else None."""
    optimizer = getattr(method, "optimizer", None)
    return optimizer.frozen_shards if isinstance(optimizer, BlockOptimizer) else None


def gathered_model_state(model: nn.Module, method) -> dict | None:
    """With the frozen blocks sharded, the whole model's state dict on rank 0 (a collective: every rank calls it);
    None otherwise (model.state_dict() holds it)."""
    shards = frozen_shards(method)
    return shards.gathered_state_dict(model) if shards is not None else None


# --- checkpoints and the final model -------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, model: nn.Module, method, position, total_steps: int, ctx) -> None:
    """Rank 0 writes <run_dir>/checkpoint.pt (the replicas are identical) holding every rank's RNG states."""
    from experiments import checkpoint
    from experiments.distributed import gather_objects
    from experiments.results import CHECKPOINT_FILE

    rngs = gather_objects(checkpoint.rng_state(), ctx)
    state = gathered_model_state(model, method)
    if ctx.is_main:
        checkpoint.save_checkpoint(run_dir / CHECKPOINT_FILE, model, method, position, total_steps, rank_rng=rngs,
                                   model_state=state)
    ctx.barrier()


def load_checkpoint(resume_from: str, model: nn.Module, method, ctx):
    """Every rank loads the same checkpoint.pt and takes its own RNG states back."""
    from experiments import checkpoint

    shards = frozen_shards(method)
    load = (lambda state: shards.load_gathered_state_dict(model, state)) if shards is not None else None
    # frozen blocks sharded: the whole model's state is read into host memory, never onto one GPU
    where = ctx.device if shards is None else torch.device("cpu")
    return checkpoint.load_checkpoint(resume_from, model, method, where, rank=ctx.rank, world_size=ctx.world_size,
                                      load_model_state=load)


def save_model(model: nn.Module, path: Path, ctx, method=None) -> None:
    from experiments.loop import save_final_model

    state = gathered_model_state(model, method)
    if ctx.is_main:
        save_final_model(model, Path(path), state_dict=state)
    ctx.barrier()
