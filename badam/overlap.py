"""Overlapped update (CUDA, opt-in): BlockOptimizer's update runs on a side stream while the next forward begins.

Why (issue 18; results/bench/multi_gpu_h100x2_policies): once backward has reached the active block, the GPU's only
work before the next forward is to average that block's gradient (data parallel: an all-reduce of 0.87 GB at Llama
3-8B, 5 ms of a 100 ms step at batch 2 x 728, exposed because only the active layer's own backward can hide it) and
to update the block (AdamW over 218M fp32 masters, about 8 ms). The next forward's layers below the updated block
need neither: only that block's forward does. ``optimizer.overlap_update(model)`` therefore queues the update (and,
under data parallelism, the wait for the all-reduce and the averaging) on a side CUDA stream in ``step()``, and makes
the main stream wait for it right before the updated block's module runs again.

Contract, once enabled (on CUDA; on a CPU nothing can run beside the main thread, so the update runs in ``step()``
as it would without overlap, and only the checks below apply):
  * ``step()`` returns once the update is queued. A one-shot forward pre-hook on each layer the updated block lies in
    (``model.layers.5`` for any of its parameters; outside the layer stack the parameters' own modules) makes the
    current stream wait for the update before that module runs. ``model.state_dict()``, ``optimizer.state_dict()`` /
    ``load_state_dict()``, ``zero_grad(set_to_none=False)``, ``release()``, a block switch that re-activates updated
    parameters, ``last_grad_norm`` and ``wait_for_update()`` wait too. Anything else that reads or writes the updated
    block's parameters (a functional call, a weight read outside its module's forward, an evaluation loop that
    bypasses the module) calls ``wait_for_update()`` first.
  * Under data parallelism (``process_group=``) ``p.grad`` holds the average only inside ``step()``, not when backward
    returns: the all-reduce is what overlaps. ``clip_grad_norm_`` waits for the average first (correct; the all-reduce
    then no longer overlaps); ``max_grad_norm=`` clips on the side stream instead, its norm in ``last_grad_norm``.
    The buckets' in-flight limit (``max_in_flight``) does not apply: every bucket stays in flight until the step.
  * Memory: the tensors the side stream uses (masters, gradients, optimizer states, all-reduce buffers) are recorded
    on it (``Tensor.record_stream``), so a block switch frees them for reuse only after the update has run; the peak
    can hold a freed block's states a little longer than without overlap.
Not available with FSDP2-sharded parameters, ``measure_rounding`` (it reads the weights at the switch) or
BlockOptimizerRatio. Where it overlaps less: ``active_modules`` (their weights, updated every step, are copied into new
masters at every switch, which waits for the update), and gradient accumulation in ``gradients="param"`` mode (the
update checks that p.grad is still the rounding of the fp32 sum, a comparison the host waits for; "master" mode has no
such check). What overlaps is what lies below the updated block in the next forward: a block near the input overlaps
little.

Under transformers 5.1x (whose layers checkpoint their own ``__call__``, hooks inside) the graphed checkpointing
policies call the pre-hook themselves before replaying the layer (it is marked ``graph_safe``, badam/layer_graphs.py);
until that mark, the hooked layer ran eagerly, and where it lay above the active block (in ascending order the last
block's update, seen from block 0) its eager call needed one more compiled variant of the layer (a one-time compile,
1.2 s on the 2 x H100 of results/bench/multi_gpu_h100x2_overlap). Under 5.2x the hook runs before the checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .frozen_shards import OVERLAP_CONFLICT
from .layer_graphs import graph_safe


class CudaSideStream:
    """The device operations UpdateOverlap needs, on one CUDA device (a test may pass an object with the same
    methods that records the calls instead)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device=device)

    def enter(self):
        """Context in which queued work runs on the side stream, after everything queued so far on the current one."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        return torch.cuda.stream(self.stream)

    def record(self):
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def wait(self, event) -> None:
        torch.cuda.current_stream(self.device).wait_event(event)

    def keep(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            if t.device.type == "cuda":
                t.record_stream(self.stream)


def block_modules(model: nn.Module, params: list[torch.Tensor], names: dict[int, str]) -> list[nn.Module]:
    """The modules whose forward must wait for an update of `params`: for a parameter inside a layer stack, the layer
    (the name up to its first index: ``model.layers.5.self_attn.q_proj.weight`` -> ``model.layers.5``), whatever the
    partition, because a graphed policy replays whole layers and a hook on a module inside one would not run in a
    replay; for any other parameter (embeddings, final norm, head) its own module."""
    modules: dict[int, nn.Module] = {}
    for p in params:
        parts = names[id(p)].split(".")
        index = next((k for k, part in enumerate(parts[:-1]) if part.isdigit()), None)
        path = ".".join(parts[:index + 1] if index is not None else parts[:-1])
        module = model.get_submodule(path) if path else model
        modules[id(module)] = module
    return list(modules.values())


class UpdateOverlap:
    """Queues updates on a side stream and guards the modules that read what they write (module docstring)."""

    def __init__(self, model: nn.Module, side=None):
        self.model, self.side = model, side
        self._event = None                         # the latest queued update (later ones imply earlier ones)
        self._pending_params: set[int] = set()     # ids of parameters a queued update writes
        self._hooks: dict[int, object] = {}        # id(module) -> its one-shot pre-hook handle
        self._model_hook = model.register_state_dict_pre_hook(lambda *args, **kwargs: self.wait())
        self.launched = self.waits = 0             # counters (tests and logs)
        self.last_grad_norm = None

    @property
    def pending(self) -> bool:
        return self._event is not None

    def run(self, update: Callable[[], object], *, writes: list[torch.Tensor], uses: Iterable[torch.Tensor],
            modules: list[nn.Module]):
        """Run `update` on the side stream (or at once without one), after recording on that stream every tensor of
        `uses` (allocated on other streams; the update may drop them, e.g. the all-reduce buffers, and a block switch
        frees the rest while the queued work has not run yet), and guard `modules`."""
        if self.side is None:
            return update()
        self.side.keep(uses)
        with self.side.enter():
            result = update()
        self._event = self.side.record()
        self._pending_params.update(id(p) for p in writes)
        for module in modules:
            if id(module) not in self._hooks:
                # first of the module's pre-hooks: any other may read the weights
                self._hooks[id(module)] = module.register_forward_pre_hook(self._before_forward, prepend=True)
        self.launched += 1
        return result

    @graph_safe  # a stream wait: a graphed policy may replay the layer after it
    def _before_forward(self, module, args):
        self.wait()

    def wait(self) -> None:
        """The current stream waits for every queued update (no host wait); the guards come off."""
        if self._event is None:
            return
        self.side.wait(self._event)
        self._event = None
        self._pending_params.clear()
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self.waits += 1

    def wait_if_writing(self, params: Iterable[torch.Tensor]) -> None:
        """Wait when a queued update writes one of `params` (a block switch about to copy them into new masters)."""
        if self._pending_params and any(id(p) in self._pending_params for p in params):
            self.wait()

    def close(self) -> None:
        self.wait()
        self._model_hook.remove()


class UpdateOverlapMixin:
    """BlockOptimizer's side of the overlapped update: ``overlap_update``, ``wait_for_update``, ``last_grad_norm`` and
    the waits its state dict, zero_grad and release make (``self._overlap`` is None until enabled)."""

    _overlap: UpdateOverlap | None = None
    _overlap_max_grad_norm: float | None = None

    def overlap_update(self, model: nn.Module, *, max_grad_norm: float | None = None, side=None) -> None:
        """Run every later update on a side CUDA stream, overlapping the next forward up to the updated block's module
        (module docstring of badam/overlap.py). `model`: the module whose named_parameters() built this optimizer.
        `max_grad_norm`: clip inside the update (on the side stream) to this total norm; its norm before clipping is
        ``last_grad_norm``. `side`: for tests, an object standing in for the CUDA stream."""
        if self._overlap is not None:
            raise RuntimeError("overlap_update: already enabled for this BlockOptimizer")
        if self.measure_rounding:
            raise ValueError("overlap_update does not work with measure_rounding=True (it reads the weights at every "
                             "block switch, before the overlapped update has run); turn one of them off")
        if any(hasattr(p, "_local_tensor") for p in self._all_params):
            raise ValueError("overlap_update is for a model replicated on every rank; these parameters are sharded "
                             "(FSDP2 DTensors), whose updates FSDP2 orders itself")
        if self.frozen_shards is not None:
            raise ValueError(f"overlap_update does not combine with shard_frozen_blocks ({OVERLAP_CONFLICT}): use one "
                             "of them")
        ours = {id(p) for p in self._all_params}
        theirs = {id(p) for p in model.parameters()}
        if not ours <= theirs:
            raise ValueError("overlap_update(model): `model` does not hold this optimizer's parameters; pass the "
                             "module whose named_parameters() the BlockOptimizer was built from")
        if max_grad_norm is not None and (isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float))
                                          or not max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a number > 0 or None, got {max_grad_norm!r}")
        if side is None:
            devices = {p.device for p in self._all_params}
            if len(devices) != 1:
                raise ValueError("overlap_update needs the parameters on one device, found "
                                 f"{sorted(map(str, devices))}")
            device = devices.pop()
            side = CudaSideStream(device) if device.type == "cuda" else None
        self._overlap_max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self._overlap = UpdateOverlap(model, side)
        if self._sync is not None:
            self._sync.defer_to_step = self.overlap_active

    @property
    def overlap_active(self) -> bool:
        """True when updates are queued on a side stream (overlap_update on CUDA); False without overlap, on a CPU."""
        return self._overlap is not None and self._overlap.side is not None

    def wait_for_update(self) -> None:
        """Make the current stream wait for a queued update (nothing to do without overlap or on a CPU)."""
        if self._overlap is not None:
            self._overlap.wait()

    @property
    def last_grad_norm(self) -> torch.Tensor | None:
        """The norm before clipping of the last update's gradients (overlap_update's max_grad_norm), once the current
        stream may read it; None before the first such update."""
        if self._overlap is None:
            return None
        if self._overlap.last_grad_norm is not None:
            self._overlap.wait()
        return self._overlap.last_grad_norm

    def _guarded_modules(self) -> list[nn.Module]:
        return block_modules(self._overlap.model, self._active_params, self._param_names)

    def _tensors_the_update_uses(self) -> list[torch.Tensor]:
        tensors = list(self._masters.masters) + list(self._masters.grad_tensors())
        for state in self.base_optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        if self._sync is not None:
            tensors += self._sync.tensors_in_flight()
        return tensors

    def _step_overlapped(self, update: Callable[[], None]) -> None:
        """step()'s update through the overlap: queued on the side stream with its clip (max_grad_norm)."""
        def clipped_update() -> None:
            if self._sync is not None:
                self._sync.before_step()
            if self._overlap_max_grad_norm is not None:
                self._overlap.last_grad_norm = self._masters.clip_grad_norm_(self._overlap_max_grad_norm)
            update()

        uses = self._tensors_the_update_uses() if self._overlap.side is not None else []
        self._overlap.run(clipped_update, writes=list(self._active_params), uses=uses, modules=self._guarded_modules())

    # --- waits before what reads or writes the queued update's tensors on the current stream ---------------------
    def state_dict(self) -> dict:
        self.wait_for_update()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.wait_for_update()
        super().load_state_dict(state_dict)


