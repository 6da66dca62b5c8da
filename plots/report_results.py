"""What each method's runs hold, for report.md (plots/report.py): per model and method the runs that ended ok with
their losses, memory, timings and rank (MethodResult, collect), and the runs that ended without a result (unfinished).
Plain reading of plots.runs.Run; no drawing."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pandas as pd

from plots.claims import rank_by_type
from plots.runs import Run

MIB = 2 ** 20


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MIB:,.0f} MiB"


@dataclass
class Spread:
    """Values over seeds: mean and the range."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, digits: int = 4) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} ± {(self.high - self.low) / 2:.{digits}f} ({len(self.values)} seeds)"


def _median(values) -> float | None:
    clean = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.median(clean) if clean else None


def changed_rank(run: Run) -> dict | None:
    """Mean effective rank (and rank ratio) over the matrices the run's update changed, all matrix types together:
    plots.claims.rank_by_type per type, weighted by how many of that type changed. A block method leaves most
    matrices untouched, and averaging their zero ranks in would make its update look low-rank."""
    by_type = {k: v for k, v in rank_by_type(run).items() if v.get("changed")}
    changed = sum(v["changed"] for v in by_type.values())
    if not changed:
        return None

    def weighted(key: str) -> float | None:
        if not all(isinstance(v.get(key), (int, float)) for v in by_type.values()):
            return None
        return sum(v[key] * v["changed"] for v in by_type.values()) / changed

    return {"mean_effective_rank": weighted("mean_effective_rank"), "mean_rank_ratio": weighted("mean_rank_ratio"),
            "changed": changed, "analysed": sum(v.get("count", 0) for v in rank_by_type(run).values()),
            "types": sorted(by_type)}


@dataclass
class MethodResult:
    model: str
    method: str
    runs: list[Run] = field(default_factory=list)
    other_settings: list[Run] = field(default_factory=list)   # runs of the method at other settings (not pooled)

    def _summaries(self) -> list[dict]:
        return [r.summary for r in self.runs]

    @property
    def eval_loss(self) -> Spread | None:
        values = [s["final_eval_loss"] for s in self._summaries() if isinstance(s.get("final_eval_loss"), float)]
        return Spread(values) if values else None

    @property
    def nonfinite_eval_loss(self) -> list[str]:
        """The non-finite final eval losses its runs recorded ("inf", "nan": summary.json's nonfinite map)."""
        return [kind for run in self.runs if (kind := run.nonfinite("final_eval_loss"))]

    @property
    def train_loss(self) -> Spread | None:
        values = [s["mean_loss_last_10"] for s in self._summaries()
                  if isinstance(s.get("mean_loss_last_10"), float)]
        return Spread(values) if values else None

    @property
    def lrs(self) -> list[float]:
        return sorted({float(r.lr) for r in self.runs if r.lr is not None})

    def timing(self, phase: str) -> float | None:
        return _median((s.get("timing_ms") or {}).get(phase) for s in self._summaries())

    def memory(self, part: str) -> float | None:
        if part == "peak":
            return _median((s.get("memory") or {}).get("peak_allocated_bytes") for s in self._summaries())
        return _median(((s.get("memory") or {}).get("split_bytes") or {}).get(part) for s in self._summaries())

    @property
    def device(self) -> str:
        return str((self.runs[0].summary.get("environment") or {}).get("device_name", "?"))

    @property
    def rank(self) -> dict | None:
        """changed_rank of the first run with an eval/rank.json (the first seed saves its model for it)."""
        return next((found for found in map(changed_rank, self.runs) if found is not None), None)

    @property
    def option(self):
        return self.runs[0].method_options if self.runs else {}

    @property
    def num_blocks(self) -> int | None:
        return ((self.runs[0].summary.get("method_info") or {}).get("last_describe") or {}).get("num_blocks")

    def eval_curves(self) -> list[pd.DataFrame]:
        out = []
        for run in self.runs:
            frame = run.metrics
            if not frame.empty and "eval_loss" in frame:
                out.append(frame[["step", "eval_loss"]].dropna())
        return [f for f in out if not f.empty]


