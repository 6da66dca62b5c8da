"""GaLore (galore-torch): Adam whose moments live in a low-rank projection of each matrix gradient.

The attention and MLP matrices of the transformer layers get GaLore (rank, update_proj_gap, scale, proj_type); every
other parameter (embeddings, norms, head) gets regular AdamW inside the same optimizer, as GaLore's own scripts do.
Mixed precision as users run it with this suite: fp32 masters and fp32 gradients (badam.mixed_precision) under bf16
compute, like `adam`; GaLore's projection and moments are then fp32.

Three registry entries:
  * galore            — GaLoreAdamW over all masters, one step per optimizer step;
  * galore_8bit       — GaLoreAdamW8bit (bitsandbytes); galore-torch calls torch.cuda.synchronize() in its step,
                        so it needs CUDA and raises MethodUnsupportedError elsewhere;
  * galore_layerwise  — one GaLoreAdamW per parameter, stepped from that parameter's post-accumulate-grad hook during
                        backward (GaLore's layer-wise scheme): the full gradient never exists at once, gradients cannot
                        be accumulated and global-norm clipping is impossible.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.adam import AdamOptions
from baselines.base import optimizer_state_tensors
from baselines.errors import UnsupportedSetupError, accumulation_refused, require_cuda
from baselines.model_parts import in_modules, linear_module_names_in_layers
from baselines.precision import MasterWeightMethod

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")


@dataclasses.dataclass
class GaLoreOptions(AdamOptions):
    rank: int = 256
    update_proj_gap: int = 200
    scale: float = 0.25
    proj_type: str = "std"
    eps: float = 1e-6  # galore_torch.GaLoreAdamW's default
    target_modules: list[str] | None = None  # None: every linear map inside the transformer layers

    def __post_init__(self):
        super().__post_init__()
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"rank must be a positive integer; got {self.rank}")
        if int(self.update_proj_gap) != self.update_proj_gap or self.update_proj_gap < 1:
            raise ValueError(f"update_proj_gap must be a positive integer; got {self.update_proj_gap}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0; got {self.scale}")
        if self.proj_type not in PROJ_TYPES:
            raise ValueError(f"proj_type {self.proj_type!r} is not valid; choose one of {', '.join(PROJ_TYPES)}")


def _projector_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        projector = state.get("projector")
        if projector is not None and projector.ortho_matrix is not None:
            ortho = projector.ortho_matrix
            yield from (ortho if isinstance(ortho, (list, tuple)) else [ortho])


def galore_state_dict(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with each GaLoreProjector replaced by plain tensors, so that a checkpoint loads with
    torch.load(weights_only=True)."""
    sd = optimizer.state_dict()
    state = {}
    for idx, per_param in sd["state"].items():
        per_param = dict(per_param)
        projector = per_param.pop("projector", None)
        if projector is not None:
            per_param["projector_ortho_matrix"] = projector.ortho_matrix
        state[idx] = per_param
    return {"state": state, "param_groups": sd["param_groups"]}


def load_galore_state_dict(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    from galore_torch.galore_projector import GaLoreProjector

    state = {}
    for idx, per_param in sd["state"].items():
        per_param = dict(per_param)
        ortho = per_param.pop("projector_ortho_matrix", None)
        state[idx] = per_param
        if ortho is not None:
            per_param["_ortho"] = ortho
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    for group in optimizer.param_groups:  # rebuild the projectors with the group's settings
        for p in group["params"]:
            per_param = optimizer.state.get(p)
            if per_param is None or "_ortho" not in per_param:
                continue
            projector = GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"],
                                        scale=group["scale"], proj_type=group["proj_type"])
            projector.ortho_matrix = per_param.pop("_ortho")
            per_param["projector"] = projector


