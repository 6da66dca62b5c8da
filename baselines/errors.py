"""Errors a method raises when it cannot run in the requested setting, so the harness can record "unsupported"
instead of a crash, and never fake a result."""
from __future__ import annotations

import torch
from torch import nn


class MethodUnsupportedError(RuntimeError):
    """The method cannot run here (e.g. its library needs CUDA, or the model has no layer names it understands)."""


class UnsupportedSetupError(ValueError):
    """The method could run, but not with the requested training setup (e.g. gradient accumulation or global-norm
    clipping with an update fused into backward); the message says which setting to change."""


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def require_cuda(method_name: str, model: nn.Module, why: str) -> None:
    """Raise MethodUnsupportedError unless the model lives on a CUDA device."""
    device = model_device(model)
    if device.type != "cuda":
        raise MethodUnsupportedError(
            f"{method_name} needs CUDA ({why}); the model is on {device}. Run it on a GPU machine, "
            f"or pick a method that runs on CPU.")


def accumulation_refused(method_name: str) -> UnsupportedSetupError:
    """The error a fused-update method (LOMO, layer-wise GaLore) raises when asked to accumulate gradients."""
    return UnsupportedSetupError(
        f"{method_name} updates the weights inside backward and cannot accumulate gradients over micro-batches; "
        "set train.grad_accum to 1 (use a larger micro-batch instead)")
