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