class GaLore(MasterWeightMethod):
    """GaLoreAdamW on fp32 masters. memory_split (see MasterWeightMethod) counts as optimizer_states: the masters,
    the low-rank (or, for non-GaLore parameters, full) Adam moments and the projection matrices. With fp32 gradients
    galore-torch keeps each projector as a slice of the full SVD factor (U or Vh), so the whole factor stays
    allocated; memory_split counts the storage actually held, not the r-column slice."""

    name = "galore"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    Options = GaLoreOptions
    description = "AdamW whose moments live in rank-r projections of each layer matrix's gradient (GaLore)"
    requirements = ("galore-torch>=1.0",)
    extra = "methods"
    fsdp2_note = ("each projector refresh (every update_proj_gap steps) takes the SVD of the full gradient matrix, "
                  "which DTensor gathers onto every rank for that moment")

    def galore_settings(self) -> dict:
        o = self.options
        return {"rank": int(o.rank), "update_proj_gap": int(o.update_proj_gap), "scale": float(o.scale),
                "proj_type": o.proj_type}

    def build_optimizer(self, model: nn.Module) -> None:
        targets = self.options.target_modules
        self._targets = set(targets) if targets is not None else set(linear_module_names_in_layers(model))
        super().build_optimizer(model)

    def _is_galore(self, name: str, tensor: torch.Tensor) -> bool:
        return tensor.dim() == 2 and in_modules(name, self._targets)

    def _groups(self, named_masters) -> list[dict]:
        galore = [m for n, m in named_masters if self._is_galore(n, m)]
        regular = [m for n, m in named_masters if not self._is_galore(n, m)]
        groups = [{"params": regular}] if regular else []
        if galore:
            groups.append({"params": galore, **self.galore_settings()})
        return groups

    def param_groups(self, named_masters):
        if not any(self._is_galore(n, m) for n, m in named_masters):
            raise ValueError(f"{self.name}: no 2-D parameter belongs to the target modules "
                             f"{sorted(self._targets)[:4]}...; check target_modules")
        return self._groups(named_masters)

    def make_optimizer(self, param_groups):
        from galore_torch import GaLoreAdamW

        return GaLoreAdamW(param_groups, lr=self.lr, betas=self.options.betas, eps=self.options.eps,
                           weight_decay=self.weight_decay, no_deprecation_warning=True)

    def state_tensors(self):
        yield from optimizer_state_tensors(self.optimizer)
        yield from _projector_tensors(self.optimizer)

    def describe(self) -> dict:
        return {"galore_rank": int(self.options.rank)}

    # How an optimizer of this method is checkpointed (weights_only=True needs plain tensors instead of projector
    # objects); variants with other projectors (APOLLO, Q-GaLore) override these two.
    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        return galore_state_dict(optimizer)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, sd: dict) -> None:
        load_galore_state_dict(optimizer, sd)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer_state(self.optimizer),
                "masters": [m.detach() for m in self.master_weights.masters]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        optimizer_sd = state["optimizer"]
        super().load_state_dict({"optimizer": {"state": {}, "param_groups": optimizer_sd["param_groups"]},
                                 "masters": state["masters"]})
        self.load_optimizer_state(self.optimizer, optimizer_sd)


class GaLore8bit(GaLore):
    """GaLoreAdamW8bit (bitsandbytes 8-bit moments); CUDA only (see module docstring)."""

    name = "galore_8bit"
    description = "GaLore with 8-bit moments (bitsandbytes)"
    requirements = ("galore-torch>=1.0", "bitsandbytes>=0.43")
    cuda_only = "galore_torch.GaLoreAdamW8bit calls torch.cuda.synchronize() in step"
    fsdp2_unsupported = ("bitsandbytes' 8-bit optimizer kernel (optimizer_update_8bit_blockwise) has no DTensor "
                         "support: it receives FSDP2's sharded parameters and plain state tensors ('got mixed "
                         "torch.Tensor and DTensor')")
    fsdp2_note = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        require_cuda(self.name, model, self.cuda_only)
        return super().prepare_model(model)

    def make_optimizer(self, param_groups):
        from galore_torch import GaLoreAdamW8bit

        return GaLoreAdamW8bit(param_groups, lr=self.lr, betas=self.options.betas, eps=self.options.eps,
                               weight_decay=self.weight_decay)


