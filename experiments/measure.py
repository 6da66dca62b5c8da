"""Step timing and memory measurement for the training loop.

Timing: CUDA events around each phase on a GPU (GPU time, not launch time) and a synchronize at both ends of the
step for its wall time; `time.perf_counter` on a CPU, where every op is synchronous anyway.

Memory on a GPU: torch.cuda.max_memory_allocated / max_memory_reserved per step (the allocator's own counters).
Memory on a CPU: torch has no allocator statistics for CPU tensors, so the probe reports the bytes of the live tensors
it can see, sampled after each forward, each backward and the update: parameters, gradients and optimizer states
(from `method.memory_split`), tensors saved for backward (via torch.autograd.graph.saved_tensors_hooks, unique
storages, excluding parameters), buffers and the batch. Temporaries that live only inside one op are not seen; the CPU
figure is therefore a lower bound of what the process held, never CUDA's number. "reserved" has no CPU meaning: null.

The Table 2 split (parameters, gradients, optimizer states, activations, other) is taken on the step with the highest
peak, at the sample point where the tracked tensors summed highest; "other" = that step's peak minus the four named
parts, so the split adds up to the reported peak by construction.
"""
from __future__ import annotations

import contextlib
import resource
import time
from collections import defaultdict

import torch
from torch import nn

SPLIT_KEYS = ("parameters", "gradients", "optimizer_states", "activations", "other")
# When True, every timed phase also opens a torch.profiler range "phase:<name>" (benchmarks/profile_step.py sets it,
# so that a profile of a harness run says which phase each op ran in); off by default: no cost in ordinary runs.
PHASE_RANGES = False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Accumulates forward/backward/update milliseconds over the micro-batches of one optimizer step.

    stream_only: between steps wait for the current CUDA stream only, not the whole device, so work queued on another
    stream (an overlapped update, badam/overlap.py) may run on into the next step, which counts it where it delays
    this stream; ``end_step(everything=True)`` waits for all of it (a run's last step, so the steps' times add up to
    the wall time)."""

    def __init__(self, device: torch.device, *, stream_only: bool = False):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream_only = stream_only
        self._events: dict[str, list] = defaultdict(list)
        self._totals: dict[str, float] = defaultdict(float)
        self._t0 = 0.0

    def start_step(self) -> None:
        self._events.clear()
        self._totals.clear()
        self._synchronize(everything=False)
        self._t0 = time.perf_counter()

    def _synchronize(self, everything: bool) -> None:
        if self.cuda and self.stream_only and not everything:
            torch.cuda.current_stream(self.device).synchronize()
        else:
            synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        if PHASE_RANGES:
            with torch.profiler.record_function(f"phase:{name}"), self._timed(name):
                yield
        else:
            with self._timed(name):
                yield

    @contextlib.contextmanager
    def _timed(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events[name].append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._totals[name] += (time.perf_counter() - t0) * 1000.0

    def end_step(self, everything: bool = False) -> dict[str, float]:
        """Milliseconds per phase and for the whole step; synchronizes the device (stream_only: the current stream,
        unless `everything`) first."""
        self._synchronize(everything)
        step_ms = (time.perf_counter() - self._t0) * 1000.0
        totals = dict(self._totals)
        for name, pairs in self._events.items():
            totals[name] = totals.get(name, 0.0) + sum(start.elapsed_time(end) for start, end in pairs)
        return {"forward": totals.get("forward", 0.0), "backward": totals.get("backward", 0.0),
                "update": totals.get("update", 0.0), "step": step_ms}


def _storages(tensors) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t = getattr(t, "_local_tensor", t)  # a sharded DTensor (fsdp2) holds the storage of its local shard
            st = t.untyped_storage()
            if st.nbytes():
                out[st.data_ptr()] = st.nbytes()
    return out


class MemoryProbe:
    """Per-step peaks and the once-per-run split of what is held (see the module docstring)."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = device
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self._saved: dict[int, int] = {}
        self._step_best: dict | None = None
        self.split: dict | None = None          # the split of the highest-peak step so far
        self.split_step: int | None = None
        self.split_point: str | None = None
        self.peak_allocated = 0
        self.peak_reserved = 0 if self.cuda else None
        self.last_tracked_total = 0
        self.activations_max = 0                 # largest activation count seen after any forward

    # --- activations: tensors autograd keeps for backward ----------------------------------------------------
    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        self._saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor):
        return tensor

    def forward_context(self):
        """Wrap each forward: records the storages autograd saves (no extra references are kept)."""
        self._saved = {}
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    # --- sampling ---------------------------------------------------------------------------------------------
    def begin_step(self) -> None:
        self._step_best = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def sample(self, where: str, model: nn.Module, method, batch: dict | None = None) -> None:
        """Record what is held now. `where` is after_forward, after_backward or after_update."""
        if not self.enabled:
            return
        split = dict(method.memory_split(model))
        counted = _storages(p for p in model.parameters())
        counted.update(_storages(p.grad for p in model.parameters() if p.grad is not None))
        activations = 0
        if where == "after_forward":
            activations = sum(n for ptr, n in self._saved.items() if ptr not in counted)
        seen = dict(counted)
        seen.update({ptr: 0 for ptr in self._saved})
        other_tensors = list(model.buffers()) + (list(batch.values()) if batch else [])
        visible_other = sum(n for ptr, n in _storages(other_tensors).items() if ptr not in seen)
        self.activations_max = max(self.activations_max, int(activations))
        parts = {"parameters": int(split.get("parameters", 0)), "gradients": int(split.get("gradients", 0)),
                 "optimizer_states": int(split.get("optimizer_states", 0)), "activations": int(activations)}
        tracked = sum(parts.values()) + visible_other
        self.last_tracked_total = tracked
        if self._step_best is None or tracked > self._step_best["tracked"]:
            self._step_best = {"tracked": tracked, "parts": parts, "visible_other": visible_other, "where": where}

    def end_step(self, step: int) -> dict:
        """This step's memory figures for metrics.jsonl; keeps the split if this step has the highest peak."""
        best = self._step_best
        if self.cuda:
            step_peak = int(torch.cuda.max_memory_allocated(self.device))
            step_reserved = int(torch.cuda.max_memory_reserved(self.device))
            allocated = int(torch.cuda.memory_allocated(self.device))
            self.peak_reserved = max(self.peak_reserved or 0, step_reserved)
        else:
            step_peak = best["tracked"] if best else 0
            step_reserved = None
            allocated = self.last_tracked_total
        if best is not None and (self.split is None or step_peak > self.peak_allocated):
            parts = dict(best["parts"])
            named = sum(parts.values())
            parts["other"] = max(0, step_peak - named)
            self.split, self.split_step, self.split_point = parts, step, best["where"]
        self.peak_allocated = max(self.peak_allocated, step_peak)
        return {"mem_allocated_bytes": allocated, "mem_peak_allocated_bytes": step_peak,
                "mem_peak_reserved_bytes": step_reserved}

    def held_now(self) -> int:
        """Bytes held at this moment (for the OOM report): the CUDA allocator's figure on a GPU; on a CPU the process's
        resident memory (what the failed allocation competed with), or the tracked tensors where that is unknown."""
        held = held_bytes(self.device)
        return int(held) if held is not None else int(self.last_tracked_total)

    def summary(self, method_name: str) -> dict:
        if self.cuda:
            note = ("cuda: peaks from torch.cuda.max_memory_allocated/reserved per step; split taken on the step "
                    "with the highest peak, at the sample point (after forward/backward/update) with the most "
                    "tracked bytes; parameters/gradients/optimizer_states from the method's memory_split (for BAdam "
                    "the active block), "
                    "activations = unique storages saved for backward (saved_tensors_hooks) minus parameters; "
                    "other = peak - the named parts (temporaries, autocast casts, allocator rounding)")
        else:
            note = ("cpu: live-tensor tracker, not an allocator statistic; peak = highest sum of tracked tensors "
                    "(parameters, gradients, optimizer states, tensors saved for backward, buffers, the batch) at the "
                    "sample points after forward/backward/update; transient temporaries inside ops are not seen; "
                    "other = buffers and the batch; with gradient checkpointing the layer inputs kept by "
                    "torch.utils.checkpoint are not seen; reserved has no CPU meaning")
        return {
            "device": "cuda" if self.cuda else "cpu",
            "peak_allocated_bytes": int(self.peak_allocated),
            "peak_reserved_bytes": None if self.peak_reserved is None else int(self.peak_reserved),
            "split_bytes": self.split,
            "split_step": self.split_step,
            "split_point": self.split_point,
            # the split is taken where the total peaks (for Adam often after backward, when activations are freed);
            # the largest activation footprint of the run is kept here as well
            "activations_max_bytes": int(self.activations_max),
            "split_note": note if self.enabled else "memory tracking was turned off (train.track_memory=false)",
            "process_peak_rss_bytes": process_peak_rss_bytes(),
        }


