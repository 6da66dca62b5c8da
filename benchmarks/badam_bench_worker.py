"""Worker side of benchmarks/badam_vs_official.py: one optimizer, measured in its own process.

Workers: ``ours`` (badam.BlockOptimizer as checked out), ``before`` (badam/ of an earlier commit, loaded from git as the
module ``badam_before``: the comparison for memory changes), ``official`` (badam 1.4's BlockOptimizer); ``ours_ratio``
and ``official_ratio`` (the two BlockOptimizerRatio). See badam_vs_official.py's docstring for what is measured.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# ours_nockpt = ours without activation checkpointing: what recomputing only what memory forces would gain (the
# layers below the active block keep no activations anyway; those above keep theirs instead of re-running forward)
BLOCK_WORKERS = ("ours", "before", "official", "ours_nockpt")
RATIO_WORKERS = ("ours_ratio", "official_ratio")
PHASES = {"block": ("k1_epoch", "k100_steady", "k100_accum2"), "ratio": ("ratio_steady",)}


def implementation(name: str) -> str:
    """The optimizer a worker runs (ours_nockpt runs ours)."""
    return "ours" if name == "ours_nockpt" else name
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, rope_theta=500000.0, max_position_embeddings=128, rms_norm_eps=1e-5,
            tie_word_embeddings=False)


def _extract_badam(rev: str) -> Path:
    """A temporary folder holding badam/ as of git revision `rev` of this repository."""
    root = Path(tempfile.mkdtemp(prefix="badam_before_"))
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "badam"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        raise RuntimeError(f"cannot read badam/ at revision {rev!r} with git ({detail}); pass --before-rev with a "
                           "commit of this repository or a folder holding that badam/, or leave 'before' out of "
                           "--optimizers") from exc
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def load_badam_at(rev: str, module_name: str = "badam_before"):
    """badam/ as of git revision `rev` of this repository (or from a folder `rev` holding badam/), imported as
    `module_name` so that it can sit beside ours."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    root = Path(rev) if Path(rev).is_dir() else _extract_badam(rev)
    if not (root / "badam" / "__init__.py").is_file():
        raise RuntimeError(f"no badam/__init__.py under {root}; --before-rev takes a git revision or a folder that "
                           "holds the badam/ package")
    spec = importlib.util.spec_from_file_location(module_name, root / "badam" / "__init__.py",
                                                  submodule_search_locations=[str(root / "badam")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class Clock:
    """Elapsed milliseconds between marks: CUDA events on GPU (read after one synchronize per step), else
    perf_counter."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self):
        if self.cuda:
            torch.cuda.synchronize()
            out = [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        else:
            out = [(b - a) * 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        self.marks = []
        return out


class GcWatch:
    """Cyclic-GC collections while a phase's measured steps run: count per generation, milliseconds, and the
    milliseconds that fell inside each timed forward. A full (generation 2) collection traverses every live object
    (0.1-0.4 s in a process holding torch and transformers) and lands in whichever phase allocates at that moment."""

    def __init__(self):
        self.collections = {0: 0, 1: 0, 2: 0}
        self.total_ms = 0.0
        self._started = None
        self._span_ms = None  # accumulates while a span (a timed forward) is open

    def _callback(self, stage, info):
        if stage == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            ms = (time.perf_counter() - self._started) * 1000.0
            self.collections[info["generation"]] += 1
            self.total_ms += ms
            if self._span_ms is not None:
                self._span_ms += ms
            self._started = None

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)

    def open_span(self):
        self._span_ms = 0.0

    def close_span(self) -> float:
        ms, self._span_ms = self._span_ms, None
        return ms

    def summary(self, forward_ms: list[float]) -> dict:
        return {"collections": {f"gen{g}": n for g, n in self.collections.items()}, "ms": self.total_ms,
                "in_forward_ms": sum(forward_ms), "in_forward_ms_max": max(forward_ms, default=0.0)}


def settle(device) -> None:
    """The state every worker's timed loop starts from, as in the harness (experiments/loop.py): collect, then move
    everything alive (model, libraries, optimizer) out of the collector's view, and hand cached GPU memory back.
    Without it the workers started from different states: badam 1.4's constructor runs gc.collect() (its switch)
    and its step torch.cuda.empty_cache(); ours does neither, so its timed steps inherited the model build's and the
    activation baseline's uncollected heap and allocator cache (see notes/issue-17.md, 2026-11-26 forward gap)."""
    gc.collect()
    gc.freeze()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def build_model(tiny, device, checkpointing=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    from badam.hf import enable_block_checkpointing

    config = LlamaConfig(**(TINY if tiny else LLAMA3_8B), use_cache=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:  # allocate and initialise directly on the target device, in bf16
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if checkpointing:
        enable_block_checkpointing(model)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def batch(step, args, vocab, device):
    g = torch.Generator().manual_seed(10_000 + step)
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}


def allocated(device):
    return torch.cuda.memory_allocated() if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak(device):
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def activation_baseline(model, args, device):
    """Peak above the weights of forward+backward with layer 0 trainable (deepest backward) and no optimizer."""
    params = list(model.model.layers[0].parameters())
    hooks = []
    for p in params:
        p.requires_grad_(True)
        hooks.append(p.register_post_accumulate_grad_hook(lambda t: setattr(t, "grad", None)))
    weights = allocated(device)
    reset_peak(device)
    for step in range(2):
        model(**batch(step, args, model.config.vocab_size, device)).loss.backward()
    result = peak(device) - weights if device.type == "cuda" else None
    for h in hooks:
        h.remove()
    for p in params:
        p.requires_grad_(False)
    return result


def storage_bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_sparse:
            total += storage_bytes([t._indices(), t._values()])
        elif isinstance(t, torch.Tensor) and t.dim() > 0 and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def held_bytes(name, opt, model):
    """Bytes the optimizer holds now, counted from its tensors (and the model's gradients it relies on)."""
    name = implementation(name)
    model_grads = [p.grad for p in model.parameters() if p.grad is not None]
    if name == "ours_ratio":
        return sum(opt.memory_bytes().values()) + storage_bytes(model_grads)
    if name == "official_ratio":  # sparse COO gradients (counted with their int64 indices), masks, states
        masks = [m for m in opt.mask_dict.values() if m is not None]
        states = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return storage_bytes([*model_grads, *masks, *states])
    states = [v for s in opt.base_optimizer.state.values() for v in s.values()]
    masters = opt.masters if name in ("ours", "before") else list(getattr(opt, "param_idx2hp", {}).values())
    extra = opt.gradient_tensors() if name == "ours" else [m.grad for m in masters if m.grad is not None]
    return storage_bytes([*masters, *extra, *states, *model_grads])


def make_optimizer(name, model, args, K=None, start_block=None):
    name = implementation(name)
    named = list(model.named_parameters())
    if name in RATIO_WORKERS:
        for p in model.parameters():
            p.requires_grad_(True)  # ratio mode trains every matrix; each class freezes embeddings and head itself
        groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
        kwargs = dict(update_ratio=args.update_ratio, switch_every=100, lr=1e-6, verbose=0)
        if name == "ours_ratio":
            from badam import BlockOptimizerRatio

            return BlockOptimizerRatio(groups, named, **kwargs)
        from badam.reference import load_official

        return load_official(args.official_path).BlockOptimizerRatio(groups, named, **kwargs)
    base = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    kwargs = dict(switch_block_every=K, switch_mode="ascending", start_block=start_block, verbose=0)
    if name == "ours":
        from badam import BlockOptimizer

        return BlockOptimizer(base, named, **kwargs)
    if name == "before":
        return load_badam_at(args.before_rev).BlockOptimizer(base, named, **kwargs)
    from badam.reference import load_official

    return load_official(args.official_path).BlockOptimizer(base, named, **kwargs)


def time_switches(name, opt, device, sink):
    """Wrap the optimizer's block-switch routine with a synchronized timer appending milliseconds to `sink`."""
    attr = "switch_trainable_params" if implementation(name) == "official" else "_activate"
    inner = getattr(opt, attr)

    def timed(*a, **kw):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = inner(*a, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sink.append((time.perf_counter() - t0) * 1000.0)
        return result

    setattr(opt, attr, timed)


def run_phase(name, model, args, device, *, warmup, measured, first_step, K=None, start_block=None, micro=1):
    import contextlib

    from tqdm import tqdm

    import profiling
    from experiments.flops import FlopCounter

    weights = allocated(device)  # before the optimizer creates its first masters
    opt = make_optimizer(name, model, args, K, start_block)
    counter = FlopCounter(model)
    switches: list[float] = []
    if name in BLOCK_WORKERS:
        time_switches(name, opt, device, switches)
    clock = Clock(device)
    settled = bool(getattr(args, "settle", True))
    if settled:
        settle(device)
    gc_watch = GcWatch().__enter__()
    gc_forward_ms = []
    step_ms, step_peaks, update_peaks, held_backward, held_after_step, losses, flops = [], [], [], [], [], [], []
    reset_peak(device)
    profiler, profiled_steps = None, 3
    for i in tqdm(range(warmup + measured), desc=f"{name} K={K} micro={micro}", file=sys.stdout, mininterval=5):
        if args.profile_dir and i == warmup + measured - profiled_steps and K != 1:  # the last 3 steady steps
            profiler = profiling.start(device.type)
        ranges = profiling.phase if profiler is not None else (lambda _name: contextlib.nullcontext())
        trainable = counter.snapshot()  # before the step: a switch inside step() changes what trains
        forward = backward = 0.0
        step_loss = 0.0
        batches = []
        for m in range(micro):
            data = batch(first_step + i * micro + m, args, model.config.vocab_size, device)
            batches.append(data)
            clock.mark()
            gc_watch.open_span()
            with ranges("forward"):
                loss = model(**data).loss
            clock.mark()
            forward_gc = gc_watch.close_span()
            with ranges("backward"):
                (loss / micro).backward()
            clock.mark()
            step_loss += float(loss.detach()) / micro
            del loss  # the graph is gone after backward; drop the handle before measuring the update
            f, b = clock.intervals_ms()
            forward, backward = forward + f, backward + b
            if i >= warmup:
                gc_forward_ms.append(forward_gc)
        held_backward.append(held_bytes(name, opt, model))
        forward_backward_peak = peak(device)
        reset_peak(device)  # from here on the peak belongs to the update alone (no activations alive)
        clock.mark()
        with ranges("update"):
            opt.step()
            opt.zero_grad()
        clock.mark()
        if device.type == "cuda":
            update_peak = peak(device)
            reset_peak(device)
            update_peaks.append(update_peak - weights)
            step_peaks.append(max(forward_backward_peak, update_peak))
        held_after_step.append(held_bytes(name, opt, model))
        (u,) = clock.intervals_ms()
        losses.append(step_loss)
        if i >= warmup:
            step_ms.append({"forward": forward, "backward": backward, "update": u, "step": forward + backward + u})
            flops.append(counter.count(trainable, batches).model)
    gc_watch.__exit__(None, None, None)
    if profiler is not None:
        profiler.__exit__(None, None, None)
        profiling.write(profiler, Path(args.profile_dir), f"profile_{name}_K{K}_micro{micro}", steps=profiled_steps,
                        device_type=device.type)
    result = {
        "K": K, "start_block": start_block, "micro_batches": micro, "warmup_steps": warmup, "measured_steps": measured,
        "median_ms": {k: statistics.median(r[k] for r in step_ms) for k in ("forward", "backward", "update", "step")},
        "spread_ms": {"step_min": min(r["step"] for r in step_ms), "step_max": max(r["step"] for r in step_ms)},
        "forward_ms_per_step": [r["forward"] for r in step_ms],
        "settled": settled, "gc": gc_watch.summary(gc_forward_ms),
        "switch_ms": {"median": statistics.median(switches) if switches else None,
                      "max": max(switches) if switches else None, "count": len(switches)},
        "compute": utilization(flops, [r["step"] for r in step_ms], device),
        "losses": losses,
        "memory": {
            "weights_bytes": weights,
            "peak_allocated_bytes": max(step_peaks) if step_peaks else None,
            "update_peak_above_weights_bytes": max(update_peaks) if update_peaks else None,
            "held_after_backward_bytes": max(held_backward),
            "held_after_step_bytes": held_after_step[-1],
        },
    }
    if hasattr(opt, "release"):
        opt.release()  # unhook the model's parameters before the next phase builds a new optimizer
    del opt
    if settled:
        gc.unfreeze()  # the next phase's optimizer replaces this one's objects
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for p in model.parameters():  # the next phase starts from a clean slate
        p.grad = None
        p.requires_grad_(False)
    return result


def utilization(flops: list[int], step_ms: list[float], device) -> dict:
    """Model FLOPs per measured step (experiments/flops.py) and the achieved fraction of the device's bf16 peak."""
    from experiments.flops import utilization_summary

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    records = [{"step": i + 1, "model_flops": f, "t_step_ms": ms} for i, (f, ms) in enumerate(zip(flops, step_ms))]
    compute = utilization_summary(records, 0, name)
    return {key: compute[key] for key in ("model_flops_per_step", "model_tflops_per_s", "mfu", "peak_source")}


def worker(args) -> None:
    import transformers

    warnings.filterwarnings("ignore", message="BlockOptimizerRatio keeps gradients off p.grad")  # no clipping here
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cuda":  # the harness's default (experiments/models.py): cuDNN attention off, see there why
        torch.backends.cuda.enable_cudnn_sdp(bool(args.cudnn_attention))
    t0 = time.perf_counter()
    model = build_model(args.tiny, device, checkpointing=args.worker != "ours_nockpt")
    setup_s = time.perf_counter() - t0
    activations = activation_baseline(model, args, device)
    layers = model.config.num_hidden_layers
    plans = {
        "k1_epoch": dict(K=1, start_block=0, warmup=2, measured=layers, first_step=0),
        "k100_steady": dict(K=100, start_block=layers // 2, warmup=3, measured=args.steady_steps, first_step=1000),
        "k100_accum2": dict(K=100, start_block=layers // 2, warmup=2, measured=args.accum_steps, first_step=2000,
                            micro=2),
        "ratio_steady": dict(warmup=2, measured=args.ratio_steps, first_step=3000),
    }
    kind = "block" if args.worker in BLOCK_WORKERS else "ratio"
    wanted = [phase for phase in PHASES[kind] if phase in args.phases]
    phases = {phase: run_phase(args.worker, model, args, device, **plans[phase]) for phase in wanted}
    for phase in phases.values():
        mem = phase["memory"]
        mem["activations_bytes"] = activations
        if mem["peak_allocated_bytes"] is not None:
            mem["optimizer_bytes"] = max(mem["update_peak_above_weights_bytes"], mem["held_after_backward_bytes"])
            mem["peak_minus_activations_bytes"] = mem["peak_allocated_bytes"] - mem["weights_bytes"] - activations
        else:  # CPU: no allocator statistics, only the counted tensors
            mem["optimizer_bytes"] = max(mem["held_after_backward_bytes"], mem["held_after_step_bytes"])
            mem["peak_minus_activations_bytes"] = None
    result = {
        "optimizer": args.worker, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": "tiny-llama" if args.tiny else "llama3-8b (random init)", "dtype": "bf16",
        "batch_size": args.batch_size, "seq_len": args.seq_len, "num_blocks": layers,
        "before_rev": args.before_rev if args.worker == "before" else None,
        "activation_checkpointing": args.worker != "ours_nockpt",
        "cudnn_sdp_enabled": torch.backends.cuda.cudnn_sdp_enabled() if device.type == "cuda" else None,
        "update_ratio": args.update_ratio if args.worker in RATIO_WORKERS else None,
        "parameters": sum(p.numel() for p in model.parameters()), "model_setup_s": setup_s, "phases": phases,
    }
    Path(args.worker_result).write_text(json.dumps(result, indent=2))
