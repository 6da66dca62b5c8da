"""fp32 master weights and fp32 gradient accumulation for parameters stored in bf16 / fp16.

The BAdam paper keeps the model in low precision and gives only the parameters being optimised an fp32 master copy,
an fp32 gradient and fp32 optimizer states. This module holds that machinery; BlockOptimizer applies it to the active
block and full-parameter baselines (baselines/adam.py, ...) apply it to every parameter.

Where gradients live is a choice (``gradients=``):

``"param"`` — torch.optim's contract. After backward the low-precision ``p.grad`` holds the gradient, so clipping,
    editing, inspecting or assigning ``p.grad`` works as with any torch optimizer. A second backward before the update
    (gradient accumulation) must not be summed in bf16: a tensor hook sees each incoming gradient *before* autograd adds
    it to ``p.grad``, adds it to an fp32 buffer (started from the ``p.grad`` already there) and lets autograd store the
    new gradient alone; a post-accumulate hook then overwrites ``p.grad`` with the bf16 rounding of the fp32 sum. So
    the sum is formed in fp32, and ``p.grad`` shows it. At the update the fp32 buffer is used only while ``p.grad``
    still is that rounding (same tensor, same values): a gradient replaced or edited in place (clipping, surgery) is
    taken from ``p.grad``. Without accumulation no fp32 buffer exists: ``p.grad`` (2 bytes per parameter) is turned
    into fp32 one tensor at a time inside the update.
``"master"`` — the gradient is folded into ``master.grad`` (fp32) during backward and ``p.grad`` is set to None at
    once: 4 bytes per parameter, no low-precision copy. Callers clip and read gradients on the masters (the harness's
    full-parameter methods do; a torch clip over ``model.parameters()`` sees nothing in this mode). FSDP2 calls
    post-accumulate hooks after its reduce-scatter, so this mode also accumulates sharded gradients in fp32, whereas in
    ``"param"`` mode FSDP2 adds micro-batch gradients into ``p.grad`` itself, in bf16 (warned once when detected).
"""
from __future__ import annotations

import math
import warnings
import weakref

import torch

_LOW_PRECISION = (torch.bfloat16, torch.float16)
GRADIENT_MODES = ("param", "master")
# The hooks currently serving each low-precision parameter, keyed by id(param) (tensors compare elementwise, so they
# cannot be dict keys themselves; the weakref guards against a reused id). A second owner (e.g. a new BlockOptimizer
# built over a model whose old optimizer was simply dropped) takes the parameter over; otherwise the stale hooks would
# keep catching the gradients.
_CURRENT_HOOK: dict[int, tuple[weakref.ref, list]] = {}


def local_nbytes(t: torch.Tensor) -> int:
    """Bytes this process holds for `t`: the local shard of a sharded DTensor (FSDP2), else the whole tensor."""
    local = getattr(t, "_local_tensor", None)
    local = local if isinstance(local, torch.Tensor) else t
    return local.numel() * local.element_size()


def _current_hooks(p: torch.Tensor):
    entry = _CURRENT_HOOK.get(id(p))
    return entry[1] if entry is not None and entry[0]() is p else None


