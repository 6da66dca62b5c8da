"""Hugging Face Trainer integration for BlockOptimizer and BlockOptimizerRatio.

Usage:
    from badam.hf import BAdamCallback, create_badam_optimizer
    optimizer = create_badam_optimizer(model, lr=1e-6, weight_decay=0.0, switch_block_every=100)
    # ratio mode: create_badam_ratio_optimizer(model, lr=1e-5, update_ratio=0.1, switch_every=100)
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(optimizer, None),
                      callbacks=[BAdamCallback()])

What the callback fixes:
  * Activation (gradient) checkpointing. With reentrant checkpointing, a checkpointed layer whose input does not
    require grad returns an output that does not either, so ``loss.backward()`` fails with "element 0 of tensors does
    not require grad" once the embeddings are frozen (Ledzy/BAdam#2). The usual cure, ``enable_input_require_grads``,
    makes every layer's activations require grad, so backward then runs through all the frozen layers below the
    active block for nothing. We instead switch to NON-reentrant checkpointing and remove the input-require-grads hook:
    gradients reach the active block's parameters and backward stops there. (enable_block_checkpointing's policies
    "block" and "block-reentrant" choose the checkpointing per layer call instead: badam/checkpointing.py;
    "block-graphed" also replays the layers below the active block from CUDA graphs: badam/layer_graphs.py.)
  * Clipping and the logged gradient norm, where the gradient is not on ``p.grad``. BlockOptimizer's default keeps it
    there, so Trainer's own ``clip_grad_norm_(model.parameters())`` clips and logs it and the callback leaves it alone.
    BlockOptimizerRatio (and BlockOptimizer with ``gradients="master"``) keep it in fp32 off the model, where Trainer
    sees nothing and logs 0: just before the optimizer step the callback clips those gradients to
    ``args.max_grad_norm`` and writes their true norm into the logs.

This module imports transformers only when ``BAdamCallback`` is first used, so ``import badam`` stays torch-only.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from .block_optimizer import BlockOptimizer
from .checkpointing import block_checkpoint
from .layer_graphs import LayerGraphs
from .ratio import BlockOptimizerRatio

BLOCK_OPTIMIZERS = (BlockOptimizer, BlockOptimizerRatio)


def decay_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two param groups: matrices (>= 2-D: linear weights, embeddings) decayed, 1-D tensors (biases, norm gains)
    not — the usual convention, and what Trainer's name-based rule gives for Llama/GPT-2/BERT."""
    decay, no_decay = [], []
    for p in dict.fromkeys(model.parameters()):  # tied weights once
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# the two optimizers name their period differently (badam 1.4's names); the other one's name gets the right one
_OTHER_MODES_NAME = {"BlockOptimizer": ("switch_every", "switch_block_every"),
                     "BlockOptimizerRatio": ("switch_block_every", "switch_every")}


def _check_period_name(cls_name: str, kwargs: dict) -> None:
    wrong, right = _OTHER_MODES_NAME[cls_name]
    if wrong in kwargs:
        raise TypeError(f"{cls_name} takes {right}= (steps per {'block' if right == 'switch_block_every' else 'mask'}),"
                        f" not {wrong}= (the other optimizer's name)")


def create_badam_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0,
                           base_optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
                           base_kwargs: dict | None = None, **block_kwargs) -> BlockOptimizer:
    """AdamW (or `base_optimizer_cls`) over decay / no-decay groups, wrapped in a BlockOptimizer.
    `block_kwargs` go to BlockOptimizer (switch_block_every, switch_mode, start_block, block_prefix_list, ...)."""
    _check_period_name("BlockOptimizer", block_kwargs)
    base = base_optimizer_cls(decay_parameter_groups(model, weight_decay), lr=lr, **(base_kwargs or {}))
    return BlockOptimizer(base, list(model.named_parameters()), **block_kwargs)


def create_badam_ratio_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0,
                                 update_ratio: float = 0.1, **ratio_kwargs) -> BlockOptimizerRatio:
    """BlockOptimizerRatio over decay / no-decay groups; `ratio_kwargs` go to it (switch_every, mask_mode, ...)."""
    _check_period_name("BlockOptimizerRatio", ratio_kwargs)
    return BlockOptimizerRatio(decay_parameter_groups(model, weight_decay), list(model.named_parameters()),
                               update_ratio=update_ratio, lr=lr, **ratio_kwargs)


def find_block_optimizer(optimizer) -> BlockOptimizer | BlockOptimizerRatio | None:
    """The BlockOptimizer(Ratio) inside wrappers such as accelerate's AcceleratedOptimizer (kept as `.optimizer`)."""
    seen = 0
    while optimizer is not None and seen < 8:
        if isinstance(optimizer, BLOCK_OPTIMIZERS):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return None


