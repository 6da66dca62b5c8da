"""Muon for the weight matrices of the transformer layers, AdamW for every other parameter.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks", kellerjordan.github.io/posts/muon)
replaces each 2-D update by the orthogonalised (Newton-Schulz, 5 steps) Nesterov momentum. This method uses PyTorch's
own implementation, `torch.optim.Muon` (torch >= 2.9), for the linear maps inside the transformer layers (attention
q/k/v/o and the MLP matrices) and `torch.optim.AdamW` (baselines.adam.make_adamw) for the embeddings, the LM head, the
norms and biases, as Muon's authors and Moonlight do.

Update scaling: Moonlight's (Liu et al. 2025, "Muon is Scalable for LLM Training", arXiv 2502.16982, eq. 4): each
matrix's orthogonalised update is multiplied by 0.2 * sqrt(max(A, B)) so that its RMS matches a typical AdamW
update, and one learning rate and one weight decay serve both parts. In torch.optim.Muon that is
`adjust_lr_fn="match_rms_adamw"` (the default here; "original" is Keller Jordan's sqrt(max(1, A/B)), which needs its
own, much larger learning rate). Defaults: momentum 0.95, Nesterov, 5 Newton-Schulz steps (torch's and Moonlight's).

Mixed precision as `adam`: fp32 masters and gradients; the Newton-Schulz iteration runs in bf16 inside torch's Muon.
Memory: 2 (weights) + 4 (gradients) + 4 (masters) + 4 (Muon's momentum) bytes per matrix parameter, + 8 (AdamW's two
moments) instead of 4 for the rest.
On a CPU without bf16 matrix units that Newton-Schulz iteration is slow: torch.optim.Muon casts each update to bf16
itself (no option), and a bf16 640 x 640 @ 640 x 2048 product took 3.3 s against 0.03 s in fp32 on the suite's 2-core
build machine (2026-11-26): one step for one Gemma-3-270M layer matrix ~16 s, for its 126 ~30 min. Tiny models (the
cpu-smoke profile) are unaffected; real models with muon belong on a GPU.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import nn

from baselines.adam import AdamOptions, make_adamw
from baselines.errors import MethodUnsupportedError
from baselines.model_parts import in_modules, linear_module_names_in_layers
from baselines.precision import MasterWeightMethod

ADJUST_LR = ("match_rms_adamw", "original")


@dataclasses.dataclass
class MuonOptions(AdamOptions):
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    adjust_lr: str = "match_rms_adamw"       # Moonlight's update scaling: one lr for Muon and AdamW
    target_modules: list[str] | None = None  # None: every linear map inside the transformer layers

    def __post_init__(self):
        super().__post_init__()  # betas, eps, fused: the AdamW part
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")
        if isinstance(self.ns_steps, bool) or int(self.ns_steps) != self.ns_steps or not 1 <= self.ns_steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 99]; got {self.ns_steps}")
        self.ns_steps = int(self.ns_steps)
        if self.adjust_lr not in ADJUST_LR:
            raise ValueError(f"adjust_lr {self.adjust_lr!r} is not valid; choose one of {', '.join(ADJUST_LR)}")


class OptimizerChain:
    """Several torch optimizers used as one: step, zero_grad, param_groups, state and (load_)state_dict span all."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]  # the groups themselves: lr edits stick

    @property
    def state(self) -> dict:
        # a new dict: the optimizers' states are defaultdicts, which a ChainMap lookup would fill with empty entries
        return {param: per_param for opt in self.optimizers for param, per_param in opt.state.items()}

    @torch.no_grad()
    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        saved = state["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(saved)} optimizers, this setup has {len(self.optimizers)}")
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)


class Muon(MasterWeightMethod):
    """torch.optim.Muon (matrices of the layers) + AdamW (the rest) over fp32 masters. memory_split (see
    MasterWeightMethod): optimizer_states = masters + Muon's momentum buffers + AdamW's moments."""

    name = "muon"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    Options = MuonOptions
    description = "Muon (orthogonalised momentum) for the layers' matrices, AdamW for the rest (torch.optim.Muon)"
    fsdp2_note = ("Newton-Schulz runs on the sharded momentum as DTensor matmuls, which gather what each product "
                  "needs; results agree with one process to bf16 rounding of that iteration")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        muon = getattr(torch.optim, "Muon", None)
        if muon is None or "adjust_lr_fn" not in inspect.signature(muon).parameters:
            raise MethodUnsupportedError(f"muon needs torch.optim.Muon with adjust_lr_fn (torch >= 2.9); this is "
                                         f"torch {torch.__version__}")
        return super().prepare_model(model)

    def build_optimizer(self, model: nn.Module) -> None:
        targets = self.options.target_modules
        self._targets = set(targets) if targets is not None else set(linear_module_names_in_layers(model))
        super().build_optimizer(model)

    def _is_matrix(self, name: str, tensor: torch.Tensor) -> bool:
        return tensor.dim() == 2 and in_modules(name, self._targets)

    def param_groups(self, named_masters):
        matrices = [m for n, m in named_masters if self._is_matrix(n, m)]
        if not matrices:
            raise ValueError(f"{self.name}: no 2-D parameter belongs to the target modules "
                             f"{sorted(self._targets)[:4]}...; check target_modules")
        return [{"params": matrices, "muon": True},
                {"params": [m for n, m in named_masters if not self._is_matrix(n, m)], "muon": False}]

    def make_optimizer(self, param_groups):
        o = self.options
        matrices, rest = (g["params"] for g in param_groups)
        muon = torch.optim.Muon(matrices, lr=self.lr, weight_decay=self.weight_decay, momentum=o.momentum,
                                nesterov=o.nesterov, ns_steps=o.ns_steps, adjust_lr_fn=o.adjust_lr)
        optimizers = [muon]
        if rest:
            optimizers.append(make_adamw(rest, self.lr, o, self.weight_decay))
        self.muon_parameters = sum(m.numel() for m in matrices)
        return OptimizerChain(optimizers)

    def describe(self) -> dict:
        return {"muon_parameters": self.muon_parameters}
