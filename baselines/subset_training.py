"""Training a changing subset of the parameters with AdamW on fp32 masters: the machinery LISA and BlockLLM share.

Both methods train some parameters for a while, then move on to others (LISA: layers drawn at random every K steps;
BlockLLM: the tensors with the largest normalised gradient, reselected when the loss stops improving). What they have
in common lives here:

  * only the active parameters require grad; each has its own fp32 master (badam.mixed_precision.FP32MasterWeights,
    the scheme every full-parameter method of this suite uses), so a parameter that stays active keeps its master,
    and with it the precision the bf16 weight cannot hold, across a change of the subset;
  * one AdamW (baselines.adam.make_adamw) over the active masters; when the subset changes, a new AdamW is built and
    the moments of the parameters that stay are carried over; those of the parameters that leave are dropped, as
    both papers do (the memory of a leaving parameter is freed at once);
  * memory_split, trainable_parameters, step and zero_grad are MasterWeightMethod's, over the active masters.
"""
from __future__ import annotations

import torch
from torch import nn

from badam.mixed_precision import FP32MasterWeights
from baselines.adam import make_adamw
from baselines.base import optimizer_state_tensors
from baselines.precision import MasterWeightMethod


class ActiveMasters:
    """One FP32MasterWeights per active parameter, seen as one (masters, params, zero_grad, copy_to_model): the
    interface MasterWeightMethod reads from `self.master_weights`."""

    def __init__(self):
        self._by_name: dict[str, FP32MasterWeights] = {}
        self.names: list[str] = []

    @property
    def masters(self) -> list[torch.Tensor]:
        return [self._by_name[n].masters[0] for n in self.names]

    @property
    def params(self) -> list[nn.Parameter]:
        return [self._by_name[n].params[0] for n in self.names]

    def set_active(self, named: list[tuple[str, nn.Parameter]]) -> None:
        """Keep the masters of parameters that stay, release those that leave, create those that arrive. The model's
        weights already hold the latest values (step() writes the masters back before any change)."""
        wanted = {name for name, _ in named}
        for name in [n for n in self._by_name if n not in wanted]:
            self._by_name.pop(name).release()
        for name, param in named:
            if name not in self._by_name:
                self._by_name[name] = FP32MasterWeights([param])
        self.names = [name for name, _ in named]

    def zero_grad(self) -> None:
        for weights in self._by_name.values():
            weights.zero_grad()

    def copy_to_model(self) -> None:
        for weights in self._by_name.values():
            weights.copy_to_model()


class SubsetMethod(MasterWeightMethod):
    """AdamW over the fp32 masters of an active subset that a subclass chooses (`choose_initial`, `after_update`)."""

    grad_norm_over = "trainable"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model  # the subset decides what trains (build_optimizer)

    # --- the subset -------------------------------------------------------------------------------------------------
    def build_optimizer(self, model: nn.Module) -> None:
        self.named = list(model.named_parameters())  # tied weights appear once
        self.param_by_name = dict(self.named)
        self.master_weights = ActiveMasters()
        self.optimizer = None
        self._lr_scale = 1.0
        self.setup_subset(model)

    def setup_subset(self, model: nn.Module) -> None:
        """Subclasses: find the candidate parameters and call activate() with the first subset."""
        raise NotImplementedError

    def activate(self, names) -> None:
        """Make exactly `names` trainable (model order), carrying the AdamW state of parameters that stay active."""
        wanted = set(names)
        unknown = wanted - set(self.param_by_name)
        if unknown:
            raise ValueError(f"{self.name}: no parameter named {sorted(unknown)[:3]} in this model")
        named = [(n, p) for n, p in self.named if n in wanted]
        for n, p in self.named:
            p.requires_grad_(n in wanted)
        old = self.optimizer
        self.master_weights.set_active(named)
        masters = self.master_weights.masters
        if not masters:
            self.optimizer = None
            return
        group = {"params": masters, "lr": self.lr * self._lr_scale, "base_lr": self.lr}
        self.optimizer = make_adamw([group], self.lr, self.options, self.weight_decay)
        if old is not None:
            for master in masters:
                if master in old.state:
                    self.optimizer.state[master] = old.state[master]

    @property
    def active_names(self) -> list[str]:
        return list(self.master_weights.names)

    # --- one step ----------------------------------------------------------------------------------------------
    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.master_weights.copy_to_model()
        self.after_update()

    def after_update(self) -> None:
        """Subclasses: advance the schedule, possibly calling activate() (after the masters were written back)."""

    def zero_grad(self) -> None:
        super().zero_grad()
        for _, p in self.named:  # an fp32 parameter that just left the subset may still hold its gradient
            p.grad = None

    def set_lr_scale(self, scale: float) -> None:
        self._lr_scale = float(scale)
        if self.optimizer is not None:
            super().set_lr_scale(scale)

    # --- measurement and persistence ----------------------------------------------------------------------------
    def state_tensors(self):
        return optimizer_state_tensors(self.optimizer) if self.optimizer is not None else iter(())

    def schedule_state(self) -> dict:
        """Subclasses: what their schedule needs to continue exactly (plain Python values and tensors)."""
        return {}

    def load_schedule_state(self, state: dict) -> None:
        """Subclasses: restore schedule_state(); called after the saved subset is active again."""

    def state_dict(self) -> dict:
        return {"active": self.active_names, "masters": [m.detach() for m in self.master_weights.masters],
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "schedule": self.schedule_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.activate(state["active"])
        masters = self.master_weights.masters
        if len(state["masters"]) != len(masters):
            raise ValueError(f"{self.name}: checkpoint has {len(state['masters'])} master tensors for "
                             f"{len(masters)} active parameters; was it saved from a different model or method?")
        for mine, saved in zip(masters, state["masters"]):
            mine.copy_(saved)
        self.master_weights.copy_to_model()
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            # the saved lr already carries the schedule; set_lr_scale rescales from base_lr before the next step
        self.load_schedule_state(state["schedule"])
