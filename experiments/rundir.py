"""The layout of one run directory, in one place: every path a run holds, the one JSONL reader, and the typed summary.

    <run_dir>/config.yaml        resolved config (experiments.run)
    <run_dir>/metrics.jsonl      one JSON object per optimizer step (experiments.loop)
    <run_dir>/metrics.jsonl.gz   the same lines gzipped, for committed results (python -m experiments.results_pack);
                                 readers take metrics.jsonl if present, else this (RunDir.metrics_to_read)
    <run_dir>/summary.json       final figures + environment (RunSummary below)
    <run_dir>/checkpoint.pt      train.save_every (experiments.checkpoint); checkpoint.dcp/ when sharded
    <run_dir>/error.txt          the traceback of a failed run (error_rank<N>.txt from another rank)
    <run_dir>/model/             the trained model (output.save_model), read by the evaluators
    <run_dir>/eval/<name>.json   evaluator outputs (math.json, superglue.json, rank.json, mtbench/...)

The training loop, the failure path, the evaluators and the suite use these names; plots/ reads run directories
through experiments.results (which re-exports them). This module imports neither torch nor any other part of the
suite, so the table builders may use it too.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
# committed results keep a finished run's metrics gzipped (a checkout must travel to the GPU machine in 64 MiB calls);
# training always writes the plain file and unpacks a packed one before appending (experiments.results)
PACKED_METRICS_FILE = METRICS_FILE + ".gz"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
SHARDED_CHECKPOINT_DIR = "checkpoint.dcp"  # train.distributed=fsdp2: experiments/distributed_checkpoint.py
ERROR_FILE = "error.txt"
MODEL_DIR = "model"
EVAL_DIR = "eval"
# What a run directory may hold (besides hidden temporary files); --overwrite replaces only directories made of these.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, PACKED_METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE, ERROR_FILE)
RUN_SUBDIRS = (EVAL_DIR, MODEL_DIR, SHARDED_CHECKPOINT_DIR)
# <group>/superseded/<run>-lr<old lr>/: a run whose sweep-chosen lr (lr_from) changed, moved aside by run_all and
# trained again (experiments/lr_extension.py); <group>/superseded/<run>/: a single run replaced by the group's
# repeats (<run>-rep<i>), moved aside by hand; kept, never read as a run (plots, restore, find_runs skip it).
SUPERSEDED_DIR = "superseded"
# Either file marks a directory as a run of this suite.
RUN_MARKERS = (CONFIG_FILE, SUMMARY_FILE)


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory (nothing is created or read until asked)."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        """metrics.jsonl, the file training writes (readers use metrics_to_read)."""
        return self.path / METRICS_FILE

    @property
    def packed_metrics(self) -> Path:
        return self.path / PACKED_METRICS_FILE

    def metrics_to_read(self) -> Path:
        """The one metrics file readers read: metrics.jsonl if it is there (a run that trained on after packing, or
        one never packed), else metrics.jsonl.gz if that is there, else metrics.jsonl (absent: no records)."""
        if not self.metrics.is_file() and self.packed_metrics.is_file():
            return self.packed_metrics
        return self.metrics

    def has_metrics(self) -> bool:
        return self.metrics.is_file() or self.packed_metrics.is_file()

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def sharded_checkpoint(self) -> Path:
        return self.path / SHARDED_CHECKPOINT_DIR

    def error(self, rank: int | None = None) -> Path:
        """error.txt, or error_rank<N>.txt for a failing rank other than 0."""
        return self.path / (ERROR_FILE if not rank else f"error_rank{rank}.txt")

    @property
    def model(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def eval_file(self, name: str) -> Path:
        """<run_dir>/eval/<name> (e.g. "rank.json", "mtbench")."""
        return self.eval_dir / name

    def is_run(self) -> bool:
        return self.path.is_dir() and any((self.path / marker).is_file() for marker in RUN_MARKERS)

    def has_saved_model(self) -> bool:
        """True when output.save_model left a loadable transformers folder."""
        return (self.model / "config.json").is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file() or self.sharded_checkpoint.is_dir()

    def read_summary(self) -> dict | None:
        """summary.json, or None if the run has not finished writing one. A file that is there but holds no JSON
        object (cut short, emptied, edited by hand) raises RunFileError naming it: it is never taken for "no summary"
        (a rerun would then replace a run that may have finished) nor passed on as a half-read result."""
        if not self.summary.exists():
            return None
        try:
            data = json.loads(self.summary.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFileError(f"{self.summary}: not valid JSON ({exc}; a half-written file?)") from None
        if not isinstance(data, dict):
            raise RunFileError(f"{self.summary}: holds a JSON {type(data).__name__}, not an object")
        return data

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_to_read())


class RunFileError(ValueError):
    """A file of a run directory is there but cannot be read (the message names the file and why)."""


def read_jsonl(path: str | os.PathLike, *, warn_torn_last: bool = False) -> list[dict]:
    """Every complete record of a JSONL file ([] if absent). A broken LAST line (a writer killed mid-line, also in the
    middle of a multi-byte character) is skipped, with a warning if asked; a broken line anywhere else is corruption,
    not an interruption, and raises ValueError naming the file and the line, as does a line that is not a JSON object.
    Lines are decoded one by one, so a bad byte is named with its line. A path ending in .gz is read decompressed
    (the same rules apply to its lines); a gzip stream that is cut short or damaged raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = read_maybe_gzipped(path).split(b"\n")
    records = []
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if all(not rest.strip() for rest in lines[index + 1:]):
                if warn_torn_last:
                    warnings.warn(f"{path}: ignoring the truncated last line ({exc})", stacklevel=2)
                break
            what = "UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "JSON"
            raise ValueError(f"{path}: line {index + 1} is not valid {what} ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {index + 1} holds a JSON {type(record).__name__}, not an object")
        records.append(record)
    return records


