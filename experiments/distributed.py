"""Training on several processes (GPUs) with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

Launch: `torchrun --nproc_per_node N -m experiments.run --config ... train.distributed=fsdp2`. torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them, starts the process group (NCCL on
GPUs, gloo on the CPU) and a 1-D device mesh over all ranks.

What is sharded: every transformer layer is its own FSDP2 unit and the root module (embeddings, final norm, head) is
one more, so each parameter is a DTensor split along dim 0 over the N ranks, and a layer is all-gathered only while it
runs. Frozen parameters may sit inside a unit; which parameters receive gradients is decided by `requires_grad` at each
forward, so BAdam switches blocks without re-wrapping the model. Methods keep working on the sharded parameters: an fp32
master (`p.detach().float()`) of a DTensor is a sharded fp32 DTensor, FSDP2 calls post-accumulate-grad hooks after its
reduce-scatter (so `FP32MasterWeights` folds the averaged, sharded gradient), and torch optimizers and clipping accept
DTensors. Gradients are reduce-scattered in the weights' storage dtype (bf16 for bf16 weights), as on one GPU, where
each micro-batch's gradient is bf16 before it is folded into fp32.

Data: micro-batches are dealt round-robin (rank r takes micro-batches r, r+N, ...; only whole rounds), and FSDP2
averages gradients over the ranks, so one optimizer step on N ranks with grad_accum G sees exactly the micro-batches that
one process with grad_accum N*G would see, and computes the same average.

Metrics: each step's record from every rank is merged into one (loss averaged, tokens summed, times and memory as the
maximum over ranks, peak memory also kept per rank) and only rank 0 writes files. Checkpoints:
experiments/distributed_checkpoint.py.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import warnings
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from baselines.errors import MethodUnsupportedError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = "torchrun --nproc_per_node N -m experiments.run --config ... train.distributed=fsdp2"

# Which methods run sharded is declared by each method (Method.fsdp2_unsupported: why not; Method.fsdp2_note: what it
# costs; a class that says nothing is refused as not verified). Every method that does not refuse runs sharded and
# matches one process on the same global batch: badam, adam and lora are compared in tests/distributed; sgd, bsgd, lomo,
# badam_official (fp32, within 1e-8) and adam_bf16 (bf16 rounding) were compared the same way by hand; galore and
# galore_layerwise differ as much as GaLore does in one process when the same gradient is only summed in another order
# (its SVD projector amplifies rounding on a tiny random model). lisa and blockllm (same subsets on every rank, fp32
# weights within 2e-5 at lr 1e-3) and muon (within 9e-5: its bf16 Newton-Schulz iteration on DTensors sums in another
# order) were compared the same way by hand (issue 16). Each refusal was seen on 2 gloo processes.


# --- process group and mesh ----------------------------------------------------------------------------------------
class LaunchError(RuntimeError):
    """The job was not started the way a distributed run must be (e.g. plain python instead of torchrun)."""


@dataclasses.dataclass
class DistContext:
    """This process's place in the job. `mesh` is the 1-D device mesh FSDP2 shards over; `mode` is
    train.distributed (fsdp2, or ddp: experiments/ddp.py)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    mode: str = "fsdp2"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file of the run; the others only compute."""
        return self.rank == 0

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def describe(self) -> dict:
        return {"mode": self.mode, "world_size": self.world_size, "backend": self.backend,
                "device_type": self.device.type}


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: str = "auto", mode: str = "fsdp2") -> DistContext:
    """Start (or join the already started) process group from torchrun's environment; one GPU per process on CUDA.

    device: "auto" (CUDA when available), "cuda" or "cpu". A missing launcher variable is one clear error."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    missing = [name for name in TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise LaunchError(f"train.distributed={mode} needs the process-group environment that torchrun sets; "
                          f"{', '.join(missing)} missing. Launch with: {LAUNCH_HINT.replace('fsdp2', mode)}")
    if device not in ("auto", "cuda", "cpu"):
        raise LaunchError(f"device {device!r} is not valid for a distributed run; choose one of auto, cuda, cpu "
                         "(each process takes cuda:LOCAL_RANK itself)")
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise LaunchError("device 'cuda' was asked for, but no CUDA device is available; use device=cpu (gloo)")
        if local_rank >= torch.cuda.device_count():
            raise LaunchError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; start "
                               "at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank)  # before NCCL starts, so each rank's communicator uses its own GPU
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=dev if use_cuda else None)
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError("a process group is already running with another rank/world size than torchrun's")
    note = single_gpu_fsdp2_note(mode, world, use_cuda)
    if note:
        warnings.warn(note, stacklevel=2)
    mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("shard",))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev,
                       backend=dist.get_backend(), mesh=mesh, mode=mode)