def _has_eval_loss(run: Run) -> bool:
    """The run measured a final eval loss: a number, or a non-finite one (recorded, not missing)."""
    return isinstance(run.summary.get("final_eval_loss"), float) or run.nonfinite("final_eval_loss") is not None


def collect(runs: list[Run]) -> dict[str, dict[str, MethodResult]]:
    """{model: {method: MethodResult}} over the runs that ended ok. Where a model has runs with an eval loss, only
    those count (quality runs), so that a memory-only run of another shape does not mix into the medians; an eval
    loss that came out non-finite counts as measured (the table shows it)."""
    by_model: dict[str, dict[str, MethodResult]] = {}
    for run in runs:
        if not run.ok or run.method == "base":
            continue
        by_model.setdefault(run.model, {}).setdefault(run.method, MethodResult(run.model, run.method)).runs.append(run)
    for methods in by_model.values():
        if any(_has_eval_loss(r) for m in methods.values() for r in m.runs):
            for result in methods.values():
                result.runs = [r for r in result.runs if _has_eval_loss(r)]
        for name in [m for m, result in methods.items() if not result.runs]:
            del methods[name]
        for result in methods.values():
            result.runs, result.other_settings = one_setting(result.runs)
    return {model: methods for model, methods in by_model.items() if methods}


# Config keys that say where a run's files are or what it only measured, not what it trained.
NOT_SETTINGS = ("seed", "run_name", "description", "train.resume_from", "train.stop_after_steps",
                "method.measure_rounding", "model.tokenizer")


def settings_key(run: Run) -> str:
    """What a run trained, up to its seed: its recorded config without NOT_SETTINGS and output.*."""
    def flat(data: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    kept = {k: v for k, v in flat(run.config).items() if k not in NOT_SETTINGS and not k.startswith("output.")}
    return repr(sorted(kept.items(), key=lambda item: item[0]))


def one_setting(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """(the runs of the setting with the most runs, the rest): a row's mean ± half range is over seeds of one
    setting, never over an lr sweep or an ablation's settings (quality-gpu's lora read 2.61 ± 3.03 over 4 lrs). Ties
    go to the setting whose first run comes first by group and name."""
    by_setting: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.group, r.name)):
        by_setting.setdefault(settings_key(run), []).append(run)
    chosen = max(by_setting.values(), key=len)   # max keeps the first of equals
    return chosen, [r for r in runs if r not in chosen]


def _outcome(run: Run) -> str:
    """What a run that ended without a result recorded: its status, the step and the reason (summary.json)."""
    summary = run.summary
    steps = summary.get("diverged_at_step") or summary.get("steps")
    where = f" at step {steps}" if isinstance(steps, int) and steps > 0 else ""
    if run.status == "diverged":
        values = summary.get("diverged_values") if isinstance(summary.get("diverged_values"), dict) else {}
        why = ", ".join(f"{key} {value}" for key, value in values.items())
        return f"diverged{where}" + (f" (non-finite {why})" if why else "")
    if run.status == "oom":
        held = (summary.get("memory") or {}).get("held_at_oom_bytes")
        return f"out of memory{where}" + (f" ({_mib(held)} held)" if isinstance(held, (int, float)) else "")
    reason = " ".join(str(summary.get("error") or "").split())[:160]
    return f"{run.status}{where}" + (f": {reason}" if reason else "")


def unfinished(runs: list[Run]) -> dict[str, list[str]]:
    """{model: lines} for the runs that ended without a result (oom, diverged, error, interrupted): recorded results
    the method table cannot hold, so the page names each instead of leaving the method out in silence."""
    out: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: (r.group, r.name)):
        if not run.ok:
            out.setdefault(run.model, []).append(f"{run.method} (`{run.group}/{run.name}`): {_outcome(run)}")
    return out
