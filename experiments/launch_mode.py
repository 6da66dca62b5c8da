"""train.distributed=auto, the default: the mode a launch gets when the config does not name one (issue 18).

One process: none, the plain path (the fastest on one GPU; FSDP2 there costs 15-30 %, benchmarks/README.md). Several
processes (torchrun sets WORLD_SIZE > 1):
  * ddp when the method runs under ddp and the model fits one device replicated: every GPU holds the whole model and
    only the trained parameters' gradients travel, which for BAdam is one layer per step (2 x H100, Llama 3-8B:
    1.7-2.0x one GPU at batch 2 x 728 per GPU, 1.97x at batch 8);
  * otherwise, for a block method (badam, bsgd), ddp with its frozen blocks sharded (train.ddp_shard_frozen, set
    here) when that fits: each GPU keeps 1/N of the layer stack and the whole active block with its states, which
    is faster than FSDP2 for the same method (2 x H200, Llama 3-70B: 2,298 against 2,057 tokens/s, 83.9 against
    81.6 GiB per GPU; 2 x H100, 8B at batch 2: 1.39x FSDP2's tokens/s);
  * otherwise fsdp2 when the method runs sharded (the model, masters and states spread over the GPUs);
  * otherwise a ConfigError naming what each mode would need.
train.ddp_shard_frozen=true given with auto asks for the second layout under torchrun whatever the memory says.
"Fits": the analytic bytes of the 16-bit weights and the trained parameters' fp32 masters, gradients and moments
(experiments/memory_model.py: the paper's formulas for badam, adam, lora and lomo; sgd / bsgd: 12 bytes per trained
parameter; other methods: the weights alone, a lower bound; sharded frozen blocks: frozen_sharded_bytes) at most
FIT_SHARE of the device's memory, the rest left for activations, temporaries and the allocator.
The parameter counts come from the model's architecture built on the meta device (no weights are read). On the CPU
(gloo) every model is taken to fit. The chosen mode and why are printed once (rank 0), and the run's config.yaml
records the mode (and train.ddp_shard_frozen), not "auto", so a resume compares like with like.
"""
from __future__ import annotations

import dataclasses
import os

from experiments.config import ConfigError, RunConfig, build_method_options
from experiments.distributed_modes import world_size
from experiments.memory_model import TRAINED_EXTRA_BYTES, frozen_sharded_bytes

FIT_SHARE = 0.8  # of the device memory the replicated weights and states may take; the rest is for activations
SGD_TRAINED_BYTES = 12  # sgd / bsgd: fp32 master, gradient, momentum per trained parameter (AdamW: 16)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    params: int        # all parameters
    layers: int        # decoder layers (BAdam's D with one block per layer)
    hidden: int        # hidden size
    layer_stack: int   # parameters inside the layer stack (what sharding the frozen blocks splits)


@dataclasses.dataclass(frozen=True)
class Choice:
    mode: str                   # none | ddp | fsdp2
    why: str
    shard_frozen: bool = False  # ddp with the frozen blocks sharded (train.ddp_shard_frozen)


def model_shape(cfg: RunConfig) -> ModelShape:
    """The parameter counts of cfg.model.source, from its architecture on the meta device."""
    from badam.partition import find_layer_stack
    from experiments.models import count_parameters, load_model

    model, _ = load_model(cfg.model.source, dtype=cfg.model.dtype, device="meta", task=cfg.model.task,
                          num_labels=cfg.model.num_labels, tokenizer=False)
    config = model.config
    named = list(model.named_parameters())
    try:
        stack = find_layer_stack([n for n, _ in named]).path + "."
        in_stack = sum(p.numel() for n, p in named if n.startswith(stack))
    except ValueError:  # no repeated layers: nothing a block sharding could split
        in_stack = 0
    return ModelShape(count_parameters(model), getattr(config, "num_hidden_layers", 1) or 1,
                      getattr(config, "hidden_size", 1), in_stack)


def replicated_bytes(method: str, options: dict, params: int, layers: int, hidden: int,
                     weight_bytes: int) -> tuple[int, str]:
    """Bytes one device holds when every rank keeps the whole model, and which formula gave them."""
    from baselines.registry import get_method_class
    from experiments.memory_model import WEIGHT_BYTES, paper_formula

    key = {"badam": "badam", "adam": "adam", "lomo": "lomo"}.get(method)
    if method == "lora":
        key = f"lora-rank{options.get('rank', get_method_class('lora').Options().rank)}"
    if method in ("sgd", "bsgd"):  # fp32 master, gradient and momentum (an upper bound without momentum)
        trained = params if method == "sgd" else params / layers
        formula = "2M + 12M" if method == "sgd" else "2M + 12M/D"
        return round(weight_bytes * params + SGD_TRAINED_BYTES * trained), formula
    if key is None:
        return weight_bytes * params, "the weights alone (no formula for this method)"
    estimate = paper_formula(key, params, layers, hidden)
    return estimate.bytes + (weight_bytes - WEIGHT_BYTES) * params, estimate.formula