def single_gpu_fsdp2_note(mode: str, world_size: int, cuda: bool) -> str | None:
    """What to tell a user who runs FSDP2 on a single GPU: it works, but costs throughput the plain path does not
    (measured, issue 18); None otherwise (CPU runs on gloo are tests and examples)."""
    if mode != "fsdp2" or world_size != 1 or not cuda:
        return None
    return ("train.distributed=fsdp2 with one process: on one H100 FSDP2 made 0.69-0.85x the plain path's tokens/s "
            "(Llama 3-8B BAdam; benchmarks/README.md, Multi-GPU measurements); on one GPU train.distributed=none "
            "is faster unless the model does not fit")


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# --- which methods run sharded -------------------------------------------------------------------------------------
def check_method_supported(method_name: str) -> None:
    """Raise MethodUnsupportedError (the harness records status error, kind "unsupported") for methods that cannot
    run on FSDP2-sharded parameters (their class says why: Method.fsdp2_unsupported)."""
    from baselines.registry import get_method_class, method_names

    reason = get_method_class(method_name).fsdp2_unsupported
    if reason is not None:
        runnable = ", ".join(n for n in method_names() if get_method_class(n).supports_fsdp2())
        raise MethodUnsupportedError(f"{method_name} is unsupported under train.distributed=fsdp2: {reason}. Run it "
                                     f"with train.distributed=none on one device; methods that run under fsdp2: "
                                     f"{runnable}")


def method_note(method_name: str) -> str | None:
    """What running `method_name` sharded costs or changes (Method.fsdp2_note), None when nothing."""
    from baselines.registry import get_method_class

    return get_method_class(method_name).fsdp2_note


# --- sharding -------------------------------------------------------------------------------------------------------
def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of the model's repeated layer stack (Llama `model.layers.N`, GPT-2 `transformer.h.N`, BERT
    `encoder.layer.N`, the same inside a peft wrapper), found from parameter names as BAdam's partition does."""
    from badam.partition import find_layer_stack

    stack = find_layer_stack([name for name, _ in model.named_parameters()])
    container = model.get_submodule(stack.path) if stack.path else model
    return [container.get_submodule(str(i)) for i in stack.indices]


