"""torch.profiler helpers shared by the benchmarks: phase ranges, per-op records as JSON, and a diff of two profiles
that says where one configuration loses or gains time against another.

A profile is summarised as one record per op name and kind (torch's key_averages): self device time (kernels launched
by the op itself), self CPU time, calls, and the totals including children. Phases are marked with record_function
ranges ("phase:forward", "phase:backward", "phase:update", and any the caller adds).

What each figure means, and what it is not:
  * kernels per step (kernel_ms_per_step) = the device time of real kernels, memcpy and memset only. A record_function
    range also leaves a device-side record (a "user annotation": the span from its first to its last kernel on the
    GPU, idle gaps included); key_averages flags it `is_user_annotation` and it is never a kernel. Profiles written
    before this was known (records without an "annotation" field) carry those spans as kernel=True records; they are
    recognised by their name (the same name as a host-side record: a range, "Optimizer.step#...", "ProfilerStep*").
  * a phase's host ms = the main thread's time inside the range (with the profiler's own overhead: compare two
    profiles, not a profile with an unprofiled step).
  * a phase's device ms = kernel time of what it launched, by one of three sources, always named:
      range    the ops that ran inside the range on the main thread (forward, update);
      window   every op, on any thread, that started inside the range's host time window: the backward's ops run on
               autograd's device thread, outside the range's op tree, and loss.backward() returns only when they are
               done, so the window holds exactly them (written by write() from the raw events; newer profiles);
      derived  the backward of an older profile (no window): all kernels minus forward and update; it also holds the
               few kernels launched outside every range (batch creation, loss.item()).
    Other ranges that wrap a backward pass (AUTOGRAD_RANGES) have no device time in an older profile: "n/a".

python benchmarks/profile_summaries.py regenerates the committed summaries from the records (see there).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

PHASE_PREFIX = "phase:"
# ranges whose ops run on autograd's thread: their range's op tree has none of their kernels
AUTOGRAD_RANGES = ("backward", "lomo norm pass", "lomo update pass")
# host-side names that a device-side annotation of an older profile can carry besides a phase range's
ANNOTATION_PREFIXES = (PHASE_PREFIX, "ProfilerStep", "Optimizer.")
WINDOW_FIELD = "phase_window_device_us"  # per phase: device us of every op started inside its host windows


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


def _on_device(event) -> bool:
    return "cpu" not in str(getattr(event, "device_type", "cpu")).lower()


def records(profiler) -> list[dict]:
    """One record per op name and kind: self/total device and CPU microseconds and calls. kernel = a real kernel
    (memcpy, memset) on the device; annotation = a record_function range (host side, or its span on the device)."""
    out = []
    for event in profiler.key_averages():
        on_device, annotation = _on_device(event), bool(getattr(event, "is_user_annotation", False))
        out.append({"name": event.key, "calls": int(event.count), "kernel": on_device and not annotation,
                    "annotation": annotation, "on_device": on_device,
                    "self_device_us": _us(event, "self_device_time_total", "self_cuda_time_total"),
                    "device_total_us": _us(event, "device_time_total", "cuda_time_total"),
                    "self_cpu_us": _us(event, "self_cpu_time_total"), "cpu_total_us": _us(event, "cpu_time_total")})
    return out


def normalise(recs: list[dict]) -> list[dict]:
    """Records with reliable kernel / annotation / on_device fields; older records (kernel = "on the device", no
    annotation field) are classified by name: a device-side record named like a host-side one is a range's span."""
    if all("annotation" in r for r in recs):
        return recs
    host_names = {r["name"] for r in recs if not r["kernel"]}
    out = []
    for r in recs:
        on_device = bool(r["kernel"])
        span = on_device and (r["name"] in host_names or r["name"].startswith(ANNOTATION_PREFIXES))
        annotation = span or (not on_device and r["name"].startswith(PHASE_PREFIX))
        out.append({**r, "kernel": on_device and not span, "annotation": annotation, "on_device": on_device})
    return out