def device_memory(cfg: RunConfig) -> int | None:
    """Bytes of the GPU this rank will use (cuda:LOCAL_RANK); None on the CPU."""
    import torch

    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0") or 0)).total_memory)


def choose(cfg: RunConfig, world: int) -> Choice:
    """The layout train.distributed=auto gives a launch of `world` processes, and why."""
    from baselines.registry import get_method_class

    if world <= 1:
        return Choice("none", "one process")
    cls = get_method_class(cfg.method.name)
    ddp_ok, fsdp2_ok = cls.supports_ddp(), cls.supports_fsdp2()
    if not ddp_ok and not fsdp2_ok:
        raise ConfigError(f"started as {world} processes (torchrun), but method {cfg.method.name!r} runs neither under "
                          f"train.distributed=ddp ({cls.ddp_unsupported}) nor fsdp2 ({cls.fsdp2_unsupported}); run it "
                          "as one process")
    options = build_method_options(cfg.method)
    unshardable = cls.ddp_unsupported or cls.frozen_sharding_problem(options)
    if cfg.train.ddp_shard_frozen:
        if unshardable:
            raise ConfigError(f"train.ddp_shard_frozen=true, but method {cfg.method.name!r} cannot shard its frozen "
                              f"blocks under ddp: {unshardable}")
        return Choice("ddp", "train.ddp_shard_frozen=true asks for ddp with the frozen blocks sharded", True)
    memory = device_memory(cfg)
    if ddp_ok and memory is None:
        return Choice("ddp", f"{world} processes on the CPU (gloo); method {cfg.method.name} runs replicated")
    if not ddp_ok:
        return Choice("fsdp2", f"method {cfg.method.name} does not run under ddp ({cls.ddp_unsupported}); sharded "
                               "instead")
    shape = model_shape(cfg)
    weight_bytes = {"fp32": 4}.get(cfg.model.dtype, 2)
    need, formula = replicated_bytes(cfg.method.name, cfg.method.options, shape.params, shape.layers, shape.hidden,
                                     weight_bytes)
    gib, budget = 2 ** 30, FIT_SHARE * memory
    against = f"against {FIT_SHARE:.0%} of {memory / gib:.1f} GiB"
    sizes = (f"{need / gib:.1f} GiB of weights and states per GPU ({formula}, {shape.params / 1e9:.2f}B parameters) "
             f"{against}")
    if need <= budget:
        return Choice("ddp", f"the model fits one GPU replicated: {sizes}")
    if not unshardable and shape.layer_stack:
        # the largest block trains whole on every GPU: the embedding or head block where they are blocks
        outside = getattr(options, "include_embedding", False) or getattr(options, "include_lm_head", False)
        block = max(shape.layer_stack / shape.layers, shape.params - shape.layer_stack if outside else 0)
        extra = SGD_TRAINED_BYTES if cfg.method.name == "bsgd" else TRAINED_EXTRA_BYTES
        held = frozen_sharded_bytes(shape.params, shape.layer_stack, block, world, weight_bytes=weight_bytes,
                                    trained_extra=extra)
        if held.bytes <= budget:
            return Choice("ddp", f"the model does not fit one GPU replicated ({sizes}); with its frozen blocks "
                                 f"sharded over {world} GPUs it needs {held.bytes / gib:.1f} GiB per GPU "
                                 f"({held.formula}) {against}", True)
    if not fsdp2_ok:
        return Choice("ddp", f"replicated it may not fit ({sizes}), but method {cfg.method.name} does not run under "
                             f"fsdp2 ({cls.fsdp2_unsupported})")
    return Choice("fsdp2", f"the model does not fit one GPU replicated ({sizes}): sharded over {world} GPUs")


def resolve_distributed(cfg: RunConfig, *, announce: bool = True) -> RunConfig:
    """cfg with train.distributed=auto replaced by the chosen mode (other values are returned unchanged)."""
    if cfg.train.distributed != "auto":
        return cfg
    world = world_size()
    choice = choose(cfg, world)
    if choice.mode != "none" and cfg.train.device.startswith("cuda:"):
        raise ConfigError(f"train.device={cfg.train.device!r} with {world} processes: each process takes "
                          "cuda:LOCAL_RANK itself; set train.device=cuda (or auto)")
    if announce and world > 1 and int(os.environ.get("RANK", "0") or 0) == 0:
        sharded = " with the frozen blocks sharded (train.ddp_shard_frozen=true)" if choice.shard_frozen else ""
        print(f"train.distributed=auto -> {choice.mode}{sharded}: {choice.why} (set train.distributed to choose)",
              flush=True)
    shard_frozen = cfg.train.ddp_shard_frozen or choice.shard_frozen  # one process: the loop refuses a true one
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, distributed=choice.mode,
                                                              ddp_shard_frozen=shard_frozen))
