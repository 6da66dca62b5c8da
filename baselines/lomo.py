"""LOMO and AdaLomo (lomo-optim): the update is fused into the backward pass, so no full gradient is ever stored.

Consequences the harness must know (and records): `step()` does nothing (the update happened inside backward), gradients
cannot be accumulated over micro-batches, and clipping by the global gradient norm needs LOMO's own two-pass path: a
first backward only measures the norm, a second backward applies the clipped update. The threshold must therefore be
known before backward: the harness calls `set_max_grad_norm` once before training.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.base import Method, tensor_bytes
from baselines.errors import accumulation_refused, require_cuda


@dataclasses.dataclass
class LOMOOptions:
    clip_grad_value: float | None = None  # element-wise clipping inside the fused update (LOMO's clip_grad_value)

    def __post_init__(self):
        if self.clip_grad_value is not None and self.clip_grad_value <= 0:
            raise ValueError(f"clip_grad_value must be > 0 or null; got {self.clip_grad_value}")


@dataclasses.dataclass
class AdaLomoOptions(LOMOOptions):
    # lomo_optim.AdaLomo's defaults (its paper's settings).
    loss_scale: float = 2.0 ** 10
    eps: tuple[float, float] = (1e-30, 1e-3)
    clip_threshold: float = 1.0
    decay_rate: float = -0.8

    def __post_init__(self):
        super().__post_init__()
        self.eps = tuple(float(e) for e in self.eps)
        if len(self.eps) != 2 or min(self.eps) <= 0:
            raise ValueError(f"eps must be two positive numbers; got {self.eps}")


class LOMO(Method):
    """lomo_optim.Lomo: SGD applied parameter by parameter from gradient hooks during backward.

    memory_split: parameters = the weights (LOMO keeps no master copy: it updates bf16 weights through a transient
    fp32 copy); gradients = what is held when sampled (normally nothing: each gradient is freed right after its
    update); optimizer_states = none for LOMO, the factored second moments for AdaLomo.
    """

    name = "lomo"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    Options = LOMOOptions
    description = "SGD fused into backward: each gradient updates its weight at once and is freed (LOMO)"
    requirements = ("lomo-optim>=0.1.1",)
    extra = "methods"
    fsdp2_note = ("correct but without LOMO's memory saving: its hooks sit on the sharded parameters, which FSDP2 "
                  "gives gradients only after the reduce-scatter, so all (sharded) gradients are held until LOMO's "
                  "update at the end of backward")
    fused_backward = True
    supports_grad_accumulation = False

    def __init__(self, options=None, lr: float = 1e-5, weight_decay: float = 0.0):
        super().__init__(options, lr, weight_decay)
        self.current_lr = self.lr
        self.max_grad_norm: float | None = None
        self._last_norm: float | None = None
        self.grad_norm_over = "none"

    # --- setup -----------------------------------------------------------------------------------------------
    def set_max_grad_norm(self, max_norm: float | None) -> None:
        """Clip threshold for the two-pass path; None or <= 0 turns clipping (and the norm pass) off."""
        self.max_grad_norm = float(max_norm) if max_norm is not None and max_norm > 0 else None
        self.grad_norm_over = "trainable" if self.max_grad_norm else "none"
        if self.optimizer is not None:
            self.optimizer.clip_grad_norm = self.max_grad_norm

    def prepare_model(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def build_optimizer(self, model: nn.Module) -> None:
        from lomo_optim import Lomo

        self.model = model
        self.optimizer = Lomo(model, lr=self.lr, clip_grad_norm=self.max_grad_norm,
                              clip_grad_value=self.options.clip_grad_value, weight_decay=self.weight_decay)

    # --- one step ----------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, last_micro_batch: bool = True) -> None:
        if not last_micro_batch:
            raise accumulation_refused(self.name)
        self._last_norm = None
        if self.max_grad_norm:
            self.optimizer.grad_norm(loss)  # first backward: measure the global norm, set the clip coefficient
            norms = self.optimizer.grad_norms
            if isinstance(norms, torch.Tensor):
                self._last_norm = float(torch.linalg.vector_norm(norms))
        self.optimizer.fused_backward(loss, self.current_lr)  # second backward: clipped fused update

    def clip_and_norm(self, max_norm: float | None) -> float | None:
        wanted = float(max_norm) if max_norm is not None and max_norm > 0 else None
        if wanted != self.max_grad_norm:
            raise ValueError(
                f"{self.name} clips inside its fused backward, so the threshold must be set before backward: "
                f"the loop asked for max_grad_norm={max_norm} but the method was set to {self.max_grad_norm}; "
                "call method.set_max_grad_norm(max_grad_norm) before training")
        return self._last_norm  # the norm before clipping; None when clipping is off (no norm pass is run)

    def step(self) -> None:
        """Nothing to do: the update happened inside backward."""

    def zero_grad(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    def set_lr_scale(self, scale: float) -> None:
        self.current_lr = self.lr * scale  # passed to fused_backward, which is where LOMO reads its lr

    def trainable_parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # --- measurement and persistence ----------------------------------------------------------------------------
    def state_tensors(self):
        return []

    def memory_split(self, model: nn.Module) -> dict[str, int]:
        params = list(model.parameters())
        return {"parameters": tensor_bytes(params), "gradients": tensor_bytes(p.grad for p in params),
                "optimizer_states": tensor_bytes(self.state_tensors())}

    def describe(self) -> dict:
        return {"norm_pass": bool(self.max_grad_norm)}

    def state_dict(self) -> dict:
        return {"current_lr": self.current_lr}

    def load_state_dict(self, state: dict) -> None:
        self.current_lr = state["current_lr"]


class AdaLOMO(LOMO):
    """lomo_optim.AdaLomo: LOMO with Adafactor-style factored second moments (fp32 row and column statistics).

    lomo-optim 0.1.1 allocates these statistics with `.cuda()` in AdaLomo.__init__, so it cannot run on a CPU; this
    method raises MethodUnsupportedError there rather than patching the library.
    """

    name = "adalomo"
    Options = AdaLomoOptions
    description = "LOMO with Adafactor-style factored second moments (AdaLomo)"
    cuda_only = "lomo_optim.AdaLomo allocates its state with .cuda() in __init__"
    fsdp2_unsupported = ("lomo_optim.AdaLomo allocates its factored second moments in __init__ as plain full-shape "
                         "tensors and adds the sharded (DTensor) gradients into them ('got mixed torch.Tensor and "
                         "DTensor')")
    fsdp2_note = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        require_cuda(self.name, model, self.cuda_only)
        return super().prepare_model(model)

    def build_optimizer(self, model: nn.Module) -> None:
        require_cuda(self.name, model, self.cuda_only)
        from lomo_optim import AdaLomo

        o = self.options
        self.model = model
        self.optimizer = AdaLomo(model, lr=self.lr, loss_scale=o.loss_scale, eps=o.eps,
                                 clip_threshold=o.clip_threshold, decay_rate=o.decay_rate,
                                 clip_grad_norm=self.max_grad_norm, clip_grad_value=o.clip_grad_value,
                                 weight_decay=self.weight_decay)

    def state_tensors(self):
        opt = self.optimizer
        for table in (opt.exp_avg_sq, opt.exp_avg_sq_row, opt.exp_avg_sq_col):
            yield from table.values()

    def state_dict(self) -> dict:
        opt = self.optimizer
        return {"current_lr": self.current_lr, "step_num": opt.step_num, "exp_avg_sq": dict(opt.exp_avg_sq),
                "exp_avg_sq_row": dict(opt.exp_avg_sq_row), "exp_avg_sq_col": dict(opt.exp_avg_sq_col)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        opt = self.optimizer
        self.current_lr = state["current_lr"]
        opt.step_num = state["step_num"]
        for key in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
            mine = getattr(opt, key)
            for name, value in state[key].items():
                mine[name].copy_(value)
