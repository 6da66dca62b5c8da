"""8-bit AdamW (bitsandbytes `AdamW8bit`; Dettmers, Lewis, Shleifer, Zettlemoyer 2022, "8-bit Optimizers via
Block-wise Quantization", arXiv 2110.02861): the "just quantize the optimizer states" baseline.

Both moments are stored as 8-bit codes with one fp32 scale per block of 256 values (block-wise dynamic quantization);
tensors with fewer than `min_8bit_size` elements keep fp32 moments (bitsandbytes' default, 4096). Mixed precision as
`adam`: fp32 masters and fp32 gradients of bf16 weights, AdamW8bit over the masters. Memory: 2 (weights) + 4
(gradients) + 4 (masters) + about 2 (two 8-bit moments and their block scales) = about 12 bytes per parameter,
against Adam's 18.

Where it runs: wherever bitsandbytes has a kernel for the model's device. bitsandbytes >= 0.45 ships a CPU backend
whose AdamW8bit runs (0.50.2 here); older builds are CUDA only. Before training, one update of a 4096-element tensor on
the model's device is tried; if bitsandbytes cannot do it, the run is recorded as unsupported with its reason.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.adam import AdamOptions
from baselines.errors import MethodUnsupportedError, model_device
from baselines.precision import MasterWeightMethod


@dataclasses.dataclass
class AdamW8bitOptions(AdamOptions):
    min_8bit_size: int = 4096  # bitsandbytes' default: smaller tensors keep fp32 moments

    def __post_init__(self):
        super().__post_init__()
        if self.fused is not None:
            raise ValueError("fused selects torch AdamW's kernel; adamw_8bit uses bitsandbytes' kernel (leave fused "
                             "unset)")
        if isinstance(self.min_8bit_size, bool) or int(self.min_8bit_size) != self.min_8bit_size \
                or self.min_8bit_size < 1:
            raise ValueError(f"min_8bit_size must be a positive integer; got {self.min_8bit_size}")
        self.min_8bit_size = int(self.min_8bit_size)


def check_bitsandbytes_runs(device: torch.device) -> None:
    """One AdamW8bit update of an 8-bit-sized tensor on `device`; MethodUnsupportedError with the reason if it fails."""
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise MethodUnsupportedError(f"adamw_8bit needs bitsandbytes ({exc}); pip install 'badam-bench[methods]'") \
            from exc
    probe = torch.zeros(4096, device=device, requires_grad=True)
    probe.grad = torch.ones_like(probe)
    try:
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as exc:  # bitsandbytes raises various types (NotImplementedError, RuntimeError) per backend
        raise MethodUnsupportedError(
            f"adamw_8bit: bitsandbytes {getattr(bnb, '__version__', '?')} has no 8-bit AdamW kernel for device "
            f"{device} ({type(exc).__name__}: {exc}); run it on a CUDA GPU") from exc


class AdamW8bit(MasterWeightMethod):
    """bitsandbytes AdamW8bit on fp32 masters. memory_split (see MasterWeightMethod): optimizer_states = masters +
    the 8-bit moments, their block scales and quantization maps."""

    name = "adamw_8bit"
    Options = AdamW8bitOptions
    description = "AdamW with 8-bit block-wise quantized moments (bitsandbytes)"
    requirements = ("bitsandbytes>=0.43",)
    extra = "methods"
    fsdp2_unsupported = ("bitsandbytes' 8-bit optimizer kernel has no DTensor support ('got mixed torch.Tensor and "
                         "DTensor'), as for galore_8bit")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        check_bitsandbytes_runs(model_device(model))
        return super().prepare_model(model)

    def make_optimizer(self, param_groups):
        import bitsandbytes as bnb

        o = self.options
        return bnb.optim.AdamW8bit(param_groups, lr=self.lr, betas=o.betas, eps=o.eps, weight_decay=self.weight_decay,
                                   min_8bit_size=o.min_8bit_size)
