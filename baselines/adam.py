"""Full-parameter AdamW, as the paper's Adam baseline runs it, and a pure-bf16 variant for comparison."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.base import Method
from baselines.precision import MasterWeightMethod


@dataclasses.dataclass
class AdamOptions:
    # torch.optim.AdamW / transformers TrainingArguments defaults, which the paper's Adam runs use.
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # torch's fused AdamW kernel (one launch per step instead of a few per tensor group). None: fused when every
    # parameter sits on a CUDA device, torch's foreach implementation otherwise (CPU runs keep their exact numbers).
    fused: bool | None = None

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)  # YAML gives a list (and may give "1e-8" as a string)
        self.eps = float(self.eps)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1); got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0; got {self.eps}")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise ValueError(f"fused must be true, false or null (automatic); got {self.fused!r}")


def make_adamw(params, lr: float, options: AdamOptions, weight_decay: float) -> torch.optim.AdamW:
    """The AdamW every method of this suite uses (Adam, BAdam, badam 1.4 as reference, LoRA), so that they differ
    only in what they train, not in the update kernel."""
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = options.fused if options.fused is not None else bool(tensors) and all(t.is_cuda for t in tensors)
    return torch.optim.AdamW(params, lr=lr, betas=options.betas, eps=options.eps, weight_decay=weight_decay,
                             fused=fused or None)


class Adam(MasterWeightMethod):
    """AdamW with bf16 weights, fp32 master copies, fp32 gradients and fp32 moments: 2 + 4 + 4 + 8 = 18 bytes per
    parameter (Table 2's "Adam" row). See MasterWeightMethod for what memory_split counts."""

    name = "adam"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    ddp_unsupported = None  # experiments/ddp.py; tests/distributed compare it with one process
    Options = AdamOptions
    description = "AdamW on every parameter, fp32 masters, gradients and moments of bf16 weights (the paper's Adam)"

    def make_optimizer(self, param_groups):
        return make_adamw(param_groups, self.lr, self.options, self.weight_decay)


class AdamPureBF16(Method):
    """AdamW applied directly to bf16 weights: bf16 gradients and bf16 moments, no masters (8 bytes per parameter).
    Cheaper, but updates smaller than half a bf16 ulp of the weight are lost.

    memory_split: parameters = the bf16 weights, gradients = their bf16 gradients, optimizer_states = AdamW's moments.
    """

    name = "adam_bf16"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    Options = AdamOptions
    description = "AdamW directly on bf16 weights: bf16 gradients and moments, no fp32 masters"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.bfloat16})
        if wrong:
            raise ValueError(f"adam_bf16 trains bf16 weights directly, but the model has parameters in {wrong}; "
                             f"load the model with dtype=bf16, or use method 'adam' (fp32 masters)")
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def build_optimizer(self, model: nn.Module) -> None:
        self.optimizer = make_adamw([p for p in model.parameters() if p.requires_grad], self.lr, self.options,
                                    self.weight_decay)
