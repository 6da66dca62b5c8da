"""The training loop's view of the data: micro-batches grouped into optimizer steps across epochs, resumable at any
step (experiments/checkpoint.py's Position), and the number of steps a run plans."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from experiments.checkpoint import Position
from experiments.config import TrainConfig

BatchesFn = Callable[[int], Iterable[dict]]


class BatchStream:
    """Groups micro-batches into optimizer steps across epochs. A remainder of fewer than grad_accum micro-batches
    at the end of an epoch is dropped (as drop_last would), so every step sees exactly grad_accum micro-batches."""

    def __init__(self, batches_fn: BatchesFn, grad_accum: int, position: Position):
        self.batches_fn = batches_fn
        self.grad_accum = grad_accum
        self.epoch = position.epoch
        self.micro = position.micro
        self._iter: Iterator | None = None

    def _open_epoch(self, skip: int) -> None:
        self._iter = iter(self.batches_fn(self.epoch))
        for _ in range(skip):
            if next(self._iter, None) is None:
                raise RuntimeError(f"cannot resume: epoch {self.epoch} has fewer than {skip} micro-batches")

    def next_step(self) -> list[dict]:
        empty_epochs = 0
        while True:
            if self._iter is None:
                self._open_epoch(self.micro)
            group = []
            for batch in self._iter:
                group.append(batch)
                if len(group) == self.grad_accum:
                    self.micro += self.grad_accum
                    return group
            # epoch exhausted: drop the remainder and start the next epoch
            empty_epochs += 1
            if empty_epochs > 1 or (self.micro == 0 and not group):
                raise RuntimeError(f"the data gives {self.micro + len(group)} micro-batch(es) per epoch, fewer than "
                                   f"train.grad_accum={self.grad_accum}; add data or lower grad_accum")
            self.epoch, self.micro, self._iter = self.epoch + 1, 0, None


def count_micro_batches(batches_fn: BatchesFn) -> int:
    batches = batches_fn(0)
    if hasattr(batches, "__len__"):
        return len(batches)
    return sum(1 for _ in batches)


def plan_steps(cfg: TrainConfig, batches_fn: BatchesFn) -> int:
    """Total optimizer steps: max_steps when given, else epochs × (micro-batches per epoch // grad_accum)."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    n_micro = count_micro_batches(batches_fn)
    per_epoch = n_micro // cfg.grad_accum
    if per_epoch == 0:
        raise RuntimeError(f"the data gives {n_micro} micro-batch(es) per epoch, fewer than train.grad_accum="
                           f"{cfg.grad_accum}; add data or lower grad_accum")
    return max(1, int(round(cfg.epochs * per_epoch)))
