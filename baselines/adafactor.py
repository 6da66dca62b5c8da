"""Adafactor (Shazeer, Stern 2018, arXiv 1804.04235) as `transformers.optimization.Adafactor` implements it.

Adafactor keeps a factored second moment for every matrix (one row and one column vector, so m + n values for an
m x n matrix instead of m·n) and, by default, no first moment. The memory-efficient fine-tuning papers (LOMO,
AdaLomo, GaLore) compare against it as the cheap adaptive full-parameter optimizer.

Mixed precision as `adam`: fp32 masters and fp32 gradients of bf16 weights, Adafactor over the masters. Total:
2 (weights) + 4 (gradients) + 4 (masters) + ~0 (factored moments; + 4 with beta1) bytes per parameter.

The harness gives every method the same lr and schedule, so Adafactor runs with an external lr (relative_step=False,
scale_parameter=False, warmup_init=False, the settings the transformers docs give for an lr taken from outside).
"""
from __future__ import annotations

import dataclasses

from baselines.precision import MasterWeightMethod


@dataclasses.dataclass
class AdafactorOptions:
    # transformers' Adafactor defaults (eps, clip_threshold, decay_rate) with an external learning rate.
    eps: tuple[float, float] = (1e-30, 1e-3)
    clip_threshold: float = 1.0
    decay_rate: float = -0.8
    beta1: float | None = None        # None: no first moment (Adafactor's memory saving); a value adds 4 bytes
    scale_parameter: bool = False

    def __post_init__(self):
        eps = self.eps if isinstance(self.eps, (list, tuple)) else [self.eps]
        self.eps = tuple(float(e) for e in eps)   # YAML gives a list
        self.clip_threshold = float(self.clip_threshold)
        self.decay_rate = float(self.decay_rate)
        if len(self.eps) != 2 or not all(e > 0 for e in self.eps):
            raise ValueError(f"eps must be two numbers > 0 (for the squared gradient, for the parameter scale); got "
                             f"{self.eps}")
        if self.clip_threshold <= 0:
            raise ValueError(f"clip_threshold must be > 0; got {self.clip_threshold}")
        if not -1.0 <= self.decay_rate < 0.0:
            raise ValueError(f"decay_rate must be in [-1, 0); got {self.decay_rate}")
        if self.beta1 is not None:
            self.beta1 = float(self.beta1)
            if not 0.0 <= self.beta1 < 1.0:
                raise ValueError(f"beta1 must be in [0, 1) or null (no first moment); got {self.beta1}")


class Adafactor(MasterWeightMethod):
    name = "adafactor"
    Options = AdafactorOptions
    description = "Adafactor (factored second moment, no first moment by default) on every parameter over fp32 masters"

    def make_optimizer(self, param_groups):
        from transformers.optimization import Adafactor as HFAdafactor
        o = self.options
        return HFAdafactor(param_groups, lr=self.lr, eps=o.eps, clip_threshold=o.clip_threshold,
                           decay_rate=o.decay_rate, beta1=o.beta1, weight_decay=self.weight_decay,
                           scale_parameter=o.scale_parameter, relative_step=False, warmup_init=False)
