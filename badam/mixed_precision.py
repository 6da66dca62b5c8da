"""fp32 master weights and fp32 gradient accumulation for parameters stored in bf16 / fp16.

The BAdam paper keeps the model in low precision and gives only the parameters being optimised an fp32 master copy,
an fp32 gradient and fp32 optimizer states. This module holds that machinery; BlockOptimizer applies it to the active
block and full-parameter baselines (baselines/adam.py, ...) apply it to every parameter.

How gradients flow: autograd writes the low-precision gradient into ``p.grad``; a post-accumulate-grad hook adds it
into ``master.grad`` (fp32) and sets ``p.grad = None`` at once. So across micro-batches the sum is formed in fp32 (a
bf16 running sum would lose the small contributions), and the low-precision gradient never outlives one backward.
Consequence for callers: after backward, the MODEL's ``p.grad`` is None for low-precision parameters; clip and read
gradients on ``masters`` instead.
"""
from __future__ import annotations

import warnings
import weakref

import torch

_LOW_PRECISION = (torch.bfloat16, torch.float16)
# The hook currently folding each low-precision parameter's gradient, keyed by id(param) (tensors compare
# elementwise, so they cannot be dict keys themselves; the weakref guards against a reused id). A second owner (e.g. a
# new BlockOptimizer built over a model whose old optimizer was simply dropped) takes the parameter over; otherwise
# the stale hook would keep catching the gradients and the new master would never see any.
_CURRENT_HOOK: dict[int, tuple[weakref.ref, object]] = {}


def local_nbytes(t: torch.Tensor) -> int:
    """Bytes this process holds for `t`: the local shard of a sharded DTensor (FSDP2), else the whole tensor."""
    local = getattr(t, "_local_tensor", None)
    local = local if isinstance(local, torch.Tensor) else t
    return local.numel() * local.element_size()


def _current_hook(p: torch.Tensor):
    entry = _CURRENT_HOOK.get(id(p))
    return entry[1] if entry is not None and entry[0]() is p else None


class FP32MasterWeights:
    """fp32 master copies + fp32 gradient accumulation for a list of parameters."""

    def __init__(self, params: list[torch.nn.Parameter]):
        unique: list[torch.nn.Parameter] = []
        seen: set[int] = set()
        for p in params:  # a tied weight listed twice must get one master, one hook
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        self.params: list[torch.nn.Parameter] = unique
        self.masters: list[torch.Tensor] = []
        self._hooks = []
        for p in unique:
            if p.dtype in _LOW_PRECISION:
                master = p.detach().float()  # a new fp32 tensor already: one kernel, no extra clone
                master.requires_grad_(True)  # some optimizers and clip utilities expect trainable leaves
                if p.grad is not None:  # a gradient already present is kept, now in fp32
                    master.grad = p.grad.float()
                    p.grad = None
                previous = _current_hook(p)
                if previous is not None:
                    previous.remove()
                    warnings.warn("FP32MasterWeights: a parameter already had an fp32 master from another, unreleased "
                                  "FP32MasterWeights (e.g. an optimizer that was replaced without release()); the "
                                  "new one takes it over and the old master stops receiving gradients", stacklevel=2)
                handle = p.register_post_accumulate_grad_hook(self._make_hook(master))
                _CURRENT_HOOK[id(p)] = (weakref.ref(p), handle)
                self._hooks.append((p, handle))
                self.masters.append(master)
            elif p.dtype.is_floating_point:
                self.masters.append(p)  # fp32 / fp64 parameters are their own masters
            else:
                raise TypeError(f"FP32MasterWeights: parameter of dtype {p.dtype} is not floating point; "
                                f"valid dtypes are float32, float64, bfloat16, float16")

    @staticmethod
    def _make_hook(master: torch.Tensor):
        def fold_into_fp32(param: torch.Tensor) -> None:
            grad = param.grad
            if grad is None:
                return
            with torch.no_grad():
                if master.grad is None:
                    master.grad = grad.float()
                else:
                    master.grad.add_(grad)  # in-place add promotes bf16 -> fp32 without a temporary copy
            param.grad = None

        return fold_into_fp32

    @property
    def has_copies(self) -> bool:
        """True when at least one parameter is low precision (so masters are separate tensors)."""
        return any(m is not p for m, p in zip(self.masters, self.params))

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Write the masters back into the model's (low-precision) parameters, after optimizer.step()."""
        for p, master in zip(self.params, self.masters):
            if master is not p:
                p.copy_(master)

    @torch.no_grad()
    def copy_one_to_model(self, index: int) -> None:
        """copy_to_model for the index-th parameter only (for updates done tensor by tensor)."""
        p, master = self.params[index], self.masters[index]
        if master is not p:
            p.copy_(master)

    def zero_grad(self) -> None:
        for master in self.masters:
            master.grad = None

    def release(self) -> None:
        """Remove the hooks and drop masters and gradients; the model's parameters stay as they are."""
        for p, handle in self._hooks:
            handle.remove()
            if _current_hook(p) is handle:
                del _CURRENT_HOOK[id(p)]
        self._hooks = []
        for master in self.masters:
            master.grad = None
        self.masters = []
        self.params = []

    def nbytes(self) -> dict[str, int]:
        copies = sum(local_nbytes(m) for m, p in zip(self.masters, self.params) if m is not p)
        grads = sum(local_nbytes(m.grad) for m in self.masters if m.grad is not None)
        return {"masters": copies, "grads": grads}

    def __len__(self) -> int:
        return len(self.masters)