def shard_model(model: nn.Module, ctx: DistContext, *, reshard_after_forward: bool = True,
                separate_ends: bool = False, forward_prefetch: int = 0, keep_gathered_layers: int = 0) -> nn.Module:
    """Apply fully_shard to each transformer layer, then to the root (which keeps the embeddings, the final norm and
    the output head); parameters move to ctx.device (a model built on the meta device stays there until
    `materialize`). Returns the same module object, now an FSDPModule.

    separate_ends=True gives the input embeddings and the output head (when untied) groups of their own, the head and
    root keeping their gathered weights after forward (FSDP2's advice for the root). It holds less per GPU but was
    slower in our measurements, so it is not the default: 2 x H200, Llama 3-8B BAdam, batch 2 x 728 per GPU, four
    alternating runs: 12.85 vs 13.75 GiB per GPU, 9,272-9,592 vs 9,689-10,163 tokens/s
    (results/bench/multi_gpu_h200x2_*).

    forward_prefetch=N > 0 has each layer (and the root) issue the all-gathers of the next N layers as soon as its own
    weights are gathered. FSDP2 otherwise issues a layer's all-gather when the CPU reaches that layer; when the CPU is
    the bottleneck (small per-GPU batches: measured 2 x H200, batch 2 x 728, ~200 ms of GPU work in a ~300 ms step),
    the gather then cannot overlap the previous layer's compute. Recomputation during backward does not prefetch
    (FSDP2 skips forward prefetch there), and backward keeps FSDP2's own one-layer prefetch.

    keep_gathered_layers=M (-1: all) lets up to M of the layers that backward reaches keep their gathered weights from
    forward to backward, chosen again at every forward (BAdam: the active layer and above; see
    experiments/fsdp_gather.py)."""
    from torch.distributed.fsdp import fully_shard

    if forward_prefetch < 0:
        raise ValueError(f"forward_prefetch must be >= 0 (layers gathered ahead); got {forward_prefetch}")
    if keep_gathered_layers and not reshard_after_forward:
        raise ValueError("keep_gathered_layers chooses which layers stay gathered; reshard_after_forward=False "
                         "already keeps every layer gathered: use one of them")
    layers = transformer_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=ctx.mesh, reshard_after_forward=reshard_after_forward)
    if not separate_ends:
        fully_shard(model, mesh=ctx.mesh, reshard_after_forward=reshard_after_forward)
    else:
        _shard_ends_separately(model, ctx, reshard_after_forward)
    if forward_prefetch:
        model.set_modules_to_forward_prefetch(layers[:forward_prefetch])
        for i, layer in enumerate(layers):
            layer.set_modules_to_forward_prefetch(layers[i + 1:i + 1 + forward_prefetch])
    from experiments.fsdp_gather import GatherPolicy

    GatherPolicy(model, layers, keep_gathered_layers)  # no backward gather of layers backward does not reach
    return model


