"""Full-parameter SGD with the same fp32 master-weight scheme as Adam (the paper's SGD ablation baseline)."""
from __future__ import annotations

import dataclasses

import torch

from baselines.precision import MasterWeightMethod


@dataclasses.dataclass
class SGDOptions:
    # torch.optim.SGD defaults; the paper's BCD-vs-SGD ablation does not state a momentum in the sources at hand.
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")


class SGD(MasterWeightMethod):
    """SGD on fp32 masters of bf16 weights: 2 (weights) + 4 (fp32 grads) + 4 (masters) [+ 4 momentum] bytes per
    parameter. See MasterWeightMethod for what memory_split counts."""

    name = "sgd"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    ddp_unsupported = None  # experiments/ddp.py; tests/distributed compare it with one process
    Options = SGDOptions
    description = "SGD on every parameter over fp32 masters (the paper's SGD ablation baseline)"

    def make_optimizer(self, param_groups):
        o = self.options
        return torch.optim.SGD(param_groups, lr=self.lr, momentum=o.momentum, dampening=o.dampening,
                               nesterov=o.nesterov, weight_decay=self.weight_decay)
