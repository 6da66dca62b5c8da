"""CUDA graphs for the layers below BAdam's active block: their forward issued by one launch instead of dozens.

Why: below the active block nothing requires a gradient, so a layer there is a plain forward under no_grad (policy
"block" of badam.hf.enable_block_checkpointing runs it so). At small batches (issue 18: Llama 3-8B, batch 2 x 728 per
GPU) the host needs about as long to issue a layer's kernels as the GPU needs to run them, so these layers set the
step's pace, and on several GPUs each rank's host stalls reach the step. A CUDA graph replays the layer's recorded
kernels with one launch; the host is then free to run ahead.

How (policies "block-graphed" and "block-reentrant-graphed"; LayerGraphs.run is what badam.checkpointing's
block_checkpoint calls for such a layer, and with the latter also for the first forward of a layer above the active
block, which reentrant checkpointing runs under no_grad too):
    signature   the layer, its training flag, the addresses of its parameters and buffers, the autocast state, and
                each argument: a tensor by shape, strides, dtype and device, anything else by value (None, bool, int,
                float, str; a call with any other argument, e.g. a KV cache object, is never graphed); the
                arguments transformers binds into the partial it checkpoints (position embeddings, masks) count as
                arguments (call_parts), so a replay copies them in like the hidden states
    1st sight   the layer runs as it is (the signature is remembered)
    2nd sight   the arguments are copied into static tensors, the layer runs once on a side stream (warm-up; this is
                the call's result), and, unless that drew random numbers (dropout in train mode: a replay could not
                give the same numbers), it is recorded as a graph
    later       the arguments are copied into the static tensors, the graph is replayed, and a copy of its output is
                returned (the next replay overwrites the graph's own output)
The graph reads the parameters where they were when it was recorded; the addresses are part of the signature, so a
parameter given new storage gets a new graph, and values written in place (BAdam's update of a block that was active
before) are read as they are. The layer's forward must read nothing but its parameters, buffers and arguments (true
of transformers' decoder layers). All graphs share one memory pool for their intermediates (about one layer's working
memory); each holds its static inputs and output (about two activations per layer and signature); at most
`max_per_layer` signatures per layer are kept (the least recently used is dropped), so a stream of changing shapes
costs eager calls, not memory, and after RECORDINGS_PER_KEPT_GRAPH x `max_per_layer` recordings a layer runs as it
is. So does any other call that cannot be graphed: CPU tensors, a capture already under way, a failed capture, a
call through the layer's own __call__ while it has forward hooks (e.g. FSDP2's all-gather under transformers before
5.2x) other than those marked graph_safe (they run before the replay). A replay runs the kernels the
warm-up ran on the same values (tests/badam/test_layer_graphs.py compares losses and gradients with policy "block" on
a GPU).
"""
from __future__ import annotations

import functools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

_PLAIN = (type(None), bool, int, float, str)
# A layer stops being recorded after this many recordings per graph it may keep: where signatures keep changing
# (shapes of every batch, parameters given new storage at every step, e.g. FSDP2's re-gathered weights when they land
# elsewhere), recording would cost more host time than the replays save.
RECORDINGS_PER_KEPT_GRAPH = 4