def _shard_ends_separately(model: nn.Module, ctx: DistContext, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import fully_shard

    embeddings, head = _embeddings_and_head(model)
    if embeddings is not None:
        fully_shard(embeddings, mesh=ctx.mesh, reshard_after_forward=reshard_after_forward)
    if head is not None:
        fully_shard(head, mesh=ctx.mesh, reshard_after_forward=False)
    fully_shard(model, mesh=ctx.mesh, reshard_after_forward=False)


def _embeddings_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The input-embedding and output-head modules to shard as groups of their own; (None, None) when they share a
    weight (tied embeddings: one parameter cannot sit in two groups) or the model does not expose them."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    embeddings = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    embeddings = embeddings if isinstance(embeddings, nn.Module) else None
    head = head if isinstance(head, nn.Module) else None
    if embeddings is not None and head is not None:
        if any(p is q for p in embeddings.parameters() for q in head.parameters()):
            return None, None
    return embeddings, head


def shard_for_training(model: nn.Module, ctx: DistContext, seed: int, forward_prefetch: int = 0,
                       keep_gathered_layers: int = 0) -> nn.Module:
    """What the loop does after method.prepare_model: shard, and give a meta-device model (random sources under
    fsdp2) its shards and random init."""
    shard_model(model, ctx, forward_prefetch=forward_prefetch, keep_gathered_layers=keep_gathered_layers)
    if is_meta(model):
        materialize(model, ctx, seed)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# --- random models built without ever holding the full model ----------------------------------------------------
def _rebuild_buffers(model: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (rotary inverse frequencies) have no value after `to_empty`: recompute them by building
    the owning module again, alone, on the CPU (it takes only the config), and copying its buffers over."""
    for name, module in model.named_modules():
        rebuild_buffers(name, module, device)


def rebuild_buffers(name: str, module: nn.Module, device: torch.device) -> None:
    """_rebuild_buffers for one module's own buffers (allocated on `device`, without values)."""
    own = dict(module.named_buffers(recurse=False))
    if not own:
        return
    if "RotaryEmbedding" not in type(module).__name__ or not hasattr(module, "config"):
        raise NotImplementedError(f"meta-device init restores only rotary-embedding buffers; module {name!r} "
                                  f"({type(module).__name__}) has buffers {sorted(own)}: load this model with "
                                  "train.distributed=none or from a checkpoint")
    with torch.device("cpu"):
        fresh = type(module)(module.config)
    for buffer_name, value in fresh.named_buffers(recurse=False):
        own[buffer_name].copy_(value.to(device=device, dtype=own[buffer_name].dtype))


@torch.no_grad()
def materialize(model: nn.Module, ctx: DistContext, seed: int) -> nn.Module:
    """Allocate the shards of a model built on the meta device and sharded (each rank allocates only its shards)
    and give it transformers' random init. The same seed on every rank gives one consistent sharded model."""
    model.to_empty(device=ctx.device)
    for obj in list(model.modules()) + list(model.parameters()):
        obj.__dict__.pop("_is_hf_initialized", None)  # a flag left from construction would skip the init
    torch.manual_seed(seed)
    model.init_weights()
    for module in model.modules():
        # peft LoRA layers built on meta: transformers' init just drew their B matrices like any Linear; give the
        # adapters peft's own start (A Kaiming-uniform, B zero), so the adapted model starts as the base model
        reset = getattr(module, "reset_lora_parameters", None)
        if reset is not None and hasattr(module, "lora_A"):
            for adapter in list(module.lora_A.keys()):
                reset(adapter, True)
    _rebuild_buffers(model, ctx.device)
    return model


def is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def load_sharded_random_model(source: str, ctx: DistContext, *, dtype: str = "bf16", task: str = "causal_lm",
                              num_labels: int | None = None, attn_implementation: str | None = None,
                              gradient_checkpointing: bool = False, checkpointing_policy: str = "non-reentrant",
                              seed: int = 0, tokenizer=None,
                              prepare: Callable[[nn.Module], nn.Module] | None = None, separate_ends: bool = False,
                              reshard_after_forward: bool = True, forward_prefetch: int = 0,
                              keep_gathered_layers: int = 0):
    """(model, tokenizer) for "random:<name>", built on the meta device, passed through `prepare` (a method's
    prepare_model, while still on meta) when given, sharded, then materialised: no rank ever holds more than its shards
    plus one layer, so Llama 3-70B fits 4 GPUs. Pretrained sources load normally and are sharded with shard_model."""
    from experiments.models import load_model

    if not source.startswith("random:"):
        raise ValueError(f"load_sharded_random_model builds 'random:<name>' sources only, not {source!r}")
    model, tok = load_model(source, dtype=dtype, device="meta", task=task, num_labels=num_labels,
                            attn_implementation=attn_implementation, gradient_checkpointing=gradient_checkpointing,
                            checkpointing_policy=checkpointing_policy, tokenizer=tokenizer, seed=seed)
    if prepare is not None:
        model = prepare(model)
    shard_model(model, ctx, separate_ends=separate_ends, reshard_after_forward=reshard_after_forward,
                forward_prefetch=forward_prefetch, keep_gathered_layers=keep_gathered_layers)
    materialize(model, ctx, seed)
    return model, tok


# --- data --------------------------------------------------------------------------------------------------------
def deal_round_robin(batches: Iterable, rank: int, world_size: int) -> Iterator:
    """Rank `rank`'s share of a micro-batch stream: items rank, rank+N, ...; a last incomplete round is dropped so
    that every rank gets the same number of micro-batches (a rank waiting for a missing one would hang)."""
    round_ = []
    for item in batches:
        round_.append(item)
        if len(round_) == world_size:
            yield round_[rank]
            round_ = []


class _DealtBatches:
    """One epoch of dealt micro-batches; has a length when the source has one (the loop counts steps with it)."""

    def __init__(self, source, rank: int, world_size: int):
        self.source, self.rank, self.world_size = source, rank, world_size

    def __iter__(self):
        return deal_round_robin(self.source, self.rank, self.world_size)

    def __len__(self):
        return len(self.source) // self.world_size


def shard_batches_fn(batches_fn: Callable[[int], Iterable], ctx: DistContext) -> Callable[[int], Iterable]:
    """batches_fn(epoch) -> this rank's micro-batches of that epoch (see deal_round_robin)."""
    def sharded(epoch: int):
        source = batches_fn(epoch)
        if hasattr(source, "__len__"):
            return _DealtBatches(source, ctx.rank, ctx.world_size)
        return deal_round_robin(source, ctx.rank, ctx.world_size)

    return sharded


# --- metrics -----------------------------------------------------------------------------------------------------
MEAN_KEYS = ("loss", "eval_loss")
SUM_KEYS = ("tokens",)
MAX_KEYS = ("t_forward_ms", "t_backward_ms", "t_update_ms", "t_step_ms", "mem_allocated_bytes",
            "mem_peak_allocated_bytes", "mem_peak_reserved_bytes", "compiled_graphs")
PER_RANK_KEYS = ("mem_peak_allocated_bytes", "mem_peak_reserved_bytes")


def _numbers(records: list[dict], key: str) -> list[float]:
    return [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def merge_step_records(records: list[dict]) -> dict:
    """One metrics.jsonl record from every rank's record of the same step (records[i] from rank i): loss averaged
    (each rank's loss is the mean over its micro-batches, so the mean over ranks is the global batch's), tokens
    summed, times and memory the maximum over ranks (the slowest rank sets the step time, the fullest GPU the
    memory), per-rank peaks kept as lists, tokens_per_s = all tokens / the slowest step. Other keys: rank 0's."""
    merged = dict(records[0])
    for key in MEAN_KEYS:
        values = _numbers(records, key)
        if values:
            merged[key] = statistics.fmean(values)
    for key in SUM_KEYS:
        values = _numbers(records, key)
        if values:
            merged[key] = int(sum(values))
    for key in MAX_KEYS:
        values = _numbers(records, key)
        if values:
            merged[key] = max(values)
    for key in PER_RANK_KEYS:
        if any(key in r for r in records):
            merged[f"{key}_per_rank"] = [r.get(key) for r in records]
    step_ms = merged.get("t_step_ms")
    if isinstance(merged.get("tokens"), int) and isinstance(step_ms, (int, float)) and step_ms > 0:
        merged["tokens_per_s"] = merged["tokens"] / (step_ms / 1000.0)
    merged["world_size"] = len(records)
    return merged


def merge_memory_summaries(summaries: list[dict]) -> dict:
    """summary.json's memory block for the job: peaks are the maximum over ranks and are also kept per rank; the
    split is that of the rank with the highest peak (every figure per GPU: sharded tensors count their local shard)."""
    peaks = [s.get("peak_allocated_bytes") or 0 for s in summaries]
    top = max(range(len(summaries)), key=lambda i: peaks[i])
    merged = dict(summaries[top])
    merged["peak_allocated_bytes"] = max(peaks)
    merged["peak_allocated_bytes_per_rank"] = peaks
    reserved = [s.get("peak_reserved_bytes") for s in summaries]
    if any(r is not None for r in reserved):
        merged["peak_reserved_bytes"] = max(r or 0 for r in reserved)
        merged["peak_reserved_bytes_per_rank"] = reserved
    if any("process_peak_rss_bytes" in s for s in summaries):
        merged["process_peak_rss_bytes_per_rank"] = [s.get("process_peak_rss_bytes") for s in summaries]
    merged["split_rank"] = top
    merged["per_gpu_note"] = ("every byte figure is per rank (sharded tensors count the local shard); "
                              "peaks are the maximum over ranks, *_per_rank list each rank's")
    return merged


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's `obj` on every rank (e.g. the run directory rank 0 chose)."""
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_step_record(record: dict, ctx: DistContext) -> dict:
    return merge_step_records(gather_objects(record, ctx))


def reduce_memory_summary(memory: dict, ctx: DistContext) -> dict:
    return merge_memory_summaries(gather_objects(memory, ctx))


# --- the trained model as one file set ----------------------------------------------------------------------------
def full_state_dict(model: nn.Module) -> dict:
    """The unsharded model state on rank 0's CPU (empty on the other ranks); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_full_model(model: nn.Module, path, ctx: DistContext) -> None:
    """Write the trained model as a transformers folder from rank 0 (the shards are gathered to its CPU)."""
    from pathlib import Path

    if hasattr(model, "merge_and_unload"):
        raise NotImplementedError("output.save_model with a LoRA (peft) model is not supported under "
                                  "train.distributed=fsdp2: merging adapters needs unsharded layers; train with "
                                  "train.distributed=none to save a merged model")
    state = full_state_dict(model)
    if ctx.is_main:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, state_dict=state)
    ctx.barrier()