def phase_windows(events) -> dict[str, float]:
    """Per phase, device microseconds of the kernels of every host op (any thread) that started inside one of the
    phase's host windows. events: torch's raw FunctionEvents (profiler.events())."""
    windows: dict[str, list[tuple[float, float]]] = {}
    annotations = set()
    for e in events:
        if getattr(e, "is_user_annotation", False):
            annotations.add(e.name)
            if e.name.startswith(PHASE_PREFIX) and not _on_device(e):
                windows.setdefault(e.name[len(PHASE_PREFIX):], []).append((e.time_range.start, e.time_range.end))
    out = {name: 0.0 for name in windows}
    for e in events:
        if _on_device(e) or getattr(e, "is_async", False) or getattr(e, "is_user_annotation", False):
            continue
        kernel_us = sum(k.duration for k in e.kernels if k.name not in annotations)
        if not kernel_us:
            continue
        for name, spans in windows.items():
            if any(lo <= e.time_range.start <= hi for lo, hi in spans):
                out[name] += kernel_us
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
    doc = {"steps": steps, "device": device_type, "records": records(profiler),
           WINDOW_FIELD: phase_windows(profiler.events())}
    doc.update(summarise(doc))
    (folder / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    return doc


def kernel_ms_per_step(recs: list[dict], steps: int) -> float:
    """Device milliseconds per step of all real kernels, memcpy and memset (never a range's span; each kernel once:
    op rows repeat their kernels' time)."""
    return sum(r["self_device_us"] for r in normalise(recs) if r["kernel"]) / 1e3 / max(1, steps)


def kernels_per_step(recs: list[dict], steps: int) -> float:
    """Kernel launches per step: at small shapes a step's time follows this count more than its FLOPs."""
    return sum(r["calls"] for r in normalise(recs) if r["kernel"]) / max(1, steps)


def phases(recs: list[dict], steps: int, windows: dict | None = None) -> dict:
    """Per phase range, per step: host milliseconds inside it (its host-side record) and device milliseconds of what
    it launched with their source ('range', 'window', 'derived'; None and no value where not attributable)."""
    steps = max(1, steps)
    out = {}
    for r in normalise(recs):
        if r["name"].startswith(PHASE_PREFIX) and not r["on_device"]:
            name = r["name"][len(PHASE_PREFIX):]
            device, source = r["device_total_us"] / 1e3 / steps, "range"
            if windows is not None and name in windows:
                device, source = windows[name] / 1e3 / steps, "window"
            elif name in AUTOGRAD_RANGES:
                device, source = None, None
            out[name] = {"cpu_ms_per_step": r["cpu_total_us"] / 1e3 / steps, "device_ms_per_step": device,
                         "device_source": source, "calls": r["calls"]}
    backward = out.get("backward")
    if backward is not None and backward["device_source"] is None and "forward" in out:
        others = sum(out[name]["device_ms_per_step"] or 0.0 for name in ("forward", "update") if name in out)
        backward["device_ms_per_step"] = kernel_ms_per_step(recs, steps) - others
        backward["device_source"] = "derived"
    return out


def summarise(doc: dict) -> dict:
    """phases, kernel_ms_per_step and kernels_per_step of a profile document, from its records (and the phase
    windows where it has them); a document's stored copies of these are never read."""
    recs, steps = doc["records"], doc.get("steps", 1)
    return {"phases": phases(recs, steps, doc.get(WINDOW_FIELD)), "kernel_ms_per_step": kernel_ms_per_step(recs, steps),
            "kernels_per_step": kernels_per_step(recs, steps)}


SOURCE_NOTES = {"range": "", "window": " (window)", "derived": " (derived)"}


def device_cell(p: dict | None, device: str = "cuda") -> str:
    """A phase's device milliseconds with its source, or why there is none ("-" in a CPU-only profile)."""
    if not p or device != "cuda":
        return "-"
    if p.get("device_ms_per_step") is None:
        return "n/a (autograd thread)"
    return f"{p['device_ms_per_step']:.2f}{SOURCE_NOTES.get(p.get('device_source') or 'range', '')}"


LEGEND = ("Host ms: the main thread's time inside the range, profiler overhead included (compare the columns, not "
          "the measured step). Device ms: kernel, memcpy and memset time of what the range launched; (window) = of "
          "every op started inside the range's host time window on any thread (the backward's ops run on autograd's "
          "thread); (derived) = all kernels minus forward and update, for a profile without windows (it also holds "
          "the few kernels launched outside every range). Ranges' own device spans are not kernels and are counted "
          "nowhere.")


def diff(a: dict, b: dict, *, label_a: str, label_b: str, rows: int = 15) -> str:
    """Markdown: per-step phase times of two profiles, then the ops whose self device (or, on a CPU, self host) time
    differs most per step (a's minus b's). Works on any profile document with records, old or new."""
    key = "self_device_us" if a.get("device") == "cuda" else "self_cpu_us"
    sa, sb = summarise(a), summarise(b)
    per_step = {label_a: max(1, a.get("steps", 1)), label_b: max(1, b.get("steps", 1))}
    lines = [f"Per step ({'device' if key == 'self_device_us' else 'host'} time), {label_a} vs {label_b}:", "",
             f"| phase | {label_a} host ms | {label_b} host ms | {label_a} device ms | {label_b} device ms |",
             "|---|---|---|---|---|"]
    for name in sorted(set(sa["phases"]) | set(sb["phases"])):
        pa, pb = sa["phases"].get(name), sb["phases"].get(name)
        host = [f"{p['cpu_ms_per_step']:.2f}" if p else "-" for p in (pa, pb)]
        lines.append(f"| {name} | {host[0]} | {host[1]} | {device_cell(pa, a.get('device'))} | "
                     f"{device_cell(pb, b.get('device'))} |")
    launches = f"{sa['kernels_per_step']:.0f} vs {sb['kernels_per_step']:.0f} launches"
    lines.append(f"| all kernels ({launches}) | - | - | {sa['kernel_ms_per_step']:.2f} | "
                 f"{sb['kernel_ms_per_step']:.2f} |")
    lines += ["", LEGEND]
    ops_a, ops_b = _ops(a["records"], key), _ops(b["records"], key)
    deltas = []
    for name in set(ops_a) | set(ops_b):
        (ta, ca), (tb, cb) = ops_a.get(name, (0.0, 0)), ops_b.get(name, (0.0, 0))
        ta, tb = ta / per_step[label_a], tb / per_step[label_b]
        deltas.append((ta - tb, name, ta, tb, ca / per_step[label_a], cb / per_step[label_b]))
    deltas.sort(key=lambda d: (-abs(d[0]), d[1]))
    lines += ["", f"| op | {label_a} ms/step | {label_b} ms/step | difference ms | {label_a} calls/step | "
                  f"{label_b} calls/step |", "|---|---|---|---|---|---|"]
    for delta, name, ta, tb, ca, cb in deltas[:rows]:
        lines.append(f"| {name[:70]} | {ta / 1e3:.2f} | {tb / 1e3:.2f} | {delta / 1e3:+.2f} | {ca:.0f} | {cb:.0f} |")
    return "\n".join(lines) + "\n"


def _ops(recs: list[dict], key: str) -> dict[str, tuple[float, int]]:
    """Per op name, (time under key, calls): kernels and host ops; ranges (their spans and the phases) left out."""
    out: dict[str, tuple[float, int]] = {}
    for r in normalise(recs):
        if (r["annotation"] and r["on_device"]) or r["name"].startswith(PHASE_PREFIX):
            continue
        time, calls = out.get(r["name"], (0.0, 0))
        out[r["name"]] = (time + r.get(key, 0.0), calls + r["calls"])
    return out


__all__ = ["PHASE_PREFIX", "AUTOGRAD_RANGES", "WINDOW_FIELD", "start", "phase", "records", "normalise",
           "phase_windows", "write", "phases", "summarise", "kernel_ms_per_step", "kernels_per_step", "device_cell",
           "LEGEND", "diff"]
