"""Run directories on disk: atomic writes, the metrics log, the summary and the environment record.

Layout of one run: experiments/rundir.py owns it (config.yaml, metrics.jsonl, summary.json, model/, eval/*.json,
optionally checkpoint.pt, error.txt) and its names are re-exported here.

Every whole-file write goes through a temporary file in the same directory, an fsync of that file,
`os.replace` and an fsync of the directory, so a reader never sees half a file and a power cut after the write
returned loses nothing; metrics.jsonl is appended line by line with a flush, and readers skip a torn last line.
Committed results may hold metrics.jsonl.gz instead (experiments.results_pack): readers read either, and training
unpacks it before appending (unpack_metrics), so a resumed run keeps its history.

JSON is strict: a non-finite float (NaN, +-Infinity, which Python's json module would write as bare `NaN` and strict
parsers reject) is written as null, and the object gets a "nonfinite" map from the value's dotted path to "nan",
"inf" or "-inf" (json_safe), so nothing is lost and every parser reads the file.
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
# the run-directory names are re-exported: plots/ and older callers read run directories through this module
from experiments.rundir import (CHECKPOINT_FILE, CONFIG_FILE, ERROR_FILE, METRICS_FILE,  # noqa: F401
                                PACKED_METRICS_FILE, RUN_FILES, RUN_SUBDIRS, SHARDED_CHECKPOINT_DIR, SUMMARY_FILE,
                                SUPERSEDED_DIR, RunDir, RunSummary, read_jsonl, read_maybe_gzipped)

# ok: trained to the end (or to train.stop_after_steps); oom: an allocation failed; diverged: a non-finite loss or
# gradient norm ended the run (summary.diverged_at_step); error: anything else (summary.error_kind says what);
# interrupted: stopped on request (SIGTERM) with a checkpoint to resume from, or by Ctrl-C (resumable from the last
# checkpoint train.save_every wrote, if any)
STATUSES = ("ok", "oom", "diverged", "error", "interrupted")
NONFINITE_KEY = "nonfinite"


def _json_default(value: Any):
    # Path objects, numpy scalars and the like: write their plain form instead of failing mid-run.
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --- strict JSON --------------------------------------------------------------------------------------------------
def _nonfinite_name(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _clean(value: Any, path: str, found: dict) -> Any:
    if isinstance(value, dict):
        return {key: _clean(item, f"{path}.{key}" if path else str(key), found) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item, f"{path}.{index}" if path else str(index), found) for index, item in enumerate(value)]
    if not isinstance(value, (str, bytes, int, float)) and hasattr(value, "item"):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        found[path] = _nonfinite_name(value)
        return None
    return value


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN / Infinity replaced by None. A dict gets (or extends) "nonfinite": {dotted path: "nan" |
    "inf" | "-inf"} naming each replaced value; a list is cleaned element by element (each dict element flagged)."""
    if isinstance(obj, list):
        return [json_safe(item) for item in obj]
    found: dict[str, str] = {}
    clean = _clean(obj, "", found)
    if found and isinstance(clean, dict):
        clean[NONFINITE_KEY] = {**(clean.get(NONFINITE_KEY) or {}), **found}
    return clean