class GaLoreLayerwise(GaLore):
    """One GaLoreAdamW per parameter, stepped inside backward as soon as that parameter's gradient is complete.

    Each model parameter has two post-accumulate-grad hooks, run in registration order: FP32MasterWeights' hook folds
    the bf16 gradient into the fp32 master gradient, then ours steps that parameter's optimizer on the master, writes
    the master back into the bf16 weight and frees the gradient. clip_and_norm reports the global norm of the
    gradients it consumed (summed while stepping), but cannot clip: every update is done before the norm is known.
    """

    name = "galore_layerwise"
    description = "GaLore updated parameter by parameter inside backward (no gradient held, no global clipping)"
    supports_clipping = False
    fsdp2_note = ("as galore: projector refreshes gather each full gradient matrix; the per-parameter update runs "
                  "after FSDP2's reduce-scatter")
    fused_backward = True
    supports_grad_accumulation = False

    def set_max_grad_norm(self, max_norm: float | None) -> None:
        if max_norm is not None and max_norm > 0:
            raise UnsupportedSetupError(
                f"{self.name} updates each parameter inside backward, before the global gradient norm exists, so it "
                f"cannot clip to max_grad_norm={max_norm}; set train.max_grad_norm to null or 0 for this method")

    def build_optimizer(self, model: nn.Module) -> None:
        super().build_optimizer(model)  # masters, targets; self.optimizer is replaced by per-parameter optimizers
        self.optimizer = None
        self._sq_norm: torch.Tensor | None = None
        self._norm_params = 0
        self.optimizers: list[torch.optim.Optimizer] = []
        self._hooks = []
        for param, master, name in zip(self.master_weights.params, self.master_weights.masters, self._master_names):
            opt = self.make_optimizer(self._groups([(name, master)]))
            self.optimizers.append(opt)
            self._hooks.append(param.register_post_accumulate_grad_hook(self._make_hook(master, opt)))

    def param_groups(self, named_masters):
        self._master_names = [n for n, _ in named_masters]
        return super().param_groups(named_masters)

    def _make_hook(self, master: torch.Tensor, opt: torch.optim.Optimizer):
        def step_now(param: torch.Tensor) -> None:
            if master.grad is None:
                return
            with torch.no_grad():
                sq = master.grad.float().square().sum()
                self._sq_norm = sq if self._sq_norm is None else self._sq_norm + sq
                opt.step()
                if master is not param:
                    param.copy_(master)
            master.grad = None
            param.grad = None

        return step_now

    def backward(self, loss: torch.Tensor, last_micro_batch: bool = True) -> None:
        if not last_micro_batch:
            raise accumulation_refused(self.name)
        self._sq_norm = None
        loss.backward()

    def clip_and_norm(self, max_norm: float | None) -> float | None:
        self.set_max_grad_norm(max_norm)  # one clear error when clipping is asked for
        return None if self._sq_norm is None else float(self._sq_norm.sqrt())

    def step(self) -> None:
        """Nothing to do: every parameter was updated inside backward."""

    def set_lr_scale(self, scale: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * scale

    def state_tensors(self):
        for opt in self.optimizers:
            yield from optimizer_state_tensors(opt)
            yield from _projector_tensors(opt)

    def state_dict(self) -> dict:
        return {"optimizers": [self.optimizer_state(opt) for opt in self.optimizers],
                "masters": [m.detach() for m in self.master_weights.masters]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"{self.name}: checkpoint has {len(state['optimizers'])} per-parameter optimizers, this "
                             f"model needs {len(self.optimizers)}; was it saved from a different model?")
        for mine, saved in zip(self.master_weights.masters, state["masters"]):
            mine.copy_(saved)
        self.master_weights.copy_to_model()
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            self.load_optimizer_state(opt, sd)
