"""Helpers shared by the evaluators (`eval.math`, `eval.superglue`, ...): where outputs go, atomic JSON writes, and
per-sample JSONL files that let an interrupted evaluation resume where it stopped.

Layout (docs/DESIGN.md): an evaluator of a run directory writes `<run_dir>/eval/<name>.json`; any other model source
(a hub id, an alias, a local folder that is not a run) goes to `runs/eval/<slug of the source>/` unless `--out` is given.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from experiments.paths import REPO_ROOT
from experiments.results import atomic_write_text, dumps_strict
from experiments.rundir import RunDir
from experiments.rundir import read_jsonl as _read_jsonl


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when `path` is a training run directory of this suite (experiments/rundir.py)."""
    return RunDir(path).is_run()


def source_slug(source: str) -> str:
    """A file-system-safe name for a model source ("HuggingFaceTB/SmolLM2" -> "HuggingFaceTB__SmolLM2")."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "__", str(source).strip().rstrip("/\\"))
    return slug.strip("_") or "model"


def resolve_output_dir(model_source: str, out: str | os.PathLike | None = None) -> Path:
    """Where an evaluator writes: `out` if given, else `<run_dir>/eval` for a run, else `runs/eval/<slug>`."""
    if out is not None:
        return Path(out)
    if is_run_dir(model_source):
        return RunDir(model_source).eval_dir
    return REPO_ROOT / "runs" / "eval" / source_slug(model_source)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON through a temp file in the same folder and `os.replace` (fsynced), so readers never see half a file;
    strict JSON: a NaN / Infinity is written as null with a "nonfinite" flag (experiments.results.json_safe)."""
    path = Path(path)
    atomic_write_text(path, dumps_strict(obj, indent=2, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL file ([] if absent). A broken LAST line (a run killed mid-write) is dropped with a warning;
    a broken line anywhere else is real corruption and raises (the harness's reader, experiments.rundir)."""
    return _read_jsonl(path, warn_torn_last=True)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records and fsync, so a killed evaluation loses at most the batch being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_partial_last_line(path)
    with path.open("a", encoding="utf-8") as fh:
        for record in records:
            fh.write(dumps_strict(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _drop_partial_last_line(path: Path) -> None:
    """Cut a file killed mid-record back to its last complete line, so the next record does not glue onto it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Replace a JSONL file as a whole (temp file + `os.replace`), e.g. to rewrite re-scored samples in order."""
    path = Path(path)
    atomic_write_text(path, "".join(dumps_strict(record, ensure_ascii=False) + "\n" for record in records))
    return path


def visible_gpus() -> list[str]:
    """CUDA device ids this process may spread children over: CUDA_VISIBLE_DEVICES when set, else every device torch
    sees ([] on a machine without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_in_children(commands: list[tuple[list[str], Path]], *, jobs: int, gpus: list[str]) -> list[int]:
    """Run each (argv, log file) as a child process, at most `jobs` at a time spread evenly over `gpus` (none: not
    pinned), and return their exit codes in order. The children get run_all's child environment (eval.runs.GpuPool,
    experiments.suite.child_env: a pinned GPU and how many runs shared it, so their step times are not read as
    measurements); a child's stdout and stderr go to its log file."""
    import time

    from eval.runs import GpuPool

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    places: list[str | None] = list(gpus) or [None]
    per_place = -(-min(jobs, max(1, len(commands))) // len(places))
    pool = GpuPool(places, per_gpu=per_place, cwd=REPO_ROOT)
    for argv, log in commands:
        pool.submit(argv, log)
    while not pool.poll():
        time.sleep(0.2)
    return [int(code) for code in pool.codes]