def finite_number(value) -> float | None:
    """A JSON field as a float when it is a finite number (not a bool, not NaN / inf); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def dumps_strict(obj: Any, **kwargs) -> str:
    """json.dumps of json_safe(obj); allow_nan=False makes a non-finite value that slipped through an error."""
    return json.dumps(json_safe(obj), allow_nan=False, default=_json_default, **kwargs)


# --- atomic writes ------------------------------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in directory `path` durable (POSIX needs the directory itself synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories (Windows): nothing more can be done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the data itself was synced
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file another library wrote (torch.save, save_pretrained) to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync `tmp`, rename it over `path`, fsync the directory: the new file is complete and stays after a crash."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def _new_file_mode(path: Path) -> int:
    """The mode open() would give: the replaced file's own, else 0666 less the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it back at once
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode(path))  # mkstemp makes 0600: the file would be unreadable to anyone else
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_strict(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


# --- run directories ------------------------------------------------------------------------------------------------
class RunDirExistsError(FileExistsError):
    pass


def _has_results(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_run_name(run_name: str) -> None:
    """A run name is one plain directory name, so the run stays inside output.dir."""
    if (not run_name or run_name in (".", "..") or "/" in run_name or "\\" in run_name or "\0" in run_name
            or Path(run_name).is_absolute() or run_name != run_name.strip()):
        raise ValueError(f"run_name={run_name!r} must be a single directory name inside output.dir (no '/', '\\', "
                         "'..', surrounding spaces or absolute path); put the folder in output.dir instead")


def foreign_entries(path: Path) -> list[str]:
    """Entries of `path` that a run directory does not hold (see RUN_FILES / RUN_SUBDIRS)."""
    out = []
    for entry in sorted(path.iterdir()):
        name = entry.name
        if name.startswith(".") or name in RUN_FILES or (name.startswith("error_rank") and name.endswith(".txt")):
            continue
        if name in RUN_SUBDIRS and entry.is_dir():
            continue
        out.append(name)
    return out


def choose_run_dir(base_dir: str | os.PathLike, run_name: str, *, overwrite: bool = False,
                   on_exists: str = "suffix") -> tuple[Path, bool]:
    """(directory for a new run, whether it holds an old run that the new one is to replace). Nothing is deleted here:
    with overwrite the caller replaces the old run (replace_run_dir) once the new one has started. Without overwrite an
    existing, non-empty directory is never reused: on_exists="suffix" picks `<name>-2`, `-3`, ...; "refuse" raises
    RunDirExistsError."""
    if on_exists not in ("suffix", "refuse"):
        raise ValueError(f"on_exists must be 'suffix' or 'refuse', got {on_exists!r}")
    check_run_name(run_name)
    base = Path(base_dir)
    path = base / run_name
    if not _has_results(path):
        return path, False
    if overwrite:
        foreign = foreign_entries(path)
        if foreign:
            raise RunDirExistsError(f"--overwrite refused: {path} holds {', '.join(foreign[:5])}, which no run "
                                    "writes; it replaces run directories only; choose another run_name or output.dir")
        return path, True
    if on_exists == "refuse":
        raise RunDirExistsError(f"run directory {path} already holds results; pass --overwrite, resume from it, "
                                f"or choose another run_name")
    n = 2
    while _has_results(base / f"{run_name}-{n}"):
        n += 1
    return base / f"{run_name}-{n}", False


def replace_run_dir(path: Path) -> None:
    """Swap the old run at `path` for an empty directory: renamed aside first (one atomic step, so a crash never
    leaves half an old run mixed with a new one), then deleted."""
    path = Path(path)
    if path.exists():
        aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(path, aside)
        path.mkdir(parents=True)
        fsync_dir(path.parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        path.mkdir(parents=True)


def prepare_run_dir(base_dir: str | os.PathLike, run_name: str, *, overwrite: bool = False, resume: bool = False,
                    on_exists: str = "suffix") -> Path:
    """The directory for a new run, created now. resume → `<base>/<run_name>` as it is; overwrite → an old run there
    is replaced at once (experiments.run instead replaces it only when the new run starts); otherwise see
    choose_run_dir."""
    if resume:
        check_run_name(run_name)
        path = Path(base_dir) / run_name
        path.mkdir(parents=True, exist_ok=True)
        return path
    path, holds_old_run = choose_run_dir(base_dir, run_name, overwrite=overwrite, on_exists=on_exists)
    if holds_old_run:
        replace_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- metrics.jsonl ------------------------------------------------------------------------------------------------
class MetricsWriter:
    """Appends one JSON object per line and flushes it, so a crash loses at most the line being written. A run whose
    metrics were packed (metrics.jsonl.gz only) is unpacked first, so the old lines stay in front of the new ones."""

    def __init__(self, run_dir: str | os.PathLike):
        unpack_metrics(run_dir)
        self.path = RunDir(run_dir).metrics
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._handle.write(dumps_strict(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def unpack_metrics(run_dir: str | os.PathLike) -> bool:
    """metrics.jsonl from metrics.jsonl.gz, when only the packed file is there, before anything is appended or
    rewritten: lines appended to a new plain file would hide the packed ones from every reader (the plain file is read
    first). Byte for byte, so a torn last line is handled as in any plain file; the packed file is removed once the
    plain one is durably in place. Returns whether it unpacked."""
    run = RunDir(run_dir)
    if run.metrics.exists() or not run.packed_metrics.is_file():
        return False
    atomic_write_bytes(run.metrics, read_maybe_gzipped(run.packed_metrics))
    run.packed_metrics.unlink()
    fsync_dir(run.path)
    return True


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Every complete record of metrics.jsonl (or of metrics.jsonl.gz when only that is there); a torn (half-written)
    last line is skipped, a torn line elsewhere is an error because it means the file was corrupted, not merely
    interrupted (experiments.rundir.read_jsonl)."""
    return RunDir(run_dir).read_metrics()


def truncate_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Keep only records with step <= last_step (used when resuming from a checkpoint taken at last_step)."""
    unpack_metrics(run_dir)
    if not RunDir(run_dir).metrics.exists():
        return
    kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= last_step]
    write_metrics(run_dir, kept)


def write_metrics(run_dir: str | os.PathLike, records: list[dict]) -> None:
    """Replace metrics.jsonl as a whole (atomically) with `records`; a packed metrics.jsonl.gz there, which it
    replaces too, is removed (it would no longer say what the run did)."""
    run = RunDir(run_dir)
    atomic_write_text(run.metrics, "".join(dumps_strict(r) + "\n" for r in records))
    if run.packed_metrics.exists():
        run.packed_metrics.unlink()
        fsync_dir(run.path)


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """summary.json of a run, or None if the run has not finished writing one."""
    return RunDir(run_dir).read_summary()


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run directory (one holding summary.json, metrics.jsonl or metrics.jsonl.gz) under `root`, sorted; runs
    moved aside under a superseded/ folder are not among them."""
    root = Path(root)
    found = {p.parent for pattern in (SUMMARY_FILE, METRICS_FILE, PACKED_METRICS_FILE) for p in root.rglob(pattern)
             if SUPERSEDED_DIR not in p.relative_to(root).parts}
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
        # which attention kernels scaled_dot_product_attention could use (cuDNN's is off by default on CUDA)
        "cudnn_sdp_enabled": bool(torch.backends.cuda.cudnn_sdp_enabled()) if torch.cuda.is_available() else None,
        # the most runs a suite (run_all --jobs) let share this run's device: above 1 its step times are not a
        # measurement of the method (processes time-slice a GPU), only its losses are
        "shared_device_runs": int(os.environ.get("BADAM_SHARED_DEVICE_RUNS", "1")),
        "hostname": socket.gethostname(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --- summary ------------------------------------------------------------------------------------------------------
def _median(values: Iterable[float | None]) -> float | None:
    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(clean) if clean else None


def timed_records(records: list[dict], warmup_steps: int) -> list[dict]:
    """The steps timing figures come from: not the first `warmup_steps` (allocator warm-up, lazy optimizer-state
    creation) nor a step that compiled graphs (train.compile_layers: its time holds the compiling), unless nothing
    else is left."""
    return [r for r in records if r["step"] > warmup_steps and not r.get("compiled_graphs")] or records


def summarize_metrics(records: list[dict], warmup_steps: int) -> dict:
    """Final and mean figures plus median timings over timed_records; with compiled layers, timing_ms also says how
    many steps after the warm-up were left out for compiling."""
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    timed = timed_records(records, warmup_steps)
    excluded = warmup_steps if len(timed) < len(records) else 0
    eval_losses = [r["eval_loss"] for r in records if r.get("eval_loss") is not None]
    last10 = losses[-10:]
    timing = {"forward": _median(r.get("t_forward_ms") for r in timed),
              "backward": _median(r.get("t_backward_ms") for r in timed),
              "update": _median(r.get("t_update_ms") for r in timed),
              "step": _median(r.get("t_step_ms") for r in timed),
              "warmup_steps_excluded": excluded}
    if any("compiled_graphs" in r for r in records):  # train.compile_layers
        compiling = [r for r in records if r["step"] > warmup_steps and r.get("compiled_graphs")]
        timing["compiling_steps_excluded"] = len(compiling) if len(timed) < len(records) else 0
    return {
        "steps": records[-1]["step"] if records else 0,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10": sum(last10) / len(last10) if last10 else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "timing_ms": timing,
        "tokens_per_s": _median(r.get("tokens_per_s") for r in timed),
        "total_tokens": sum(int(r.get("tokens") or 0) for r in records),
    }


def write_summary(run_dir: str | os.PathLike, summary: dict | RunSummary) -> None:
    if isinstance(summary, RunSummary):
        summary = summary.to_dict()
    if summary.get("status") not in STATUSES:
        raise ValueError(f"summary status must be one of {STATUSES}, got {summary.get('status')!r}")
    atomic_write_json(RunDir(run_dir).summary, summary)


def failure_summary(status: str, error: str, *, kind: str = "exception", run_name: str, method: str, model: str,
                    config: dict, device: str = "cpu", memory: dict | None = None,
                    held_at_oom: int | None = None) -> dict:
    """A summary for a run that ended before or outside the training loop (e.g. OOM while loading the model);
    held_at_oom: the bytes held when an allocation failed (experiments.measure.held_bytes)."""
    memory = memory or {"device": "cuda" if str(device).startswith("cuda") else "cpu",
                        "peak_allocated_bytes": None, "peak_reserved_bytes": None,
                        "split_bytes": None, "split_note": "the run ended before memory was measured"}
    if held_at_oom is not None:
        memory = {**memory, "held_at_oom_bytes": held_at_oom}
    summary = RunSummary(status=status, error=error, error_kind="oom" if status == "oom" else kind,
                         run_name=run_name, method=method, model=model, memory=memory, config=config,
                         environment=environment_info(device))
    return json_safe(summary.to_dict())
