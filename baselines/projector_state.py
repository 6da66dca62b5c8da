"""Checkpointing optimizers that keep a projector object in their per-parameter state (APOLLO, Q-GaLore).

Their `state["projector"]` is a Python object (projection matrix, its quantization scales, a seed that advances, an
adaptive refresh interval, ...). torch.load(weights_only=True), which this suite uses for every checkpoint, refuses
arbitrary objects, so the projector is saved as its attributes (tensors and plain values) and rebuilt on load by a
factory that receives the parameter's group, then given those attributes back.
"""
from __future__ import annotations

from typing import Callable

import torch

PROJECTOR_KEY = "projector"
SAVED_KEY = "projector_fields"
_PLAIN = (int, float, bool, str, type(None))


def _plain(value, where: str):
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):  # torch.Size included: saved as a tuple
        return type(value)(_plain(v, where) for v in value) if not isinstance(value, torch.Size) \
            else tuple(int(v) for v in value)
    raise TypeError(f"projector attribute {where} holds a {type(value).__name__}; only tensors and plain values can "
                    f"be checkpointed with weights_only=True")


def projector_fields(projector) -> dict:
    return {name: _plain(value, name) for name, value in vars(projector).items()}


def state_dict_with_plain_projectors(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every projector replaced by its attributes."""
    sd = optimizer.state_dict()
    state = {}
    for index, per_param in sd["state"].items():
        per_param = dict(per_param)
        projector = per_param.pop(PROJECTOR_KEY, None)
        if projector is not None:
            per_param[SAVED_KEY] = projector_fields(projector)
        state[index] = per_param
    return {"state": state, "param_groups": sd["param_groups"]}


def load_state_dict_with_projectors(optimizer: torch.optim.Optimizer, sd: dict,
                                    make_projector: Callable[[dict], object]) -> None:
    """Inverse of state_dict_with_plain_projectors: make_projector(group) builds an empty projector for a parameter of
    that group, which then receives the saved attributes."""
    state = {}
    for index, per_param in sd["state"].items():
        state[index] = {k: v for k, v in per_param.items() if k != SAVED_KEY}
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = [group for group in optimizer.param_groups for _ in group["params"]]
    for index, per_param in sd["state"].items():
        fields = per_param.get(SAVED_KEY)
        if fields is None:
            continue
        projector = make_projector(groups[int(index)])
        for name, value in fields.items():
            setattr(projector, name, list(value) if isinstance(value, list) else value)
        optimizer.state[params[int(index)]][PROJECTOR_KEY] = projector


def projector_tensors(optimizer: torch.optim.Optimizer):
    """Every tensor a projector holds (projection matrix, its quantization scales and zero points, ...), for
    memory_split."""
    for per_param in optimizer.state.values():
        projector = per_param.get(PROJECTOR_KEY)
        if projector is None:
            continue
        for value in vars(projector).values():
            items = value if isinstance(value, (list, tuple)) else [value]
            yield from (t for t in items if isinstance(t, torch.Tensor))


class ProjectorCheckpointing:
    """Mixin for the GaLore-family methods whose optimizer keeps projector objects in its per-parameter state
    (APOLLO, Q-GaLore): their memory split counts the projectors' tensors, and checkpoints store the projectors as
    plain attributes. The method class provides make_projector(group) (the factory that rebuilds one)."""

    def state_tensors(self):
        from baselines.base import optimizer_state_tensors

        yield from optimizer_state_tensors(self.optimizer)
        yield from projector_tensors(self.optimizer)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        return state_dict_with_plain_projectors(optimizer)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, sd: dict) -> None:
        load_state_dict_with_projectors(optimizer, sd, self.make_projector)