def read_maybe_gzipped(path: Path) -> bytes:
    """The bytes of `path`, decompressed when its name ends in .gz (ValueError naming it if that stream is broken:
    a packed file is written whole, so a broken one is damage, not an interrupted writer)."""
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a complete gzip stream ({exc})") from exc


def _empty_timing() -> dict:
    return {"forward": None, "backward": None, "update": None, "step": None, "warmup_steps_excluded": 0}


def _unmeasured_memory() -> dict:
    return {"device": "cpu", "peak_allocated_bytes": None, "peak_reserved_bytes": None, "split_bytes": None,
            "split_note": "the run ended before memory was measured"}


@dataclass
class RunSummary:
    """summary.json (docs/DESIGN.md lists every key): the fields every summary has, typed, plus `extras` for what some
    runs add (data_stats, diverged_at_step, distributed, note, ...). `to_dict` gives the file's key order; the
    writer (experiments.results.write_summary) makes it strict JSON."""

    status: str
    run_name: str
    method: str
    model: str | None
    error: str | None = None
    error_kind: str | None = None
    steps: int = 0
    final_loss: float | None = None
    mean_loss_last_10: float | None = None
    final_eval_loss: float | None = None
    timing_ms: dict = field(default_factory=_empty_timing)
    tokens_per_s: float | None = None
    total_tokens: int = 0
    planned_steps: int | None = None
    stopped_early: bool = False
    memory: dict = field(default_factory=_unmeasured_memory)
    method_info: dict = field(default_factory=dict)
    config: dict | None = None
    environment: dict | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    # summarize_metrics' keys, taken over by with_metrics
    METRIC_FIELDS = ("steps", "final_loss", "mean_loss_last_10", "final_eval_loss", "timing_ms", "tokens_per_s",
                     "total_tokens")

    def with_metrics(self, figures: dict) -> RunSummary:
        """Take the figures of experiments.results.summarize_metrics (steps, losses, median timings, tokens)."""
        unknown = set(figures) - set(self.METRIC_FIELDS)
        if unknown:
            raise ValueError(f"not metric figures of a summary: {sorted(unknown)}")
        return dataclasses.replace(self, **figures)

    def to_dict(self) -> dict:
        out = {"status": self.status, "error": self.error, "error_kind": self.error_kind,
               "run_name": self.run_name, "method": self.method, "model": self.model}
        out.update({name: getattr(self, name) for name in self.METRIC_FIELDS})
        out.update({"planned_steps": self.planned_steps, "stopped_early": self.stopped_early, "memory": self.memory,
                    "method_info": self.method_info, "config": self.config, "environment": self.environment})
        clash = set(self.extras) & set(out)
        if clash:
            raise ValueError(f"summary extras may not replace its fields: {sorted(clash)}")
        out.update(self.extras)
        return out
