"""train.distributed=auto, the default: the mode a launch gets when the config does not name one (issue 18).

One process: none, the plain path (the fastest on one GPU; FSDP2 there costs 15-30 %, benchmarks/README.md). Several
processes (torchrun sets WORLD_SIZE > 1):
  * ddp when the method runs under ddp and the model fits one device replicated: every GPU holds the whole model and
    only the trained parameters' gradients travel, which for BAdam is one layer per step (2 x H100, Llama 3-8B:
    1.7-2.0x one GPU at batch 2 x 728 per GPU, 1.97x at batch 8);
  * otherwise fsdp2 when the method runs sharded (the model, masters and states spread over the GPUs);
  * otherwise a ConfigError naming what each mode would need.
"Fits": the analytic bytes of the 16-bit weights and the trained parameters' fp32 masters, gradients and moments
(experiments/memory_model.py: the paper's formulas for badam, adam, lora and lomo; sgd / bsgd: 12 bytes per trained
parameter; other methods: the weights alone, a lower bound) at most FIT_SHARE of the device's memory, the rest left
for activations, temporaries and the allocator.
The parameter count comes from the model's architecture built on the meta device (no weights are read). On the CPU
(gloo) every model is taken to fit. The chosen mode and why are printed once (rank 0), and the run's config.yaml
records the mode, not "auto", so a resume compares like with like.
"""
from __future__ import annotations

import dataclasses
import os

from experiments.config import ConfigError, RunConfig
from experiments.distributed_modes import world_size

FIT_SHARE = 0.8  # of the device memory the replicated weights and states may take; the rest is for activations


def model_shape(cfg: RunConfig) -> tuple[int, int, int]:
    """(parameters, decoder layers, hidden size) of cfg.model.source, from its architecture on the meta device."""
    from experiments.models import count_parameters, load_model

    model, _ = load_model(cfg.model.source, dtype=cfg.model.dtype, device="meta", task=cfg.model.task,
                          num_labels=cfg.model.num_labels, tokenizer=False)
    config = model.config
    return count_parameters(model), getattr(config, "num_hidden_layers", 1) or 1, getattr(config, "hidden_size", 1)


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
        return round(weight_bytes * params + 12 * trained), formula
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


def choose(cfg: RunConfig, world: int) -> tuple[str, str]:
    """(mode, why) for train.distributed=auto with `world` processes."""
    from baselines.registry import get_method_class

    if world <= 1:
        return "none", "one process"
    cls = get_method_class(cfg.method.name)
    ddp_ok, fsdp2_ok = cls.supports_ddp(), cls.supports_fsdp2()
    if not ddp_ok and not fsdp2_ok:
        raise ConfigError(f"started as {world} processes (torchrun), but method {cfg.method.name!r} runs neither under "
                          f"train.distributed=ddp ({cls.ddp_unsupported}) nor fsdp2 ({cls.fsdp2_unsupported}); run it "
                          "as one process")
    memory = device_memory(cfg)
    if ddp_ok and memory is None:
        return "ddp", f"{world} processes on the CPU (gloo); method {cfg.method.name} runs replicated"
    if ddp_ok:
        params, layers, hidden = model_shape(cfg)
        weight_bytes = {"fp32": 4}.get(cfg.model.dtype, 2)
        need, formula = replicated_bytes(cfg.method.name, cfg.method.options, params, layers, hidden, weight_bytes)
        gib = 2 ** 30
        sizes = (f"{need / gib:.1f} GiB of weights and states per GPU ({formula}, {params / 1e9:.2f}B parameters) "
                 f"against {FIT_SHARE:.0%} of {memory / gib:.1f} GiB")
        if need <= FIT_SHARE * memory:
            return "ddp", f"the model fits one GPU replicated: {sizes}"
        if not fsdp2_ok:
            return "ddp", (f"replicated it may not fit ({sizes}), but method {cfg.method.name} does not run under "
                           f"fsdp2 ({cls.fsdp2_unsupported})")
        return "fsdp2", f"the model does not fit one GPU replicated ({sizes}): sharded over {world} GPUs"
    return "fsdp2", f"method {cfg.method.name} does not run under ddp ({cls.ddp_unsupported}); sharded instead"


def resolve_distributed(cfg: RunConfig, *, announce: bool = True) -> RunConfig:
    """cfg with train.distributed=auto replaced by the chosen mode (other values are returned unchanged)."""
    if cfg.train.distributed != "auto":
        return cfg
    world = world_size()
    mode, why = choose(cfg, world)
    if mode != "none" and cfg.train.device.startswith("cuda:"):
        raise ConfigError(f"train.device={cfg.train.device!r} with {world} processes: each process takes "
                          "cuda:LOCAL_RANK itself; set train.device=cuda (or auto)")
    if announce and world > 1 and int(os.environ.get("RANK", "0") or 0) == 0:
        print(f"train.distributed=auto -> {mode}: {why} (set train.distributed to choose)", flush=True)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, distributed=mode))
