"""Running a torch optimizer one tensor at a time (shared by BlockOptimizer and BlockOptimizerRatio).

``optimizer.step()`` over a whole group lets foreach / fused kernels allocate temporaries the size of the group (foreach
AdamW: one fp32 tensor per parameter) and keeps every fp32 gradient alive until the end. Reducing each group to one
tensor per call gives the same numbers for optimizers whose state is per tensor (every torch.optim optimizer) with
temporaries of one tensor, and lets the caller free each gradient right after its update.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


@torch.no_grad()
def step_tensor_by_tensor(optimizer: torch.optim.Optimizer, order: Sequence[tuple[int, torch.Tensor]],
                          prepare: Callable[[int], bool], finish: Callable[[int], None]) -> None:
    """``optimizer.step()`` with each group reduced to one tensor at a time, in `order` ((group index, tensor) pairs).

    ``prepare(k)`` puts the gradient of ``order[k]``'s tensor in place and returns False to skip it (no gradient);
    ``finish(k)`` runs after its update (write-back, freeing the gradient). The group dicts, hence lr, weight decay
    and a scheduler's state, stay the same objects; their "params" lists are restored afterwards, even on error."""
    groups = optimizer.param_groups
    full = [group["params"] for group in groups]
    try:
        for group in groups:
            group["params"] = []
        for k, (g, tensor) in enumerate(order):
            if not prepare(k):
                continue
            groups[g]["params"] = [tensor]
            optimizer.step()
            groups[g]["params"] = []
            finish(k)
    finally:
        for group, params in zip(groups, full):
            group["params"] = params
