"""How much of a block visit's update survives in low-precision weights (opt-in: ``measure_rounding=True``).

BAdam gives only the active block an fp32 master copy and drops it when the block is left (badam 1.4 does the same);
between steps the model's bf16/fp16 weights are overwritten with the masters' rounding. What a visit leaves in the
model is therefore the stored rounding of its masters: every part of the visit's accumulated update smaller than half
an ulp of a weight (|w| x 2^-9 in bf16) is lost at the switch. With small K x lr this can be most of the update and no
loss curve says so; this module measures it.

At the start of a visit ``VisitRounding`` copies the stored values of the visit's low-precision tensors (in their own
dtype: 2 bytes per parameter of the active block in bf16/fp16). At the end, with the masters still alive, it computes
over the whole visit (fp32 math, in chunks of at most ``CHUNK_NUMEL`` elements, so no block-sized temporaries):

  update_kept     = ||w_end(stored) - w_start|| / ||master_end - w_start||   (1: the update survives whole)
  elements_frozen = share of the elements whose master moved but whose stored value did not change

Parameters stored in fp32 / fp64 are their own masters: nothing is lost, nothing is measured.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable

import torch

CHUNK_NUMEL = 1 << 22       # 16 MiB of fp32 per temporary
KEPT_WARNING_THRESHOLD = 0.5  # warn (once) when a visit keeps less than this share of its update's norm
_LOW_PRECISION = (torch.bfloat16, torch.float16)


class VisitRounding:
    """Start copies of one visit's low-precision values; ``finish()`` says how much of the update they keep.

    `pairs` holds (stored, master): ``stored()`` returns the model's current values in their low-precision dtype,
    shaped like `master` (the parameter itself for a whole tensor; a gather of the trained entries in ratio mode).
    Pairs whose values are not low precision, or whose master is the stored tensor itself, are skipped."""

    def __init__(self, pairs: list[tuple[Callable[[], torch.Tensor], torch.Tensor]]):
        self._entries: list[tuple[Callable[[], torch.Tensor], torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for stored, master in pairs:
                now = stored()
                if now.dtype not in _LOW_PRECISION or now is master:
                    continue
                self._entries.append((stored, master, now.detach().clone()))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def nbytes(self) -> int:
        return sum(start.numel() * start.element_size() for _, _, start in self._entries)

    @torch.no_grad()
    def finish(self) -> dict | None:
        """The visit's figures (see the module docstring), or None when nothing low precision was measured.
        update_kept / elements_frozen are None when no master moved (e.g. lr 0 for the whole visit)."""
        if not self._entries:
            return None
        master_sq = stored_sq = 0.0
        moved = frozen = elements = 0
        dtypes = set()
        for stored, master, start in self._entries:
            dtypes.add(str(start.dtype).removeprefix("torch."))
            now_flat, master_flat, start_flat = stored().reshape(-1), master.detach().reshape(-1), start.reshape(-1)
            elements += start_flat.numel()
            for a in range(0, start_flat.numel(), CHUNK_NUMEL):
                b = min(a + CHUNK_NUMEL, start_flat.numel())
                begin = start_flat[a:b].float()
                master_step = master_flat[a:b] - begin
                stored_step = now_flat[a:b].float() - begin
                master_sq += float(torch.linalg.vector_norm(master_step)) ** 2
                stored_sq += float(torch.linalg.vector_norm(stored_step)) ** 2
                master_moved = master_step != 0
                moved += int(master_moved.sum())
                frozen += int((master_moved & (stored_step == 0)).sum())
        master_norm, stored_norm = math.sqrt(master_sq), math.sqrt(stored_sq)
        self._entries = []
        return {"update_kept": stored_norm / master_norm if master_norm > 0 else None,
                "elements_frozen": frozen / moved if moved else None,
                "update_norm": master_norm, "stored_update_norm": stored_norm,
                "elements": elements, "elements_moved": moved, "dtype": ",".join(sorted(dtypes))}


def _user_stacklevel() -> int:
    """warnings.warn's stacklevel, called from the function that warns, that names the first caller outside badam and
    torch (step() runs under torch.no_grad's wrapper, release() does not)."""
    inside = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        level, frame = level + 1, frame.f_back
    return level


def warn_if_lost(figures: dict, where: str, owner: str) -> bool:
    """Warn when a visit kept less than KEPT_WARNING_THRESHOLD of its update; True when it warned."""
    kept = figures.get("update_kept")
    if kept is None or kept >= KEPT_WARNING_THRESHOLD:
        return False
    frozen = figures.get("elements_frozen")
    frozen_text = f", {frozen:.0%} of the elements that should have moved did not change" if frozen is not None else ""
    warnings.warn(
        f"{owner}: {where} kept only {kept:.0%} of its update in the stored {figures['dtype']} weights{frozen_text}: "
        f"the fp32 masters are dropped at the switch, so every change below half a {figures['dtype']} ulp of a weight "
        "is lost. Remedies: store the weights in fp32 and compute in bf16 (autocast), or raise K x lr "
        "(steps per block x learning rate). (Warned once; every visit's figures go to log_fn.)",
        stacklevel=_user_stacklevel())
    return True


class RoundingLog:
    """One optimizer's record of its measured visits: the latest visit's figures and the once-only warning."""

    def __init__(self, owner: str):
        self.owner = owner
        self.last: dict | None = None
        self._warned = False

    def finish(self, meter: VisitRounding | None, context: dict, where: str) -> dict | None:
        """End `meter`'s visit: {**context, **figures}, kept as the latest, or None when nothing was measured; warns
        (once per optimizer) when the visit kept less than KEPT_WARNING_THRESHOLD of its update."""
        figures = meter.finish() if meter is not None else None
        if figures is None:
            return None
        self.last = {**context, **figures}
        if not self._warned:
            self._warned = warn_if_lost(figures, where, self.owner)
        return self.last

    def latest(self) -> dict | None:
        return None if self.last is None else dict(self.last)


class BlockRoundingMixin:
    """measure_rounding of BlockOptimizer (badam/block_optimizer.py), which provides the attributes."""

    def _begin_visit_rounding(self, measure: bool = True) -> None:
        """The visit beginning now: a start copy of its stored values when measure_rounding is on and the block has
        low-precision weights (separate masters); otherwise, or with measure=False (a resume mid-visit, whose start
        values are unknown), no measure, so the visit reports nothing."""
        self._visit_rounding = None
        masters = self._masters
        if measure and self.measure_rounding and masters.has_copies:
            self._visit_rounding = VisitRounding([((lambda p=p: p.detach()), m)
                                                  for p, m in zip(masters.params, masters.masters)])

    def _end_visit(self) -> None:
        """Report what the stored weights keep of the visit now ending (masters still alive), if it was measured."""
        meter, self._visit_rounding = self._visit_rounding, None
        block = self.current_block
        record = self._rounding_log.finish(
            meter, {"global_step": self.global_step, "block": block, "block_prefixes": self.block_prefix_list[block]},
            f"block {block} {self.block_prefix_list[block]} (visit ending at step {self.global_step})")
        if record is not None:
            self._report({"event": "visit_end", "block_epoch": self.block_epoch, **record})

    @property
    def last_visit_rounding(self) -> dict | None:
        """The latest visit's measure (measure_rounding=True): global_step, block, block_prefixes, update_kept,
        elements_frozen, update_norm, stored_update_norm, elements, elements_moved, dtype; None before the first."""
        return self._rounding_log.latest()
