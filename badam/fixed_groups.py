"""add_param_group after construction: refused with the way to do it, since the blocks (or masks) are fixed then."""
from __future__ import annotations


class FixedParamGroupsMixin:
    """torch.optim.Optimizer.add_param_group for optimizers whose trainable set is planned at construction
    (BlockOptimizer's blocks, BlockOptimizerRatio's masks). torch's own __init__ calls add_param_group for the groups
    it is given, so the refusal starts once the subclass sets ``_groups_fixed``. Why refuse: torch would append the
    group to the shared param_groups, but no block (or mask) holds its parameters, so they would keep requires_grad,
    receive gradients and never be updated, silently."""

    _groups_fixed = False

    def add_param_group(self, param_group: dict) -> None:
        if self._groups_fixed:
            raise ValueError(
                f"{type(self).__name__}.add_param_group: the trainable blocks are fixed when the optimizer is built, "
                "so parameters added later would never train; put every parameter group (e.g. a no-decay group) into "
                "the base optimizer / param_groups first and build a new optimizer over list(model.named_parameters())")
        super().add_param_group(param_group)