def _clone(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def graph_safe(hook: Callable) -> Callable:
    """Mark a forward pre-hook that LayerGraphs.run may call itself and then replay the module's graph: the hook
    changes neither the arguments nor anything the graph reads, and a second call does nothing (e.g. the overlapped
    update's stream wait, badam/overlap.py). Unmarked hooks keep the call eager."""
    hook._graph_safe = True
    return hook


def hooks_left_after_graph_safe(module: nn.Module, args: tuple) -> bool:
    """Call `module`'s graph-safe forward pre-hooks (they may remove themselves); True when a hook is left that a
    replay would skip: any other pre-hook or forward hook. A call through the module's own __call__ runs its hooks,
    which a replay cannot (an eager call runs the graph-safe ones a second time, which does nothing)."""
    with_kwargs = module._forward_pre_hooks_with_kwargs
    safe = [key for key, hook in module._forward_pre_hooks.items()  # in the order __call__ would run them
            if getattr(hook, "_graph_safe", False) and key not in with_kwargs]
    for key in safe:
        hook = module._forward_pre_hooks.get(key)
        if hook is not None:  # an earlier one may have removed it
            hook(module, args)
    return bool(module._forward_hooks) or any(key not in safe for key in module._forward_pre_hooks)


def call_parts(function: Callable, args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
    """(callable, positional, keyword arguments) of ``function(*args, **kwargs)`` with a functools.partial's bound
    arguments made explicit: transformers binds a layer's keyword arguments (position embeddings, masks) into the
    partial it checkpoints, and a graph must copy those in at every replay like the others, not keep the tensors it
    was recorded with."""
    if isinstance(function, functools.partial):
        return function.func, (*function.args, *args), {**function.keywords, **kwargs}
    return function, args, kwargs


def call_signature(module: nn.Module, leaves: list, spec) -> tuple | None:
    """The key a graph of `module` called with the flattened arguments (`leaves`, `spec`; `module` itself may be
    among them) is stored under (module docstring), or None when the call cannot be graphed (an argument of another
    kind, no CUDA tensor argument, tensors on several devices)."""
    described, devices = [], set()
    for leaf in leaves:
        if leaf is module:
            described.append("module")
        elif isinstance(leaf, torch.Tensor):
            devices.add(leaf.device)
            described.append((tuple(leaf.shape), leaf.stride(), leaf.dtype))
        elif isinstance(leaf, _PLAIN):
            described.append((type(leaf), leaf))
        else:
            return None
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        return None
    storage = tuple(t.data_ptr() for t in module.parameters()) + tuple(t.data_ptr() for t in module.buffers())
    autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    return (module.training, storage, autocast, spec, next(iter(devices)), tuple(described))


class _Graph:
    __slots__ = ("graph", "inputs", "output")

    def __init__(self, graph, inputs: list[torch.Tensor], output):
        self.graph, self.inputs, self.output = graph, inputs, output


class LayerGraphs:
    """The graphs of one model's layers (module docstring). `counts`: calls by what happened to them ("replayed",
    "captured", "first_sight", "random_numbers", "capture_failed", "recording_budget_spent", "not_graphable");
    `capture_s`: host seconds spent warming up and recording."""

    def __init__(self, max_per_layer: int = 2):
        if isinstance(max_per_layer, bool) or not isinstance(max_per_layer, int) or max_per_layer < 1:
            raise ValueError(f"max_per_layer must be an integer >= 1 (signatures kept per layer), got "
                             f"{max_per_layer!r}")
        self.max_per_layer = max_per_layer
        self._graphs: dict[nn.Module, OrderedDict] = {}
        self._seen: dict[nn.Module, OrderedDict] = {}   # signatures seen once (bounded like the graphs)
        self._refused: dict[nn.Module, set] = {}         # signatures that drew random numbers or failed to record
        self._recorded: Counter = Counter()              # recordings per layer (bounded: RECORDINGS_PER_KEPT_GRAPH)
        self._pool = None
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self.counts: Counter = Counter()
        self.capture_s = 0.0
        self.last_error: str | None = None

    def stats(self) -> dict:
        return {"graphs": sum(len(g) for g in self._graphs.values()), "counts": dict(self.counts),
                "capture_s": round(self.capture_s, 3), "last_error": self.last_error}

    def clear(self) -> None:
        """Drop every graph (their memory returns to the caching allocator)."""
        self._graphs.clear()
        self._seen.clear()
        self._refused.clear()
        self._recorded.clear()
        self._pool = None

    def run(self, module: nn.Module, function: Callable, args: tuple, kwargs: dict):
        """`function(*args, **kwargs)` under no_grad, from a graph of `module` where one exists or can be made."""
        function, args, kwargs = call_parts(function, args, kwargs)
        with torch.no_grad():
            leaves, spec = tree_flatten((args, kwargs))
            key = call_signature(module, leaves, spec)
            hooks = getattr(function, "__self__", None) is module and hooks_left_after_graph_safe(module, args)
            if key is None or hooks or torch.cuda.is_current_stream_capturing():
                self.counts["not_graphable"] += 1
                return function(*args, **kwargs)
            graphs = self._graphs.setdefault(module, OrderedDict())
            entry = graphs.get(key)
            if entry is not None:
                graphs.move_to_end(key)
                self.counts["replayed"] += 1
                return self._replay(entry, leaves)
            if key in self._refused.get(module, ()):
                self.counts["not_graphable"] += 1
                return function(*args, **kwargs)
            seen = self._seen.setdefault(module, OrderedDict())
            if key not in seen:
                seen[key] = True
                if len(seen) > self.max_per_layer:
                    seen.popitem(last=False)
                self.counts["first_sight"] += 1
                return function(*args, **kwargs)
            del seen[key]
            if self._recorded[module] >= RECORDINGS_PER_KEPT_GRAPH * self.max_per_layer:
                self.counts["recording_budget_spent"] += 1
                return function(*args, **kwargs)
            self._recorded[module] += 1
            return self._capture(module, key, function, leaves, spec)

    @staticmethod
    def _replay(entry: _Graph, leaves: list):
        sources = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if entry.inputs:
            torch._foreach_copy_(entry.inputs, sources)
        entry.graph.replay()
        return tree_map(_clone, entry.output)

    def _capture(self, module: nn.Module, key: tuple, function: Callable, leaves: list, spec):
        start = time.perf_counter()
        device = key[4]
        current = torch.cuda.current_stream(device)
        static = [leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        s_args, s_kwargs = tree_unflatten(static, spec)
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        stream.wait_stream(current)
        generator = torch.cuda.default_generators[device.index or 0]
        offset = generator.get_offset()
        with torch.cuda.stream(stream):
            result = function(*s_args, **s_kwargs)  # warm-up on the recording stream: the call's own result
        drew_random = generator.get_offset() != offset
        graph, output = None, None
        if not drew_random:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.stream(stream):
                    graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                    try:
                        output = function(*s_args, **s_kwargs)
                    finally:
                        graph.capture_end()
            except RuntimeError as error:  # e.g. a host synchronisation inside the layer
                graph, self.last_error = None, f"{type(module).__name__}: {str(error).splitlines()[0][:200]}"
        current.wait_stream(stream)
        for tensor in tree_flatten(result)[0]:
            if isinstance(tensor, torch.Tensor):
                tensor.record_stream(current)  # made on the side stream, used on this one
        if graph is None:
            self._refused.setdefault(module, set()).add(key)
            self.counts["random_numbers" if drew_random else "capture_failed"] += 1
        else:
            if self._pool is None:
                self._pool = graph.pool()
            graphs = self._graphs[module]
            graphs[key] = _Graph(graph, [t for t in static if isinstance(t, torch.Tensor)], output)
            if len(graphs) > self.max_per_layer:
                graphs.popitem(last=False)
            self.counts["captured"] += 1
        self.capture_s += time.perf_counter() - start
        return result