def process_peak_rss_bytes() -> int:
    """The process's peak resident set size (everything: Python, libraries, all tensors). Context only."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def process_rss_bytes() -> int | None:
    """The process's resident set size now (Linux /proc; None elsewhere)."""
    try:
        resident_pages = int(open("/proc/self/statm").read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * resource.getpagesize()


def held_bytes(device: torch.device | str) -> int | None:
    """Memory held now, for an out-of-memory report: what the CUDA allocator has handed out on a GPU, the process's
    resident memory on a CPU (torch keeps no allocator statistics for CPU tensors)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.memory_allocated(device))
    return process_rss_bytes()


# Messages of allocation failures that do not arrive as torch.OutOfMemoryError or MemoryError: CPU tensors
# ("DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes"), cuBLAS / cuDNN workspaces, older
# CUDA code paths, the OS (ENOMEM: "Cannot allocate memory").
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "cublas_status_alloc_failed",
                 "cudnn_status_alloc_failed", "failed to allocate")


def is_oom(exc: BaseException | None) -> bool:
    """Any allocation failure: torch.OutOfMemoryError (CUDA), MemoryError (Python / CPU), an OSError with ENOMEM, or an
    exception carrying one of the allocators' messages; also when it is the cause or context of `exc` (a library
    that re-raises it wrapped)."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            return True
        if isinstance(exc, (RuntimeError, OSError, ValueError)):
            text = str(exc).lower()
            if any(message in text for message in _OOM_MESSAGES):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


__all__ = ["StepTimer", "MemoryProbe", "SPLIT_KEYS", "is_oom", "held_bytes", "process_peak_rss_bytes",
           "process_rss_bytes", "synchronize"]
