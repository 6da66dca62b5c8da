"""Runs that differ only by seed: grouping, mean ± standard deviation, and mean curves with a band.

Two runs are seeds of one setting when they share the group, model, method, learning rate, method options and the
rest of the resolved config, leaving out the seed itself (config.seed; a method's own "seed" option too) and the
settings in EXECUTION_ONLY, which change how a run executes (memory, speed, where it writes) but not its arithmetic:
activation checkpointing, the chunking of the loss, timing and memory tracking, the eval batch size, checkpoints.
The spread over seeds is the sample standard deviation (n - 1 in the denominator); figures draw the mean curve and
the min-max band over seeds.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from plots.config_keys import without
from plots.runs import JudgedScore, Run

EXECUTION_ONLY = (("seed",), ("run_name",), ("description",), ("output",), ("model", "gradient_checkpointing"),
                  ("model", "attn_implementation"), ("train", "loss_chunk_tokens"), ("train", "track_memory"),
                  ("train", "timing_warmup_steps"), ("train", "eval_batch_size"), ("train", "save_every"),
                  ("train", "resume_from"), ("train", "device"), ("train", "fsdp_forward_prefetch"),
                  ("max_eval",))


@dataclass(frozen=True)
class MeanStd:
    """A value over seeds: mean, sample standard deviation (None for one seed) and the number of seeds."""
    mean: float
    std: float | None
    n: int

    def short(self, digits: int = 2) -> str:
        """"mean ± std": the std to two significant digits, the mean to the same decimal place (at least `digits`)."""
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        decimals = digits if self.std == 0 else max(digits, 1 - math.floor(math.log10(abs(self.std))))
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}"

    def text(self, digits: int = 2) -> str:
        """"mean ± std (n=k)", the cell of a table."""
        return f"{self.short(digits)} (n={self.n})"

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True)
class MeanSE:
    """One run's mean over many scored items (MT-bench judgments) with the standard error of that mean: what a
    single seed shows instead of a spread over seeds. `n` items scored of `of` judged (the rest unparseable); `seed`:
    the run's seed, named when its setting has other seeds that were not judged."""
    mean: float
    se: float
    n: int
    of: int | None = None
    seed: int | None = None

    def short(self, digits: int = 2) -> str:
        """"mean ± SE", the SE to two significant digits and the mean to the same decimal place (at least `digits`)."""
        decimals = digits if self.se == 0 else max(digits, 1 - math.floor(math.log10(abs(self.se))))
        return f"{self.mean:.{decimals}f} ± {self.se:.{decimals}f}"

    def text(self, digits: int = 2) -> str:
        """"5.66 ± 0.27 (SE; 115 of 160 scored)", the cell of a table ("(SE; seed 0: ...)" with a seed)."""
        counted = f"{self.n} of {self.of} scored" if self.of is not None else f"{self.n} scored"
        return f"{self.short(digits)} (SE; {'' if self.seed is None else f'seed {self.seed}: '}{counted})"

    def __str__(self) -> str:
        return self.text()


def summarize(values) -> MeanStd | None:
    """MeanStd of the finite numbers in `values` (None when there are none)."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)]
    if not numbers:
        return None
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return MeanStd(statistics.fmean(numbers), std, len(numbers))


def mean_of(value) -> float | None:
    """The number behind a table cell: a MeanStd's or MeanSE's mean, a plain number, else None (markers)."""
    if isinstance(value, (MeanStd, MeanSE)):
        return value.mean
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def setting_key(run: Run) -> tuple:
    """What a run's seeds share (see the module docstring)."""
    options = {k: v for k, v in run.method_options.items() if k != "seed"}
    rest = without(run.config, EXECUTION_ONLY)
    lr = None if run.lr is None else f"{run.lr:.6g}"
    return (run.group, run.model, run.method, lr, json.dumps(options, sort_keys=True, default=str),
            json.dumps(rest, sort_keys=True, default=str), json.dumps(run.tags, sort_keys=True, default=str))


