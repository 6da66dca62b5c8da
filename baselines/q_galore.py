"""Q-GaLore (Zhang, Jaiswal, Yin, Liu, Zhao, Tian, Wang 2024, "Q-GaLore: Quantized GaLore with INT4 Projection and
Layer-Adaptive Low-Rank Gradients", arXiv 2407.08296; pip `q-galore-torch` 1.0, Apache-2.0). OPTIONAL:
`pip install 'badam-bench[q_galore]'`; without the package the run is recorded as unsupported.

GaLore's successor: the projection matrices are quantized to 4 bits (groups of 256 values, stored one per byte by the
package), the moments are 8-bit (bitsandbytes), and each matrix's projection is refreshed less often once successive
projections agree (cosine similarity of their leading vectors >= 0.4 over the last 5 refreshes doubles the
interval). What is NOT included: Q-GaLore's INT8 weights with stochastic rounding, whose layers (QGaLoreLinear) live
in the authors' repository, not in the pip package; the weights stay bf16 with fp32 masters, as for every method here.
CUDA only: the package calls torch.cuda.synchronize() in every step (MethodUnsupportedError elsewhere). And only with
a bitsandbytes whose 8-bit optimizer base class still takes `percentile_clipping` (bitsandbytes_api_problem): the
package passes its base class's arguments by position and reads config["percentile_clipping"] in every update.

Defaults: the Q-GaLore-specific settings of the authors' run_pretrain.py (4-bit projections in groups of 256,
cos_threshold 0.4, gamma_proj 2, queue_size 5); rank, refresh interval and scale as this suite's `galore`
(256, 200, 0.25). Memory: 2 (weights) + 4 (gradients) + 4 (masters) bytes per parameter, plus 8-bit low-rank moments
and 1-byte projections per matrix, 8-bit full moments for the other parameters.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.errors import MethodUnsupportedError, require_cuda
from baselines.galore import GaLore, GaLoreOptions
from baselines.projector_state import ProjectorCheckpointing

@dataclasses.dataclass
class QGaLoreOptions(GaLoreOptions):
    proj_quant: bool = True
    proj_bits: int = 4
    proj_group_size: int = 256
    cos_threshold: float = 0.4
    gamma_proj: int = 2
    queue_size: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.proj_type != "std":
            raise ValueError(f"proj_type {self.proj_type!r} is not valid for q_galore; the package implements only "
                             f"'std'")
        for key in ("proj_bits", "proj_group_size", "gamma_proj", "queue_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{key} must be a positive integer; got {value}")
            setattr(self, key, int(value))
        if not 1 <= self.proj_bits <= 8:
            raise ValueError(f"proj_bits must be between 1 and 8 (stored in one byte); got {self.proj_bits}")
        if not -1.0 <= self.cos_threshold <= 1.0:
            raise ValueError(f"cos_threshold must be in [-1, 1]; got {self.cos_threshold}")


def bitsandbytes_api_problem() -> str | None:
    """Why q_galore_torch 1.0 cannot run on the installed bitsandbytes, or None. The package subclasses bitsandbytes'
    Optimizer2State, passing (..., min_8bit_size, percentile_clipping, block_wise) by position, and its update reads
    config["percentile_clipping"] and calls F.percentile_clipping. bitsandbytes 0.50.2 has neither: the positions land
    on max_unorm / skip_zeros and the first step fails with KeyError 'percentile_clipping' (Llama 3-8B on an H200,
    2026-11-26, results/paper_memtime_llama3_8b). A wrong update in silence would be worse than no run."""
    import inspect

    try:
        import bitsandbytes
        from bitsandbytes.optim.optimizer import Optimizer2State
    except ImportError as exc:
        return f"needs bitsandbytes ({exc})"
    if "percentile_clipping" in inspect.signature(Optimizer2State.__init__).parameters:
        return None
    return (f"q-galore-torch 1.0 is written against an older bitsandbytes optimizer API (percentile_clipping, "
            f"block_wise); bitsandbytes {getattr(bitsandbytes, '__version__', '?')} here has no percentile_clipping, "
            "so the package's update cannot run (install a bitsandbytes whose Optimizer2State takes "
            "percentile_clipping in its own environment, or use galore_8bit)")

class QGaLore(ProjectorCheckpointing, GaLore):
    """q_galore_torch.QGaLoreAdamW8bit on fp32 masters. memory_split: optimizer_states = masters + 8-bit moments
    (with their block scales) + the quantized projections, their scales and zero points."""

    name = "q_galore"
    Options = QGaLoreOptions
    description = "GaLore with 4-bit projections, 8-bit moments and adaptive projector refresh (Q-GaLore)"
    requirements = ("q-galore-torch>=1.0",)
    extra = "q_galore"
    install_by_default = False  # not a default dependency of the suite
    cuda_only = "q_galore_torch's QGaLoreAdamW8bit calls torch.cuda.synchronize() in every step"
    fsdp2_unsupported = "its 8-bit moments use bitsandbytes' kernel, which has no DTensor support (as galore_8bit)"
    fsdp2_note = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        try:
            import q_galore_torch  # noqa: F401
        except ImportError as exc:
            raise MethodUnsupportedError(f"q_galore needs the optional package q-galore-torch ({exc}); "
                                         f"{self.install_hint()}") from exc
        problem = bitsandbytes_api_problem()
        if problem:
            raise MethodUnsupportedError(f"q_galore: {problem}")
        require_cuda(self.name, model, self.cuda_only)
        return super().prepare_model(model)

    def galore_settings(self) -> dict:
        o = self.options
        return {**super().galore_settings(), "quant": o.proj_quant, "quant_n_bit": o.proj_bits,
                "quant_group_size": o.proj_group_size, "cos_threshold": float(o.cos_threshold),
                "gamma_proj": o.gamma_proj, "queue_size": o.queue_size}

    def make_optimizer(self, param_groups):
        from q_galore_torch import QGaLoreAdamW8bit

        return QGaLoreAdamW8bit(param_groups, lr=self.lr, betas=self.options.betas, eps=self.options.eps,
                                weight_decay=self.weight_decay)

    @staticmethod
    def make_projector(group: dict):
        from q_galore_torch.q_galore_projector import GaLoreProjector

        return GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"], scale=group["scale"],
                               proj_type=group["proj_type"], quant=group["quant"], group_size=group["quant_group_size"],
                               n_bit=group["quant_n_bit"], cos_threshold=group["cos_threshold"],
                               gamma_proj=group["gamma_proj"], queue_size=group["queue_size"])

    def describe(self) -> dict:
        return {"q_galore_rank": int(self.options.rank), "q_galore_proj_bits": self.options.proj_bits}
