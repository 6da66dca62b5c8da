"""Training time of runs that shared their device, estimated from solo timing runs.

A run that shared its GPU with other runs (environment.shared_device_runs > 1: run_all --jobs packs several runs onto
a GPU) recorded step times that measure the sharing, not the method. Its time axis is estimated instead: its steps x
the median step time (summary.json timing_ms.step, warm-up steps excluded) of a *solo timing run* of the same step
cost. Solo runs are found among all the results by content, never by group or run name: status ok, at least
MIN_SOLO_STEPS steps, a median step time, environment.shared_device_runs recorded as 1, and the same step key.

The step key is the model, the method and the resolved config without STEP_COST_FREE: settings that change how long a
run is, which numbers it computes or where it writes, but not what one optimizer step costs: the seed, learning rate
and weight decay, the schedule (epochs, max / stop steps, warm-up), evaluation and checkpoint settings, the timing
warm-up, the output, which rows are held out, and BAdam/BSGD's measure_rounding (a diagnostic that reads the leaving
block once per switch, one step in K: the median step time does not see it). Everything else must match: batch size
and gradient accumulation, dataset, format, max_length, packing and length grouping, precision, activation
checkpointing, attention kernel, loss chunking, clipping (LOMO's backward runs twice when it clips), distribution, and
every method option (BAdam's K and block order: the order decides how deep backward goes). Of several matching solo
runs, one on the run's own device wins, then the most recent. The estimate leaves out evaluation time, as the
measured axis does (a sum of step times).

Two methods' step times are compared (closest_pair) only when measured on the same device kind, and of several such
pairs the one measured closest in time: a small model's step is partly host-bound, and lent machines of one GPU kind
differ in host speed (issue 11: the same Adam step took 238 ms on one H100 machine and 309 ms on another).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

from plots.config_keys import without

MIN_SOLO_STEPS = 10
STEP_COST_FREE = (("seed",), ("run_name",), ("description",), ("output",), ("max_eval",), ("method", "lr"),
                  ("method", "weight_decay"), ("method", "seed"), ("train", "max_steps"), ("train", "epochs"),
                  ("train", "stop_after_steps"), ("train", "lr_schedule"), ("train", "warmup_steps"),
                  ("train", "warmup_ratio"), ("train", "eval_every"), ("train", "eval_batch_size"),
                  ("train", "save_every"), ("train", "resume_from"), ("train", "timing_warmup_steps"),
                  ("train", "device"), ("data", "eval_samples"), ("data", "split_seed"), ("method", "measure_rounding"))


@dataclass(frozen=True)
class SoloTiming:
    """The median step time of a solo timing run, and where it was measured."""
    step_ms: float
    device: str
    run: str          # the solo run's directory
    steps: int
    date: str = ""    # when it ran (environment.date, ISO 8601)


def step_key(run) -> str:
    """What a run and its solo timing run must share (module docstring)."""
    return json.dumps([run.model, run.method, without(run.config, STEP_COST_FREE)], sort_keys=True, default=str)


def own_timing(run) -> SoloTiming | None:
    """The run's own median step time when the run is a solo timing run (module docstring), else None."""
    recorded = (run.summary.get("environment") or {}).get("shared_device_runs")
    steps, step_ms = run.summary.get("steps"), run.timing_ms("step")
    if (not run.ok or run.method == "base" or recorded != 1 or not isinstance(steps, int)
            or steps < MIN_SOLO_STEPS or step_ms is None or not step_ms > 0):
        return None
    return SoloTiming(step_ms, run.device_name, str(run.path), steps, run.date)


def attach_solo_timings(runs: list) -> None:
    """Give every run that shared its device the best matching solo timing run's median (Run.solo_timing), or
    None when there is none; and every run all timings of its step key (Run.step_timings: closest_pair's choice)."""
    solos: dict[str, list] = {}
    for run in runs:
        if own_timing(run) is not None:
            solos.setdefault(step_key(run), []).append(run)
    for run in runs:
        if run.method == "base":
            continue
        matches = solos.get(step_key(run), [])
        run.step_timings = [own_timing(s) for s in matches]
        if run.shared_device_runs <= 1:
            continue
        best = max(matches, key=lambda s: (s.device_name == run.device_name, s.date), default=None)
        run.solo_timing = None if best is None else own_timing(best)


def step_time(run) -> SoloTiming | None:
    """The median step time of the run's setting measured alone on a device: the run's own when it ran alone,
    else its solo timing run's (None without one)."""
    if run.shared_device_runs > 1:
        return run.solo_timing
    return own_timing(run)


def estimate_note(devices) -> str:
    """'estimated: steps × median step time of a solo run on NVIDIA H200' (several devices: all named)."""
    names = " / ".join(sorted(set(devices)))
    return f"estimated: steps × median step time of a solo run on {names}"


def closest_pair(first: list[SoloTiming], second: list[SoloTiming]) -> tuple[SoloTiming, SoloTiming] | None:
    """Of two methods' step timings, the pair on one device measured closest in time (module docstring); None when
    no device has both. A timing without a readable date ranks after every dated pair."""
    def seconds(timing: SoloTiming) -> float:
        try:
            return datetime.fromisoformat(timing.date).timestamp()
        except ValueError:
            return math.nan

    def gap(pair: tuple[SoloTiming, SoloTiming]) -> float:
        apart = abs(seconds(pair[0]) - seconds(pair[1]))
        return math.inf if math.isnan(apart) else apart

    return min(((a, b) for a in first for b in second if a.device == b.device), key=gap, default=None)
