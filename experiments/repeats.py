"""Repeated timing measurements: the protocol's statistics (no torch here; used by benchmarks and plots).

Protocol (issue 17): the configurations being compared run alternately, A B A B ..., over at least 3 repeats in one
session, so that slow drifts of a shared machine (clocks, neighbours, thermals) fall on both sides. Every ratio is
then formed per repeat from the two runs of that repeat (paired), and reported as the median of those ratios with
their band = [min, max] over the repeats (with 3 to 5 repeats a 95% interval would be wider than the data can
support; min-max is what was seen). A band that contains 1 means "not distinguishable from parity": its cell reads
"≈ 1 (low-high)".

Repeat indices are carried by run names: a run named "<name>-rep<i>" is repeat i of configuration <name>.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

REPEAT_SUFFIX = re.compile(r"^(?P<base>.+)-rep(?P<index>\d+)$")
MIN_REPEATS = 3  # the protocol's minimum; fewer still give a band, labelled with n


@dataclass(frozen=True)
class Band:
    median: float
    low: float
    high: float
    n: int

    @property
    def contains_one(self) -> bool:
        return self.n > 1 and self.low <= 1.0 <= self.high

    def as_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "n": self.n,
                "contains_one": self.contains_one}


def _finite(values: Iterable) -> list[float]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out.append(float(value))
    return out


def band(values: Iterable) -> Band | None:
    """Median and [min, max] of the finite numbers in `values`; None when there is none."""
    clean = _finite(values)
    if not clean:
        return None
    return Band(statistics.median(clean), min(clean), max(clean), len(clean))


def paired_ratios(numerator: Mapping, denominator: Mapping) -> list[float]:
    """numerator[i] / denominator[i] for every repeat i present (and positive) on both sides, in repeat order."""
    out = []
    for key in sorted(set(numerator) & set(denominator), key=_repeat_sort_key):
        a, b = numerator[key], denominator[key]
        if _finite([a]) and _finite([b]) and float(b) != 0.0:
            out.append(float(a) / float(b))
    return out


def ratio_band(numerator: Mapping, denominator: Mapping) -> Band | None:
    """The band of the paired per-repeat ratios (None when no repeat has both sides)."""
    return band(paired_ratios(numerator, denominator))


def scaled_band(values: Iterable, divisor: float) -> Band | None:
    """The band of values / divisor (a measurement against a fixed number, e.g. ours / the paper's)."""
    if not divisor:
        return None
    return band(v / divisor for v in _finite(values))


def format_band(b: Band | None, digits: int = 2, *, none: str = "—") -> str:
    """'0.73 (0.70-0.76)', or '≈ 1 (0.95-1.04)' when the band holds 1; a single value has no band: '0.73 (n=1)'."""
    if b is None:
        return none
    if b.n == 1:
        return f"{b.median:.{digits}f} (n=1)"
    spread = f"({b.low:.{digits}f}-{b.high:.{digits}f})"
    return f"≈ 1 {spread}" if b.contains_one else f"{b.median:.{digits}f} {spread}"


def split_repeat(run_name: str) -> tuple[str, int | None]:
    """('<name>', i) for '<name>-rep<i>', else (run_name, None)."""
    match = REPEAT_SUFFIX.match(run_name)
    if match is None:
        return run_name, None
    return match.group("base"), int(match.group("index"))


def repeat_name(base: str, index: int) -> str:
    if index < 1:
        raise ValueError(f"repeat indices start at 1, got {index}")
    return f"{base}-rep{index}"


def alternate(configurations: list, repeats: int) -> list[tuple[int, object]]:
    """The protocol's order: [(1, A), (1, B), ..., (2, A), (2, B), ...] for `repeats` >= 1."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return [(index, item) for index in range(1, repeats + 1) for item in configurations]


def repeat_fits(elapsed_s: float, last_repeat_s: float | None, deadline_s: float | None) -> bool:
    """Whether the next repeat may start: at the last repeat's pace it ends before the deadline (seconds since the
    session began). The first repeat always starts (no pace known yet), and so does every one without a deadline:
    a session cut short keeps whole repeats only, so that ratios pair runs of one session."""
    return deadline_s is None or last_repeat_s is None or elapsed_s + last_repeat_s <= deadline_s


def _repeat_sort_key(key):
    return (0, key) if isinstance(key, int) else (1, str(key))


__all__ = ["Band", "MIN_REPEATS", "band", "paired_ratios", "ratio_band", "scaled_band", "format_band",
           "split_repeat", "repeat_name", "alternate", "repeat_fits"]
