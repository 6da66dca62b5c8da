"""What the evaluators share about the run directories they are given (experiments.run_all's evaluator protocol):
the untuned base model's own run directory, and evaluating several models at once on the GPUs of one machine.

Base model: a group's trained runs started from one model; its untuned scores go to `<group>/<stem>-base/`, a run
directory whose summary.json says method "base" and names the model (results/README.md: the tables' base row).
`base_run_dirs` finds those directories for the given runs and writes their summaries; an evaluator then treats
such a directory like any run, loading `summary["model"]` instead of a saved model (`base_model_source`).

Several models at once: `run_on_gpus` starts one child command per model, each pinned to one GPU
(CUDA_VISIBLE_DEVICES), at most `per_gpu` of them on a GPU at a time. A 0.5B model decoding a batch is bound by the
CPU's kernel launches, not by the GPU, so two or three decoders share a GPU at little cost each.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from eval.common import visible_gpus  # re-exported: the evaluators' one definition
from experiments.results import write_summary
from experiments.rundir import RunDir, RunSummary

BASE_METHOD = "base"


def _stem(summary: dict, run_dir: Path) -> str:
    """The run name without its method and what follows (seed, lr): "<stem>-<method>-s0" -> "<stem>"."""
    return str(summary.get("run_name") or run_dir.name).split(f"-{summary.get('method')}")[0]


def base_run_dirs(run_dirs, *, note: str) -> list[Path]:
    """One `<group>/<stem>-base` directory per (group, stem, model) of the given trained runs, with a summary.json
    (status ok, method "base", the model, `note`) written once; returns them in order of first appearance."""
    bases: dict[Path, tuple[str, dict]] = {}
    for run_dir in map(RunDir, run_dirs):
        summary = run_dir.read_summary() or {}
        if summary.get("method") == BASE_METHOD or not summary.get("model"):
            continue
        stem = _stem(summary, run_dir.path)
        bases.setdefault(run_dir.path.parent / f"{stem}-{BASE_METHOD}", (stem, summary))
    for base_dir, (stem, summary) in bases.items():
        write_base_run_dir(base_dir, model=summary["model"], model_config=(summary.get("config") or {}).get("model"),
                           environment=summary.get("environment"), note=note)
    return list(bases)


def write_base_run_dir(base_dir: Path, *, model: str, model_config: dict | None, note: str,
                       environment: dict | None = None) -> Path:
    """`base_dir` (named <stem>-base) with the base model's summary.json, unless one is there already."""
    if (RunDir(base_dir).read_summary() or {}).get("method") != BASE_METHOD:
        base_dir.mkdir(parents=True, exist_ok=True)
        write_summary(base_dir, RunSummary(
            status="ok", run_name=base_dir.name, method=BASE_METHOD, model=model,
            config={"model": model_config, "method": {"name": BASE_METHOD}}, environment=environment,
            extras={"note": note}))
    return base_dir


def base_model_source(run_dir: str | os.PathLike) -> str | None:
    """The model a base run directory stands for (its summary's "model"); None for any other directory."""
    summary = RunDir(run_dir).read_summary() if RunDir(run_dir).is_run() else None
    if not summary or summary.get("method") != BASE_METHOD:
        return None
    return str(summary["model"])


class GpuPool:
    """Child processes pinned to one of `gpus` each (CUDA_VISIBLE_DEVICES; a None entry: not pinned, the parent's
    devices), at most `per_gpu` at a time on a GPU; submitted commands wait for a free place. Each child gets the
    environment run_all gives its training runs (experiments.suite.child_env), whose BADAM_SHARED_DEVICE_RUNS =
    `sharing` (default per_gpu) says how many children may share its GPU: their timings are not one model's alone.
    A command submitted with a log file writes its stdout and stderr there, else to this process's."""

    def __init__(self, gpus: list[str | None], *, per_gpu: int = 1, sharing: int | None = None,
                 cwd: str | os.PathLike | None = None):
        if not gpus or per_gpu < 1:
            raise ValueError(f"a GPU pool needs at least one GPU and per_gpu >= 1, got {gpus!r} and {per_gpu}")
        self.gpus, self.per_gpu, self.cwd = list(gpus), per_gpu, cwd
        self.sharing = per_gpu if sharing is None else sharing
        self.codes: list[int | None] = []
        self._queued: list[tuple[int, list[str], Path | None]] = []
        self._running: dict[int, tuple[subprocess.Popen, int]] = {}   # command index -> (process, place in gpus)

    def submit(self, command: list[str], log: str | os.PathLike | None = None) -> int:
        self.codes.append(None)
        self._queued.append((len(self.codes) - 1, command, None if log is None else Path(log)))
        self.poll()
        return len(self.codes) - 1

    def poll(self) -> bool:
        """Reap finished children, start queued ones where a GPU has room; True when nothing runs or waits."""
        from experiments.suite import child_env

        for index, (child, _place) in list(self._running.items()):
            if child.poll() is not None:
                self.codes[index] = child.returncode
                del self._running[index]
        load = [sum(1 for _c, place in self._running.values() if place == k) for k in range(len(self.gpus))]
        while self._queued and min(load) < self.per_gpu:
            place = min(range(len(self.gpus)), key=lambda k: load[k])
            index, command, log = self._queued.pop(0)
            env = child_env(self.gpus[place], self.sharing * len(self.gpus), len(self.gpus))
            if log is None:
                child = subprocess.Popen(command, cwd=self.cwd, env=env)
            else:
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "ab") as handle:
                    child = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
            self._running[index] = (child, place)
            load[place] += 1
        return not self._queued and not self._running


def run_on_gpus(commands: list[list[str]], gpus: list[str], *, per_gpu: int = 1, cwd: str | os.PathLike | None = None,
                poll_s: float = 0.2) -> list[int]:
    """Run each command as a child process on a GPU pool (GpuPool) and wait for all; their exit codes, in order.
    Their output goes to this process's."""
    pool = GpuPool(gpus, per_gpu=per_gpu, cwd=cwd, sharing=min(per_gpu, -(-len(commands) // max(1, len(gpus)))))
    for command in commands:
        pool.submit(command)
    while not pool.poll():
        time.sleep(poll_s)
    return [int(code) for code in pool.codes]


__all__ = ["BASE_METHOD", "GpuPool", "base_model_source", "base_run_dirs", "run_on_gpus", "visible_gpus",
           "write_base_run_dir"]
