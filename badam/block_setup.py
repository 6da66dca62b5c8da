"""Checks and bookkeeping of BlockOptimizer's construction (badam/block_optimizer.py): argument validation with one
clear message per mistake, which parameters the user froze, and how the model's parameters map onto the base
optimizer's param groups.

Parameters frozen by the user (``requires_grad=False`` before the optimizer is built, e.g. a frozen embedding or
vision tower) stay frozen, as with any torch optimizer and as in BlockOptimizerRatio: they belong to no block and
need not be in the base optimizer. A model frozen whole is the exception: it trains every block, as in badam 1.4.
BlockOptimizer itself freezes every block but the active one; it marks the parameters it froze, so that a later
BlockOptimizer over the same model (after ``release()``, or over an optimizer that was simply dropped) still trains
them.
"""
from __future__ import annotations

import warnings

import torch

SWITCH_MODES = ("random", "ascending", "descending", "fixed")
VERBOSE_LEVELS = (0, 1, 2)
_FROZEN_BY_BADAM = "_frozen_by_badam"  # attribute set on parameters that a BlockOptimizer froze


def check_base_optimizer(base_optimizer) -> None:
    if isinstance(base_optimizer, type):
        raise TypeError(f"base_optimizer must be an optimizer instance built over the model's parameters, e.g. "
                        f"torch.optim.AdamW(model.parameters(), lr=1e-5), not the class {base_optimizer.__name__}")
    if not isinstance(base_optimizer, torch.optim.Optimizer):
        raise TypeError(f"base_optimizer must be a torch.optim.Optimizer (e.g. torch.optim.AdamW(model.parameters(), "
                        f"lr=1e-5)), got {type(base_optimizer).__name__}")


def validate_arguments(switch_mode, switch_block_every, verbose, block_prefix_list) -> None:
    """One ValueError naming the argument and its valid values for each malformed schedule argument."""
    if switch_mode not in SWITCH_MODES:
        raise ValueError(f"switch_mode {switch_mode!r} is not valid; choose one of {', '.join(SWITCH_MODES)}")
    if isinstance(switch_block_every, bool) or not isinstance(switch_block_every, int) or switch_block_every < 1:
        raise ValueError(f"switch_block_every must be an integer >= 1 (steps per block), got {switch_block_every!r}")
    if verbose not in VERBOSE_LEVELS:  # True / False count as 1 / 0, as in badam 1.4
        raise ValueError(f"verbose must be one of {', '.join(map(str, VERBOSE_LEVELS))} (silent, switches, switches "
                         f"and trainable names), got {verbose!r}")
    if isinstance(block_prefix_list, (str, bytes)):
        raise ValueError(f"block_prefix_list must be a list of blocks, each a list of name prefixes (e.g. "
                         f"[['model.layers.0.'], ['model.layers.1.']]), or None to infer one block per layer; got the "
                         f"string {block_prefix_list!r}")


def freeze(param: torch.nn.Parameter) -> None:
    """Freeze a parameter on BlockOptimizer's behalf (not the user's: see the module docstring)."""
    param.requires_grad_(False)
    setattr(param, _FROZEN_BY_BADAM, True)


def split_user_frozen(named: list[tuple[str, torch.nn.Parameter]]) -> tuple[list, list]:
    """(the (name, parameter) pairs that may train, those the user froze). A model frozen whole says nothing about
    what should train (code written for badam 1.4, which unfreezes each block, often freezes everything first), so
    then every parameter may train, as in 1.4."""
    trainable, frozen = [], []
    for name, p in named:
        if p.requires_grad or getattr(p, _FROZEN_BY_BADAM, False):
            trainable.append((name, p))
        else:
            frozen.append((name, p))
    if not trainable:
        return frozen, []
    return trainable, frozen


def frozen_note(frozen: list) -> str:
    """Suffix for partition errors: the parameters left out because the user froze them."""
    if not frozen:
        return ""
    return (f" ({len(frozen)} parameters with requires_grad=False were left out and stay frozen, e.g. "
            f"{[n for n, _ in frozen[:3]]})")


def map_groups(base_optimizer, named, frozen) -> dict[int, int]:
    """Param-group index of every parameter that may train. The base optimizer may or may not hold the frozen ones
    (``AdamW(model.parameters())`` and ``AdamW(p for p in ... if p.requires_grad)`` both work), nothing else."""
    group_of = {id(p): g for g, group in enumerate(base_optimizer.param_groups) for p in group["params"]}
    missing = [n for n, p in named if id(p) not in group_of]
    if missing:
        raise ValueError(f"{len(missing)} trainable parameters are not in base_optimizer's param_groups (e.g. "
                         f"{missing[:3]}); build base_optimizer over the model's parameters (parameters to leave out "
                         "of training: set requires_grad=False before building the BlockOptimizer)")
    known = {id(p) for _, p in named}
    frozen_ids = {id(p) for _, p in frozen}
    foreign = [pid for pid in group_of if pid not in known and pid not in frozen_ids]
    if foreign:
        raise ValueError(f"base_optimizer holds {len(foreign)} parameters that are not in named_parameters_list; "
                         "pass list(model.named_parameters()) of the same model")
    return {pid: g for pid, g in group_of.items() if pid in known}


def warn_full_precision(named, trainable_ids: set[int]) -> None:
    fp32 = [n for n, p in named if id(p) in trainable_ids and p.dtype not in (torch.bfloat16, torch.float16)]
    if fp32:
        warnings.warn(
            f"BlockOptimizer: {len(fp32)} trainable parameters are stored in full precision (e.g. {fp32[:3]}). "
            "BAdam saves memory by storing weights in bf16/fp16 and giving only the active block an fp32 copy; "
            "with fp32 weights those memory savings are lost (the results are still correct). Load the model "
            "in bf16, or pass full_precision_ok=True if fp32 weights are intended.", stacklevel=4)
