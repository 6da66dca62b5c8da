"""torch.profiler helpers shared by the benchmarks: phase ranges, per-op records as JSON, and a diff of two profiles
that says where one configuration loses or gains time against another.

Ranges opened on the main thread see the device time of the ops launched there (forward, the optimizer update); the
backward's ops run on autograd's device thread, so a range around loss.backward() shows host time only. The kernels'
total per step (kernel_ms_per_step) is exact either way.

A profile is summarised as one record per op name (torch's key_averages): self device time (kernels launched by the
op itself), self CPU time, calls, and the totals including children. Phases are marked with record_function ranges
("phase:forward", "phase:backward", "phase:update", and any the caller adds); their CPU total is the host time spent
inside the range and their device total the kernel time of everything launched inside it.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

PHASE_PREFIX = "phase:"


def start(device_type: str):
    """A running profiler over CPU (and CUDA when present) activities; stop it with .__exit__(None, None, None)."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    profiler.__enter__()
    return profiler


def phase(name: str):
    """A record_function range that summaries recognise as a phase (a no-op context when torch is absent)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the benchmarks always have torch
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"{PHASE_PREFIX}{name}")


def _us(event, *names) -> float:
    for name in names:
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def records(profiler) -> list[dict]:
    """One record per op name: self/total device and CPU microseconds and calls (device = CUDA kernels)."""
    out = []
    for event in profiler.key_averages():
        on_device = "cpu" not in str(getattr(event, "device_type", "cpu")).lower()  # a kernel, not an op
        out.append({"name": event.key, "calls": int(event.count), "kernel": on_device,
                    "self_device_us": _us(event, "self_device_time_total", "self_cuda_time_total"),
                    "device_total_us": _us(event, "device_time_total", "cuda_time_total"),
                    "self_cpu_us": _us(event, "self_cpu_time_total"), "cpu_total_us": _us(event, "cpu_time_total")})
    return out


def write(profiler, folder: Path, stem: str, *, steps: int, device_type: str) -> dict:
    """<stem>.txt (torch's tables: by self device time and by self CPU time) and <stem>.json (records, phases)."""
    folder.mkdir(parents=True, exist_ok=True)
    averages = profiler.key_averages()
    tables = []
    if device_type == "cuda":
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=30))
    tables.append(averages.table(sort_by="self_cpu_time_total", row_limit=30))
    (folder / f"{stem}.txt").write_text("\n\n".join(tables))
    doc = {"steps": steps, "device": device_type, "records": records(profiler)}
    doc["phases"] = phases(doc["records"], steps)
    doc["kernel_ms_per_step"] = kernel_ms_per_step(doc["records"], steps)
    doc["kernels_per_step"] = kernels_per_step(doc["records"], steps)
    (folder / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    return doc


def kernel_ms_per_step(recs: list[dict], steps: int) -> float:
    """Device milliseconds per step of all kernels (each kernel once: op rows repeat their kernels' time)."""
    return sum(r["self_device_us"] for r in recs if r.get("kernel")) / 1e3 / max(1, steps)


def kernels_per_step(recs: list[dict], steps: int) -> float:
    """Kernel launches per step: at small shapes a step's time follows this count more than its FLOPs."""
    return sum(r["calls"] for r in recs if r.get("kernel")) / max(1, steps)


def phases(recs: list[dict], steps: int) -> dict:
    """Per phase range, per step: host milliseconds inside it and device milliseconds of what it launched."""
    out = {}
    for r in recs:
        if r["name"].startswith(PHASE_PREFIX):
            out[r["name"][len(PHASE_PREFIX):]] = {"cpu_ms_per_step": r["cpu_total_us"] / 1e3 / max(1, steps),
                                                  "device_ms_per_step": r["device_total_us"] / 1e3 / max(1, steps),
                                                  "calls": r["calls"]}
    return out


def diff(a: dict, b: dict, *, label_a: str, label_b: str, rows: int = 15) -> str:
    """Markdown: per-step phase times of two profiles, then the ops whose self device (or, on a CPU, self host) time
    differs most per step (a's minus b's)."""
    key = "self_device_us" if a.get("device") == "cuda" else "self_cpu_us"
    per_step = {label_a: max(1, a.get("steps", 1)), label_b: max(1, b.get("steps", 1))}
    lines = [f"Per step ({'device' if key == 'self_device_us' else 'host'} time), {label_a} vs {label_b}:", "",
             f"| phase | {label_a} host ms | {label_b} host ms | {label_a} device ms | {label_b} device ms |",
             "|---|---|---|---|---|"]
    for name in sorted(set(a.get("phases", {})) | set(b.get("phases", {}))):
        pa, pb = a["phases"].get(name, {}), b["phases"].get(name, {})
        lines.append(f"| {name} | {pa.get('cpu_ms_per_step', 0):.2f} | {pb.get('cpu_ms_per_step', 0):.2f} | "
                     f"{pa.get('device_ms_per_step', 0):.2f} | {pb.get('device_ms_per_step', 0):.2f} |")
    launches = f"{a.get('kernels_per_step', 0):.0f} vs {b.get('kernels_per_step', 0):.0f} launches"
    lines.append(f"| all kernels ({launches}) | - | - | {a.get('kernel_ms_per_step', 0):.2f} | "
                 f"{b.get('kernel_ms_per_step', 0):.2f} |")
    ops_a = {r["name"]: r for r in a["records"] if not r["name"].startswith(PHASE_PREFIX)}
    ops_b = {r["name"]: r for r in b["records"] if not r["name"].startswith(PHASE_PREFIX)}
    deltas = []
    for name in set(ops_a) | set(ops_b):
        ta = ops_a.get(name, {}).get(key, 0.0) / per_step[label_a]
        tb = ops_b.get(name, {}).get(key, 0.0) / per_step[label_b]
        deltas.append((ta - tb, name, ta, tb, ops_a.get(name, {}).get("calls", 0) / per_step[label_a],
                       ops_b.get(name, {}).get("calls", 0) / per_step[label_b]))
    deltas.sort(key=lambda d: -abs(d[0]))
    lines += ["", f"| op | {label_a} ms/step | {label_b} ms/step | difference ms | {label_a} calls/step | "
                  f"{label_b} calls/step |", "|---|---|---|---|---|---|"]
    for delta, name, ta, tb, ca, cb in deltas[:rows]:
        lines.append(f"| {name[:70]} | {ta / 1e3:.2f} | {tb / 1e3:.2f} | {delta / 1e3:+.2f} | {ca:.0f} | {cb:.0f} |")
    return "\n".join(lines) + "\n"


__all__ = ["PHASE_PREFIX", "start", "phase", "records", "write", "phases", "kernel_ms_per_step",
           "kernels_per_step", "diff"]
