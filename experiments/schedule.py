"""Learning-rate schedules as multipliers of the base learning rate.

The loop passes the multiplier to `method.set_lr_scale`, so every method (torch optimizers, BAdam's block optimizer,
fused LOMO updates) follows the same schedule without owning a torch LR scheduler.

The shapes follow the conventions of `transformers.optimization` (get_cosine/linear/constant_schedule_with_warmup):
`step` counts optimizer steps already taken, so the first update uses multiplier(0), which is 0 when there is warmup.
"""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")


def warmup_steps_for(total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> int:
    """Explicit warmup steps win; otherwise ceil(ratio × total), as transformers' TrainingArguments does."""
    if warmup_steps < 0 or warmup_ratio < 0 or warmup_ratio > 1:
        raise ValueError(f"warmup must be >= 0 steps and a ratio in [0, 1]; got {warmup_steps} steps, "
                         f"ratio {warmup_ratio}")
    if warmup_steps > 0:
        return int(warmup_steps)
    return math.ceil(warmup_ratio * total_steps)


def lr_multiplier(step: int, total_steps: int, schedule: str = "cosine", warmup: int = 0) -> float:
    """Multiplier of the base learning rate for the update that follows `step` completed updates."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = (step - warmup) / decay_steps
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
