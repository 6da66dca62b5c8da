"""Activation checkpointing that knows where BAdam's backward goes: each checkpointed layer call picks its kind.

Under BAdam only the active block's parameters require a gradient, so a backward pass never reaches the layers below
it, and the layers above it need gradients only for their input (to pass them down), none for their weights. One kind
of checkpointing for every layer (transformers' way, badam.hf's default) does host work these layers do not need,
which matters where a step is launch-bound (issue 18: Llama 3-8B at batch 2 x 728 per GPU). block_checkpoint
(policy "block" of badam.hf.enable_block_checkpointing) decides per call:

    nothing requires a gradient (the layer's parameters, its tensor arguments) or grad mode is off
        -> the layer runs as it is, under no_grad: there is no backward to recompute for. Non-reentrant
           checkpointing would still save the RNG states, build a frame and install its saved-tensor hooks for
           nothing.
    otherwise
        -> non-reentrant checkpointing (torch.utils.checkpoint with use_reentrant=False), which gives parameter
           gradients whether or not an input requires grad.

With ``reentrant=True`` (policy "block-reentrant" of badam.hf.enable_block_checkpointing), a call where only
positional tensor inputs require a gradient (a frozen layer above the active block) gets reentrant checkpointing
instead: its forward runs under no_grad (no autograd graph, no saved-tensor hook per saved tensor: less host time)
and backward recomputes the layer with grad and back-propagates through it to the input. Its usual failure
(Ledzy/BAdam#2: no input requiring grad -> no gradients at all) cannot happen there, as an input does. The price is
GPU work: reentrant recomputes the layer's whole forward, where non-reentrant stops as soon as the tensors backward
needs are back (for a Llama layer whose weights need no gradient, before the MLP's down projection: one matmul of
the layer's seven more per layer above the active block; tests/experiments/test_flops.py counts it). Calls whose own
parameters or keyword tensors require a gradient, and calls traced by torch.compile, stay non-reentrant.

Measured (benchmarks/README.md, "Checkpointing policies"): on a CPU, where the host is everything, block-reentrant
makes a step 0.76 (eager) / 0.78 (compiled layers) as long as non-reentrant everywhere; "block" differs from
non-reentrant by no more than the noise. The first H100 figures (block-reentrant slower) were taken with a nested
checkpoint (transformers 5.17, see below) and are to be measured again. On 2 x H100 "block-graphed" (block plus CUDA
graphs below the active block, badam/layer_graphs.py) made the step 1.07-1.23x as fast. The default stays
non-reentrant: it suits any code.

All kinds compute the same numbers (the recompute replays the same operations with the same RNG state; tested bitwise
in tests/badam/test_checkpointing.py). The layer is found in the functools.partial that transformers'
GradientCheckpointingLayer passes (``partial(forward, self, **kwargs)``, or ``partial(self.__call__, **kwargs)``
before transformers 5.2x: found since 2026-11-27; until then that form, the GPU machine's transformers 5.17 with eager
layers, got non-reentrant checkpointing under every policy); any other callable gets non-reentrant checkpointing,
what transformers itself would do. Reentrant checkpointing supports ``backward()`` only, not ``torch.autograd.grad``
or ``backward(inputs=...)``; badam.hf.enable_block_checkpointing's default policy ("non-reentrant", every layer)
suits code that needs those.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

def first_requiring_grad(values: Iterable) -> torch.Tensor | None:
    """The first tensor among `values` (searched inside tuples, lists and dicts) that requires a gradient, or None."""
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.requires_grad:
                return value
            continue
        inner = value if isinstance(value, (tuple, list)) else value.values() if isinstance(value, dict) else ()
        found = first_requiring_grad(inner)
        if found is not None:
            return found
    return None


def _requires_grad(values: Iterable) -> bool:
    """Whether any tensor among `values` (searched inside tuples, lists and dicts) requires a gradient."""
    return first_requiring_grad(values) is not None


def _layer_of(function: Callable) -> nn.Module | None:
    """The layer of transformers' ``partial(forward, layer, **kwargs)`` (transformers >= 5.2x: the class's forward,
    module hooks outside) or ``partial(layer.__call__, **kwargs)`` (earlier 5.x: the layer's own __call__, module
    hooks inside), None for any other callable."""
    if not isinstance(function, functools.partial):
        return None
    if function.args and isinstance(function.args[0], nn.Module):
        return function.args[0]
    owner = getattr(function.func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def checkpoint_kind(function: Callable, args: tuple, kwargs: dict, reentrant: bool = False) -> str:
    """Which checkpointing `block_checkpoint(function, *args, reentrant=reentrant, **kwargs)` applies: "none",
    "reentrant" or "non-reentrant" (module docstring)."""
    if not torch.is_grad_enabled():
        return "none"
    module = _layer_of(function)
    keywords: dict = dict(kwargs)
    if module is not None:
        keywords.update(function.keywords)
    if module is None or torch.compiler.is_compiling():
        return "non-reentrant"  # an unknown callable may use parameters it does not show; Dynamo traces this kind
    if any(p.requires_grad for p in module.parameters()) or _requires_grad(keywords.values()):
        return "non-reentrant"
    if not _requires_grad(args):
        return "none"
    return "reentrant" if reentrant and not kwargs else "non-reentrant"


def block_checkpoint(function: Callable, *args, reentrant: bool = False, graphs=None, **kwargs):
    """Checkpoint function for transformers' layers (set as their ``_gradient_checkpointing_func``): runs
    ``function(*args, **kwargs)`` without checkpointing, with non-reentrant or (`reentrant`, layers above the active
    block only) with reentrant checkpointing, whichever the call needs (module docstring). `graphs`: a
    badam.layer_graphs.LayerGraphs that replays the forwards run under no_grad from CUDA graphs: the calls needing
    no checkpointing (policy "block-graphed") and, with `reentrant`, also the first forward of a reentrant
    checkpoint, whose recompute in backward runs as it is (policy "block-reentrant-graphed")."""
    kind = checkpoint_kind(function, args, kwargs, reentrant)
    layer = _layer_of(function) if graphs is not None else None
    if kind == "none":
        if layer is not None:
            return graphs.run(layer, function, args, kwargs)
        with torch.no_grad():  # the same result (nothing here requires grad), without autograd's bookkeeping
            return function(*args, **kwargs)
    if kind == "reentrant":
        return checkpoint(function if layer is None else _graphed_without_grad(graphs, layer, function), *args,
                          use_reentrant=True)
    return checkpoint(function, *args, use_reentrant=False, **kwargs)


def _graphed_without_grad(graphs, layer: nn.Module, function: Callable) -> Callable:
    """`function`, replayed by `graphs` where it runs under no_grad (reentrant checkpointing's forward), as it is
    where grad is on (the recompute in backward, which builds the graph backward needs)."""
    def run(*args):
        return function(*args) if torch.is_grad_enabled() else graphs.run(layer, function, args, {})
    return run