def uses_checkpointing(model: torch.nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


CHECKPOINTING_POLICIES = ("block", "block-graphed", "block-reentrant", "block-reentrant-graphed", "non-reentrant")


def enable_block_checkpointing(model: torch.nn.Module, policy: str = "non-reentrant") -> LayerGraphs | None:
    """Activation checkpointing without the input-require-grads hook (see the module docstring). policy
    "non-reentrant" (default): non-reentrant checkpointing for every layer, transformers' way; "block": a layer call
    that nothing in it requires grad for (below BAdam's active block) runs without checkpointing, the others
    non-reentrant (badam/checkpointing.py); "block-reentrant": the same, but the layers above the active block
    reentrant (less host time, more GPU time; not with torch.autograd.grad or backward(inputs=...)). Measured in
    benchmarks/README.md ("Checkpointing policies"): block-reentrant makes CPU steps 0.76-0.78 as long, block changes
    them no more than the noise. "block-graphed": as "block", and the layers below the active block are replayed
    from CUDA graphs (badam/layer_graphs.py; on CUDA only, elsewhere as "block"; on 2 x H100 steps 1.07-1.23x as
    fast); "block-reentrant-graphed": as "block-reentrant", and every forward run under no_grad replayed from CUDA
    graphs (below the active block and reentrant checkpointing's first forward above it: all but the active layer;
    not measured on a GPU yet). The graphed policies return the model's LayerGraphs (its stats() say how many calls
    were replayed), the others None. The default suits any code (torch.autograd.grad, changing shapes, any
    device)."""
    if policy not in CHECKPOINTING_POLICIES:
        raise ValueError(f"unknown checkpointing policy {policy!r}; choose one of {', '.join(CHECKPOINTING_POLICIES)}")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise TypeError(f"{type(model).__name__} has no activation/gradient checkpointing switch")
    # enabling checkpointing re-registers the hook on input_ids models, so it is removed afterwards
    if getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"):
        model.disable_input_require_grads()
    graphs = LayerGraphs() if policy.endswith("-graphed") else None
    if policy != "non-reentrant":
        function = {"block": block_checkpoint, "block-graphed": functools.partial(block_checkpoint, graphs=graphs),
                    "block-reentrant": functools.partial(block_checkpoint, reentrant=True),
                    "block-reentrant-graphed": functools.partial(block_checkpoint, reentrant=True, graphs=graphs),
                    }[policy]
        for module in model.modules():
            if getattr(module, "gradient_checkpointing", False) is True:
                module._gradient_checkpointing_func = function
    return graphs


def layer_graphs_of(model: torch.nn.Module) -> LayerGraphs | None:
    """The LayerGraphs that policy "block-graphed" gave `model`'s layers, None under any other policy."""
    for module in model.modules():
        function = getattr(module, "_gradient_checkpointing_func", None)
        if isinstance(function, functools.partial) and function.keywords.get("graphs") is not None:
            return function.keywords["graphs"]
    return None


def record_layer_graphs(model: torch.nn.Module, *args, **kwargs) -> dict | None:
    """Under a graphed policy, record every layer's CUDA graph before training: two forwards of `model(*args,
    **kwargs)` under no_grad (every layer then runs as a layer below the active block does, so the first sees each
    layer and the second records it). Training records the same graphs on its own during the first block-epoch;
    this moves that one-time cost out of it (e.g. out of a benchmark's timed steps). Call it in training mode, with a
    batch of the training batches' shape and under the same autocast. Returns the LayerGraphs' stats(), None when the
    model's policy has no graphs."""
    graphs = layer_graphs_of(model)
    if graphs is None:
        return None
    if not model.training:
        raise ValueError("record_layer_graphs records the training-mode graphs: call model.train() first")
    with torch.no_grad():
        for _ in range(2):
            model(*args, **kwargs)
    return graphs.stats()


class _BAdamCallbackLogic:
    """The callback's behaviour; combined with transformers.TrainerCallback lazily (see BAdamCallback)."""

    def __init__(self, log_block: bool = True):
        self.log_block = log_block
        self.last_grad_norm: float | None = None
        self.last_step_block: int | None = None  # the block the latest optimizer step trained
        self.block_optimizer: BlockOptimizer | BlockOptimizerRatio | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is not None and uses_checkpointing(model):
            enable_block_checkpointing(model)
        self.block_optimizer = find_block_optimizer(optimizer)
        if self.block_optimizer is None:
            raise TypeError("BAdamCallback needs the Trainer's optimizer to be a badam BlockOptimizer or "
                            "BlockOptimizerRatio; pass optimizers=(create_badam_optimizer(model, ...), None) "
                            "to Trainer")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        block_opt = self.block_optimizer
        if isinstance(block_opt, BlockOptimizer):
            self.last_step_block = block_opt.current_block  # read before step() may switch to the next block
        if block_opt is None or block_opt.grads_on_params:
            return  # the gradients are on p.grad: Trainer clipped them and logged their norm already
        max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else math.inf
        self.last_grad_norm = float(block_opt.clip_grad_norm_(max_norm))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        extras = {}
        if self.last_grad_norm is not None and "grad_norm" in logs:
            extras["grad_norm"] = self.last_grad_norm
        if self.log_block and self.last_step_block is not None and "loss" in logs:
            extras["active_block"] = self.last_step_block
        logs.update(extras)
        # Trainer appended its copy of the logs to log_history before calling us
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extras)


def _make_callback_class():
    from transformers import TrainerCallback

    class BAdamCallback(_BAdamCallbackLogic, TrainerCallback):
        """TrainerCallback for BlockOptimizer(Ratio): non-reentrant checkpointing without input-grad hooks; clipping
        of gradients kept off p.grad to args.max_grad_norm; the true gradient norm and the active block in the logs."""

    return BAdamCallback


def __getattr__(name: str):
    if name == "BAdamCallback":
        cls = _make_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__: Sequence[str] = ["CHECKPOINTING_POLICIES", "BAdamCallback", "create_badam_optimizer",
                          "create_badam_ratio_optimizer", "decay_parameter_groups", "enable_block_checkpointing",
                          "find_block_optimizer", "layer_graphs_of", "record_layer_graphs",
                          "uses_checkpointing"]
