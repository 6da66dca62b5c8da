"""Run directories on disk: atomic writes, the metrics log, the summary and the environment record.

Layout of one run (docs/DESIGN.md): config.yaml, metrics.jsonl, summary.json, eval/*.json, optionally checkpoint.pt,
error.txt. Every whole-file write goes through a temporary file in the same directory and `os.replace`, so a reader
never sees half a file; metrics.jsonl is appended line by line with a flush, and readers skip a torn last line.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

from experiments.paths import REPO_ROOT

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
SHARDED_CHECKPOINT_DIR = "checkpoint.dcp"  # train.distributed=fsdp2: experiments/distributed_checkpoint.py
ERROR_FILE = "error.txt"
STATUSES = ("ok", "oom", "error", "interrupted")  # interrupted: stopped on request with a checkpoint to resume


# --- atomic writes ------------------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any):
    # Path objects, numpy scalars and the like: write their plain form instead of failing mid-run.
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


# --- run directories ------------------------------------------------------------------------------------------------
class RunDirExistsError(FileExistsError):
    pass


def _has_results(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def prepare_run_dir(base_dir: str | os.PathLike, run_name: str, *, overwrite: bool = False, resume: bool = False,
                    on_exists: str = "suffix") -> Path:
    """The directory for a new run. An existing, non-empty one is never reused silently:
    resume → reuse it as is; overwrite → empty it; otherwise on_exists="suffix" picks `<name>-2`, `-3`, ...
    and on_exists="refuse" raises RunDirExistsError."""
    if on_exists not in ("suffix", "refuse"):
        raise ValueError(f"on_exists must be 'suffix' or 'refuse', got {on_exists!r}")
    base = Path(base_dir)
    path = base / run_name
    if resume:
        path.mkdir(parents=True, exist_ok=True)
        return path
    if _has_results(path):
        if overwrite:
            for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE, ERROR_FILE):
                (path / name).unlink(missing_ok=True)
            for sub in ("eval", "model", SHARDED_CHECKPOINT_DIR):
                if (path / sub).is_dir():
                    shutil.rmtree(path / sub)
        elif on_exists == "refuse":
            raise RunDirExistsError(f"run directory {path} already holds results; pass --overwrite, resume from it, "
                                    f"or choose another run_name")
        else:
            n = 2
            while _has_results(base / f"{run_name}-{n}"):
                n += 1
            path = base / f"{run_name}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- metrics.jsonl ------------------------------------------------------------------------------------------------
class MetricsWriter:
    """Appends one JSON object per line and flushes it, so a crash loses at most the line being written."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS_FILE
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, default=_json_default) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Every complete record of metrics.jsonl; a torn (half-written) last line is skipped, a torn line elsewhere
    is an error because it means the file was corrupted, not merely interrupted."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            is_last = all(not rest.strip() for rest in lines[index + 1:])
            if is_last:
                break
            raise ValueError(f"{path}: line {index + 1} is not valid JSON ({exc})") from exc
    return records


def truncate_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Keep only records with step <= last_step (used when resuming from a checkpoint taken at last_step)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in kept))


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """summary.json of a run, or None if the run has not finished writing one."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run directory (one holding summary.json or metrics.jsonl) under `root`, sorted."""
    root = Path(root)
    found = {p.parent for pattern in (SUMMARY_FILE, METRICS_FILE) for p in root.rglob(pattern)}
    return sorted(found)


# --- environment --------------------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed: record that instead of failing
        return None


def source_commit() -> dict:
    """git_commit and git_dirty of the code that runs. A copy of the tree made elsewhere (a GPU machine) may lack .git
    or carry an older .git under newer files: then the launcher names the commit in BADAM_SOURCE_COMMIT and what git
    says here is kept beside it (git_commit_local, git_dirty_local)."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain")
    here = {"git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None}
    launcher = os.environ.get("BADAM_SOURCE_COMMIT")
    if not launcher:
        return here
    return {"git_commit": launcher, "git_dirty": None,
            "git_commit_local": here["git_commit"], "git_dirty_local": here["git_dirty"]}


def environment_info(device: str = "cpu") -> dict:
    """Where and with what a run was made; recorded in summary.json."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = f"CPU: {_cpu_name()} ({os.cpu_count()} logical cores)"
    return {
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "python": platform.python_version(),
        **source_commit(),
        "command": shlex.join([sys.executable, *sys.argv]),
        # the caching allocator's settings change peak *reserved* memory (e.g. expandable_segments)
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "hostname": socket.gethostname(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --- summary ------------------------------------------------------------------------------------------------------
def _median(values: Iterable[float | None]) -> float | None:
    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(clean) if clean else None


def summarize_metrics(records: list[dict], warmup_steps: int) -> dict:
    """Final and mean figures plus median timings; the first `warmup_steps` steps are left out of the medians
    (allocator warm-up, lazy optimizer-state creation) unless nothing else is left."""
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    timed = [r for r in records if r["step"] > warmup_steps] or records
    excluded = warmup_steps if len(timed) < len(records) else 0
    eval_losses = [r["eval_loss"] for r in records if r.get("eval_loss") is not None]
    last10 = losses[-10:]
    return {
        "steps": records[-1]["step"] if records else 0,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10": sum(last10) / len(last10) if last10 else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "timing_ms": {
            "forward": _median(r.get("t_forward_ms") for r in timed),
            "backward": _median(r.get("t_backward_ms") for r in timed),
            "update": _median(r.get("t_update_ms") for r in timed),
            "step": _median(r.get("t_step_ms") for r in timed),
            "warmup_steps_excluded": excluded,
        },
        "tokens_per_s": _median(r.get("tokens_per_s") for r in timed),
        "total_tokens": sum(int(r.get("tokens") or 0) for r in records),
    }


def write_summary(run_dir: str | os.PathLike, summary: dict) -> None:
    if summary.get("status") not in STATUSES:
        raise ValueError(f"summary status must be one of {STATUSES}, got {summary.get('status')!r}")
    atomic_write_json(Path(run_dir) / SUMMARY_FILE, summary)


def failure_summary(status: str, error: str, *, kind: str = "exception", run_name: str, method: str, model: str,
                    config: dict, device: str = "cpu", memory: dict | None = None) -> dict:
    """A summary for a run that ended before or outside the training loop (e.g. OOM while loading the model)."""
    return {
        "status": status, "error": error, "error_kind": "oom" if status == "oom" else kind,
        "run_name": run_name, "method": method, "model": model,
        "steps": 0, "final_loss": None, "mean_loss_last_10": None, "final_eval_loss": None,
        "timing_ms": {"forward": None, "backward": None, "update": None, "step": None, "warmup_steps_excluded": 0},
        "tokens_per_s": None,
        "memory": memory or {"device": "cuda" if str(device).startswith("cuda") else "cpu",
                             "peak_allocated_bytes": None, "peak_reserved_bytes": None,
                             "split_bytes": None, "split_note": "the run ended before memory was measured"},
        "method_info": {}, "config": config, "environment": environment_info(device),
    }