def total_norm_fp32(tensors: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Norm of the concatenation of `tensors`, computed in fp32 whatever their dtype (a bf16 norm keeps 3 digits)."""
    norm_type = float(norm_type)
    if not tensors:
        return torch.zeros(())
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(t, norm_type, dtype=torch.float32).to(device) for t in tensors]
    if math.isinf(norm_type):
        return torch.stack(norms).max()
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _check_finite(norm: torch.Tensor, norm_type: float) -> None:
    if not torch.isfinite(norm):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite ({float(norm)}), so "
                           "it cannot be clipped; pass error_if_nonfinite=False to scale by it anyway")


class _GradSlot:
    """Gradient bookkeeping of one low-precision parameter in "param" mode."""

    __slots__ = ("param", "acc", "mirror", "pending", "seen_by_pre", "last", "zeroed")

    def __init__(self, param: torch.Tensor):
        self.param = param
        self.acc: torch.Tensor | None = None   # fp32 sum of the gradients of several backward passes
        self.mirror: weakref.ref | None = None  # the p.grad tensor that holds acc rounded to the weight dtype
        self.pending = False                    # the tensor hook folded this arrival; the post hook writes p.grad
        self.seen_by_pre = False
        self.last: weakref.ref | None = None    # p.grad after the latest arrival (to detect foreign accumulation)
        self.zeroed: tuple | None = None        # (p.grad, its version) right after zero_grad(set_to_none=False)

    def valid_acc(self) -> torch.Tensor | None:
        """The fp32 sum, while p.grad still is its rounding: not replaced (identity) and not edited (values)."""
        grad = self.param.grad
        if self.acc is None or grad is None or self.mirror is None or self.mirror() is not grad:
            return None
        if not torch.equal(grad, self.acc.to(grad.dtype)):  # edited in place, even through .data
            return None
        return self.acc

    def drop(self) -> None:
        self.acc, self.mirror, self.pending, self.zeroed = None, None, False, None

    def holds_untouched_zeros(self) -> bool:
        """p.grad is the zero tensor zero_grad(set_to_none=False) left, unchanged since."""
        grad = self.param.grad
        return (self.zeroed is not None and grad is not None and self.zeroed[0]() is grad
                and grad._version == self.zeroed[1])


class FP32MasterWeights:
    """fp32 master copies + fp32 gradient accumulation for a list of parameters (see the module docstring)."""

    def __init__(self, params: list[torch.nn.Parameter], *, gradients: str = "master"):
        if gradients not in GRADIENT_MODES:
            raise ValueError(f"gradients={gradients!r} is not valid; choose one of {', '.join(GRADIENT_MODES)}")
        self.gradients = gradients
        unique: list[torch.nn.Parameter] = []
        seen: set[int] = set()
        for p in params:  # a tied weight listed twice must get one master, one hook
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        self.params: list[torch.nn.Parameter] = unique
        self.masters: list[torch.Tensor] = []
        # per parameter: its version counter when its master and its stored value last agreed (None: fp32, no copy)
        self._synced_version: list[int | None] = []
        self._slots: list[_GradSlot | None] = []
        self._hooks: list[tuple[torch.Tensor, list]] = []
        for p in unique:
            if p.dtype in _LOW_PRECISION:
                master = p.detach().float()  # a new fp32 tensor already: one kernel, no extra clone
                master.requires_grad_(True)  # some optimizers and clip utilities expect trainable leaves
                if gradients == "master" and p.grad is not None:  # a gradient already present is kept, in fp32
                    master.grad = p.grad.float()
                    p.grad = None
                previous = _current_hooks(p)
                if previous is not None:
                    for handle in previous:
                        handle.remove()
                    warnings.warn("FP32MasterWeights: a parameter already had an fp32 master from another, unreleased "
                                  "FP32MasterWeights (e.g. an optimizer that was replaced without release()); the "
                                  "new one takes it over and the old one stops receiving gradients", stacklevel=2)
                handles = self._register_hooks(p, master)
                _CURRENT_HOOK[id(p)] = (weakref.ref(p), handles)
                self._hooks.append((p, handles))
                self.masters.append(master)
                self._synced_version.append(p._version)
            elif p.dtype.is_floating_point:
                self.masters.append(p)  # fp32 / fp64 parameters are their own masters; autograd sums in fp32
                self._slots.append(None)
                self._synced_version.append(None)
            else:
                raise TypeError(f"FP32MasterWeights: parameter of dtype {p.dtype} is not floating point; "
                                f"valid dtypes are float32, float64, bfloat16, float16")

    # --- hooks -------------------------------------------------------------------------------------------------
    def _register_hooks(self, p: torch.Tensor, master: torch.Tensor) -> list:
        if self.gradients == "master":
            self._slots.append(None)
            return [p.register_post_accumulate_grad_hook(self._fold_hook(master))]
        slot = _GradSlot(p)
        self._slots.append(slot)
        return [p.register_hook(self._before_accumulate(slot)),
                p.register_post_accumulate_grad_hook(self._after_accumulate(slot))]

    @staticmethod
    def _fold_hook(master: torch.Tensor):
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

    @staticmethod
    def _before_accumulate(slot: _GradSlot):
        def sum_in_fp32(incoming: torch.Tensor) -> torch.Tensor:
            slot.seen_by_pre = True
            held = slot.param.grad
            if held is not None and slot.holds_untouched_zeros():
                slot.param.grad = held = None  # 0 + incoming is incoming: no fp32 buffer needed
            if held is None:  # first gradient since zero_grad: autograd stores it as it is
                slot.drop()
                return incoming
            with torch.no_grad():
                acc = slot.valid_acc()
                acc = held.float() if acc is None else acc  # start from what p.grad holds (it may be hand-made)
                acc.add_(incoming)
            slot.acc, slot.pending = acc, True
            slot.param.grad = None  # autograd then stores `incoming` alone; the post hook writes the fp32 sum there
            return incoming

        return sum_in_fp32

    @staticmethod
    def _after_accumulate(slot: _GradSlot):
        def show_fp32_sum(param: torch.Tensor) -> None:
            grad = param.grad
            if slot.pending and grad is not None:
                with torch.no_grad():
                    grad.copy_(slot.acc)
                slot.mirror = weakref.ref(grad)
            elif not slot.seen_by_pre and slot.last is not None and slot.last() is grad and grad is not None:
                warnings.warn(
                    "FP32MasterWeights: a gradient was added into an existing low-precision p.grad outside autograd "
                    "(FSDP2 does this across micro-batches), so that sum was formed in "
                    f"{str(grad.dtype).removeprefix('torch.')}, not fp32; use gradients='master' for fp32 "
                    "accumulation there", stacklevel=2)
            slot.pending = slot.seen_by_pre = False
            slot.last = weakref.ref(grad) if grad is not None else None

        return show_fp32_sum

    # --- gradients ---------------------------------------------------------------------------------------------
    @property
    def has_copies(self) -> bool:
        """True when at least one parameter is low precision (so masters are separate tensors)."""
        return any(m is not p for m, p in zip(self.masters, self.params))

    def grad_fp32(self, index: int) -> torch.Tensor | None:
        """The gradient the update uses for the index-th parameter, in fp32 (a new tensor when converted)."""
        p, master, slot = self.params[index], self.masters[index], self._slots[index]
        if self.gradients == "master" or master is p:
            return master.grad
        acc = slot.valid_acc()
        if acc is not None:
            return acc
        return None if p.grad is None else p.grad.float()

    def held_grad(self, index: int, *, check_values: bool = True) -> torch.Tensor | None:
        """The tensor that holds the index-th gradient step() will use, where it lives (no conversion, so an in-place
        change of it changes the update): the master's gradient in "master" mode and for fp32 parameters, the fp32
        accumulation sum while p.grad is its rounding, else p.grad. check_values=False trusts p.grad's identity alone
        (no comparison, which would wait for the device): right after this class's hooks wrote it, inside backward."""
        p, master, slot = self.params[index], self.masters[index], self._slots[index]
        if self.gradients == "master" or master is p:
            return master.grad
        if check_values:
            acc = slot.valid_acc()
        else:
            mirror = slot.mirror() if slot.mirror is not None else None
            acc = slot.acc if slot.acc is not None and mirror is not None and mirror is p.grad else None
        return acc if acc is not None else p.grad

    @torch.no_grad()
    def show_grad(self, index: int) -> None:
        """After an in-place change of held_grad(index): p.grad shows the fp32 sum's rounding again (if one is held)."""
        p, slot = self.params[index], self._slots[index]
        if slot is not None and slot.acc is not None and slot.mirror is not None and slot.mirror() is p.grad:
            p.grad.copy_(slot.acc)

    def set_grad(self, index: int, value: torch.Tensor) -> None:
        """Give the index-th parameter the gradient `value` (a copy, in the dtype where gradients live) in place of
        whatever it held."""
        p, master, slot = self.params[index], self.masters[index], self._slots[index]
        if self.gradients == "master" or master is p:
            master.grad = value.detach().to(master.dtype, copy=True)
            return
        if slot is not None:
            slot.drop()
        p.grad = value.detach().to(p.dtype, copy=True)

    def stage_grad(self, index: int) -> bool:
        """Put the fp32 gradient on the master for the optimizer; False when the parameter has none. A weight written
        from outside since the master was made (see adopt_model_writes) is taken over first."""
        self.adopt_model_writes(index)
        master = self.masters[index]
        if self.gradients == "param" and master is not self.params[index]:
            master.grad = self.grad_fp32(index)
        return master.grad is not None

    def unstage_grad(self, index: int) -> None:
        """After the update: drop the fp32 gradient. In "param" mode p.grad stays until zero_grad (torch's
        contract); in "master" mode the gradient was the optimizer's and is consumed."""
        master, slot = self.masters[index], self._slots[index]
        if master is not self.params[index] or self.gradients == "master":
            master.grad = None
        if slot is not None:
            slot.drop()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> torch.Tensor:
        """Total norm of the gradients the update would use (computed in fp32), scaled to `max_norm` where they live:
        the fp32 sum and its bf16 rounding on p.grad together, else p.grad itself (or the masters in "master" mode)."""
        if self.gradients == "master":
            grads = [m for m in self.masters if m.grad is not None]
            if not grads:
                return torch.zeros(())
            return torch.nn.utils.clip_grad_norm_(grads, max_norm, norm_type=norm_type,
                                                  error_if_nonfinite=error_if_nonfinite)
        owners = []  # (tensor the norm is taken of, slot whose p.grad mirrors it or None)
        for p, slot in zip(self.params, self._slots):
            acc = slot.valid_acc() if slot is not None else None
            if acc is not None:
                owners.append((acc, slot))
            elif p.grad is not None:
                owners.append((p.grad, None))
        if not owners:
            return torch.zeros(())
        if any(hasattr(t, "_local_tensor") for t, _ in owners):  # DTensor gradients: torch knows how to reduce them
            return torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], max_norm,
                                                  norm_type=norm_type, error_if_nonfinite=error_if_nonfinite)
        norm = total_norm_fp32([t for t, _ in owners], norm_type)
        if error_if_nonfinite:
            _check_finite(norm, norm_type)
        if math.isinf(float(max_norm)):
            return norm
        coef = torch.clamp(float(max_norm) / (norm + 1e-6), max=1.0)
        for tensor, slot in owners:
            tensor.mul_(coef.to(tensor.device))
            if slot is not None:
                slot.param.grad.copy_(tensor)  # p.grad stays the rounding of the fp32 sum
        return norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim.Optimizer.zero_grad, over the model's parameters and the masters."""
        for p, master, slot in zip(self.params, self.masters, self._slots):
            if slot is not None:
                slot.drop()
            for t in (p, master) if master is not p else (p,):
                if t.grad is None:
                    continue
                if set_to_none:
                    t.grad = None
                    continue
                if t.grad.grad_fn is not None:
                    t.grad.detach_()
                else:
                    t.grad.requires_grad_(False)
                t.grad.zero_()
            if slot is not None and not set_to_none and p.grad is not None:
                slot.zeroed = (weakref.ref(p.grad), p.grad._version)

    def grad_tensors(self) -> list[torch.Tensor]:
        """Every tensor held as a gradient: p.grad of the parameters, fp32 sums, gradients staged on masters."""
        held = [p.grad for p in self.params if p.grad is not None]
        held += [m.grad for m, p in zip(self.masters, self.params) if m is not p and m.grad is not None]
        held += [s.acc for s in self._slots if s is not None and s.acc is not None]
        return held

    # --- weights -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def adopt_model_writes(self, index: int) -> bool:
        """If the index-th low-precision weight was written in place since its master last matched it (e.g.
        ``model.load_state_dict`` or an init after the optimizer was built), restart the master from the weight, as a
        torch optimizer would step from the weight as it is now; True when it did. Without this the next update would
        overwrite the loaded values with the master's stale ones. Free unless the weight's version counter moved
        (writes made through ``.data`` do not move it and are not seen); a moved counter with the values still
        equal to the master's rounding keeps the master (no fp32 bits lost)."""
        version = self._synced_version[index]
        p, master = self.params[index], self.masters[index]
        if version is None or p._version == version:
            return False
        adopted = not torch.equal(p, master.to(p.dtype))
        if adopted:
            master.copy_(p)
        self._synced_version[index] = p._version
        return adopted

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Write the masters back into the model's (low-precision) parameters, after optimizer.step()."""
        for index in range(len(self.masters)):
            self.copy_one_to_model(index)

    @torch.no_grad()
    def copy_one_to_model(self, index: int) -> None:
        """copy_to_model for the index-th parameter only (for updates done tensor by tensor)."""
        p, master = self.params[index], self.masters[index]
        if master is not p:
            p.copy_(master)
            self._synced_version[index] = p._version

    def release(self) -> None:
        """Remove the hooks and drop masters and fp32 gradients; the model's parameters (and, in "param" mode, their
        p.grad) stay as they are."""
        for p, handles in self._hooks:
            for handle in handles:
                handle.remove()
            if _current_hooks(p) is handles:
                del _CURRENT_HOOK[id(p)]
        self._hooks = []
        for master, p in zip(self.masters, self.params):
            if master is not p or self.gradients == "master":
                master.grad = None
        for slot in self._slots:
            if slot is not None:
                slot.drop()
        self.masters, self.params, self._slots, self._synced_version = [], [], [], []

    def nbytes(self) -> dict[str, int]:
        copies = sum(local_nbytes(m) for m, p in zip(self.masters, self.params) if m is not p)
        seen, grads = set(), 0
        for g in self.grad_tensors():
            if id(g) not in seen:
                seen.add(id(g))
                grads += local_nbytes(g)
        return {"masters": copies, "grads": grads}

    def __len__(self) -> int:
        return len(self.masters)