@dataclass
class SeedGroup:
    """Runs of one setting, one per seed (of several runs with the same seed the most recent is kept)."""
    runs: list[Run] = field(default_factory=list)

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def method(self) -> str:
        return self.first.method

    @property
    def lr(self) -> float | None:
        return self.first.lr

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def seeds_text(self) -> str:
        """"0, 1, 2", with failed seeds named: "0, 1, 2 (2: diverged)"."""
        shown = ", ".join("—" if s is None else str(s) for s in self.seeds)
        failed = [f"{'—' if r.seed is None else r.seed}: {r.status}" for r in self.runs if not r.ok]
        return shown + (f" ({'; '.join(failed)})" if failed else "")

    def stat(self, value: Callable[[Run], float | None]) -> MeanStd | None:
        """MeanStd of value(run) over the finished (status ok) seeds that have it."""
        return summarize(value(r) for r in self.ok_runs)

    def judged(self, judge: str | None = None) -> list[JudgedScore]:
        """The MT-bench scores of `judge` (None: each run's preferred judge) of the finished seeds judged by it."""
        return [score for _run, score in self._judged_runs(judge)]

    def _judged_runs(self, judge: str | None) -> list[tuple[Run, JudgedScore]]:
        pairs = [(r, r.mtbench_judged.get(judge) if judge is not None else next(iter(r.mtbench_judged.values()), None))
                 for r in self.ok_runs]
        return [(r, s) for r, s in pairs if s is not None]

    def mtbench(self, judge: str | None = None) -> MeanStd | MeanSE | None:
        """Several judged seeds: MeanStd over the seeds; one: its MeanSE over its judgments (MeanStd of n=1 when the
        standard error is unknown); None when no finished seed was judged."""
        judged = self._judged_runs(judge)
        if len(judged) != 1:
            return summarize(s.overall for _r, s in judged)
        run, score = judged[0]
        if score.se is None or not score.n_scored:
            return MeanStd(score.overall, None, 1)
        named = run.seed if len(self.runs) > 1 else None
        return MeanSE(score.overall, score.se, score.n_scored, score.n_judged, named)

    def status(self) -> str:
        """"ok" when some seed finished, else the status of the most recent seed."""
        return "ok" if self.ok_runs else max(self.runs, key=lambda r: r.date).status


def by_seed(runs: list[Run]) -> list[SeedGroup]:
    """Runs grouped by setting_key, each group's runs sorted by seed, groups in order of first appearance."""
    groups: dict[tuple, dict] = {}
    for run in sorted(runs, key=lambda r: r.date):
        groups.setdefault(setting_key(run), {})[run.seed] = run  # the latest run of a seed wins
    return [SeedGroup(sorted(by_seed_value.values(), key=lambda r: (r.seed is None, r.seed or 0)))
            for by_seed_value in groups.values()]


def mean_curve(curves: list[pd.DataFrame], y: str, x: str = "step") -> pd.DataFrame:
    """Mean of column `y` over several runs' curves at each step all of them reached, with the min and max
    (the band) and the mean of `x` (steps, or training hours, which differ slightly between seeds)."""
    usable = [c[["step", x, y] if x != "step" else ["step", y]].dropna() for c in curves]
    usable = [c for c in usable if not c.empty]
    if not usable:
        return pd.DataFrame(columns=["step", "mean", "lo", "hi", "n"] + ([x] if x != "step" else []))
    steps = set(usable[0]["step"])
    for frame in usable[1:]:
        steps &= set(frame["step"])
    index = sorted(steps)
    aligned = [f.drop_duplicates("step", keep="last").set_index("step").loc[index] for f in usable]
    values = pd.concat([f[y] for f in aligned], axis=1)
    out = pd.DataFrame({"step": index, "mean": values.mean(axis=1).to_numpy(), "lo": values.min(axis=1).to_numpy(),
                        "hi": values.max(axis=1).to_numpy(), "n": len(aligned)})
    if x != "step":
        out[x] = pd.concat([f[x] for f in aligned], axis=1).mean(axis=1).to_numpy()
    return out
