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
        if (RunDir(base_dir).read_summary() or {}).get("method") == BASE_METHOD:
            continue
        base_dir.mkdir(parents=True, exist_ok=True)
        write_summary(base_dir, RunSummary(
            status="ok", run_name=f"{stem}-{BASE_METHOD}", method=BASE_METHOD, model=summary["model"],
            config={"model": (summary.get("config") or {}).get("model"), "method": {"name": BASE_METHOD}},
            environment=summary.get("environment"), extras={"note": note}))
    return list(bases)


def base_model_source(run_dir: str | os.PathLike) -> str | None:
    """The model a base run directory stands for (its summary's "model"); None for any other directory."""
    summary = RunDir(run_dir).read_summary() if RunDir(run_dir).is_run() else None
    if not summary or summary.get("method") != BASE_METHOD:
        return None
    return str(summary["model"])


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use (CUDA_VISIBLE_DEVICES when set, else every device torch sees)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_on_gpus(commands: list[list[str]], gpus: list[str], *, per_gpu: int = 1, cwd: str | os.PathLike | None = None,
                poll_s: float = 0.2) -> list[int]:
    """Run each command as a child process pinned to one of `gpus` (CUDA_VISIBLE_DEVICES), at most `per_gpu` at a
    time on each; the children's output goes to this process's. Returns their exit codes, in order. Each child also
    gets BADAM_SHARED_DEVICE_JOBS: how many children share its GPU (their timings are not one model's alone)."""
    if not gpus or per_gpu < 1:
        raise ValueError(f"run_on_gpus needs at least one GPU and per_gpu >= 1, got {gpus!r} and {per_gpu}")
    codes: list[int | None] = [None] * len(commands)
    running: dict[int, tuple[subprocess.Popen, str]] = {}
    waiting = list(range(len(commands)))
    sharing = min(per_gpu, -(-len(commands) // len(gpus)))
    while waiting or running:
        for index, (child, _gpu) in list(running.items()):
            if child.poll() is not None:
                codes[index] = child.returncode
                del running[index]
        load = {gpu: sum(1 for _c, g in running.values() if g == gpu) for gpu in gpus}
        while waiting and min(load.values()) < per_gpu:
            gpu = min(gpus, key=lambda g: load[g])
            index = waiting.pop(0)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "BADAM_SHARED_DEVICE_JOBS": str(sharing)}
            running[index] = (subprocess.Popen(commands[index], cwd=cwd, env=env), gpu)
            load[gpu] += 1
        if running:
            time.sleep(poll_s)
    return [int(code) for code in codes]


__all__ = ["BASE_METHOD", "base_model_source", "base_run_dirs", "run_on_gpus", "visible_gpus"]
