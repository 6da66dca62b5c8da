"""APOLLO (Zhu, Zhang, Cong, Liu, Park, Chandra, Long, Pan, Wang, Lee 2024, "APOLLO: SGD-like Memory, AdamW-level
Performance", arXiv 2412.05270; pip `apollo-torch` 1.0.3). OPTIONAL: the package is licensed CC-BY-NC 4.0
(non-commercial), so it is never a default dependency of this suite: `pip install 'badam-bench[apollo]'`. Without it
the run is recorded as unsupported.

APOLLO keeps Adam's moments of a random low-rank projection of each matrix gradient (no SVD), derives from them a
per-channel (or, APOLLO-Mini, per-tensor) scaling factor, and scales the FULL gradient by it; a norm-growth limiter
caps sudden jumps. The attention and MLP matrices of the transformer layers get APOLLO, every other parameter plain
AdamW inside the same optimizer (as GaLore does; this method reuses baselines.galore's selection of the matrices and
its fp32-master setup). Defaults: APOLLO's README settings for rank 1/4-style runs: rank 256, random projection,
channel-wise scaling, scale 1, projection refreshed every 200 steps. APOLLO-Mini: rank=1 scale_type=tensor scale=128.

Memory: 2 (weights) + 4 (gradients) + 4 (masters) bytes per parameter, plus, per matrix, the low-rank moments and the
random projection (rank x the smaller side each), and 8 bytes per non-matrix parameter.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.errors import MethodUnsupportedError
from baselines.galore import GaLore, GaLoreOptions
from baselines.projector_state import ProjectorCheckpointing

LICENSE_NOTE = ("apollo needs the optional package apollo-torch, licensed CC-BY-NC 4.0 (non-commercial use only), "
                "which is therefore not installed by default; install it with: pip install 'badam-bench[apollo]'")
PROJECTIONS = ("random", "svd")
SCALE_TYPES = ("channel", "tensor")
APOLLO_PROJ_TYPES = ("std", "reverse_std", "right", "left")


@dataclasses.dataclass
class APOLLOOptions(GaLoreOptions):
    scale: float = 1.0
    proj: str = "random"           # random projection (APOLLO) or SVD (GaLore's)
    scale_type: str = "channel"    # channel-wise (APOLLO) or tensor-wise (APOLLO-Mini) gradient scaling

    def __post_init__(self):
        super().__post_init__()
        if self.proj not in PROJECTIONS:
            raise ValueError(f"proj {self.proj!r} is not valid; choose one of {', '.join(PROJECTIONS)}")
        if self.scale_type not in SCALE_TYPES:
            raise ValueError(f"scale_type {self.scale_type!r} is not valid; choose one of {', '.join(SCALE_TYPES)}")
        if self.proj_type not in APOLLO_PROJ_TYPES:
            raise ValueError(f"proj_type {self.proj_type!r} is not valid for apollo; choose one of "
                             f"{', '.join(APOLLO_PROJ_TYPES)}")


class APOLLO(ProjectorCheckpointing, GaLore):
    """apollo_torch.APOLLOAdamW on fp32 masters. memory_split: optimizer_states = masters + low-rank moments (full
    moments for non-matrix parameters) + the projection matrices + APOLLO's per-tensor norm of the last update."""

    name = "apollo"
    Options = APOLLOOptions
    description = "AdamW-like scaling of raw gradients from rank-r random-projection moments (APOLLO; CC-BY-NC package)"
    requirements = ("apollo-torch>=1.0.3",)
    extra = "apollo"
    install_by_default = False  # the package is licensed CC-BY-NC 4.0 (non-commercial use only)
    fsdp2_unsupported = ("apollo_torch draws its random projection as a plain tensor and multiplies it with the "
                         "sharded (DTensor) gradient ('got mixed torch.Tensor and DTensor')")
    fsdp2_note = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        try:
            import apollo_torch  # noqa: F401
        except ImportError as exc:
            raise MethodUnsupportedError(f"{LICENSE_NOTE} ({exc})") from exc
        return super().prepare_model(model)

    def galore_settings(self) -> dict:
        return {**super().galore_settings(), "proj": self.options.proj, "scale_type": self.options.scale_type}

    def make_optimizer(self, param_groups):
        from apollo_torch import APOLLOAdamW

        return APOLLOAdamW(param_groups, lr=self.lr, betas=self.options.betas, eps=self.options.eps,
                           weight_decay=self.weight_decay)

    @staticmethod
    def make_projector(group: dict):
        if group["proj"] == "random":
            from apollo_torch.random_projector import GradientProjector

            return GradientProjector(group["rank"], update_proj_gap=group["update_proj_gap"], scale=group["scale"],
                                     proj_type=group["proj_type"])
        from apollo_torch.svd_projector import GaLoreProjector

        return GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"], scale=group["scale"],
                               proj_type=group["proj_type"])

    def describe(self) -> dict:
        return {"apollo_rank": int(self.options.rank), "apollo_scale_type": self.options.scale_type}
