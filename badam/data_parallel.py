"""Data parallelism for BlockOptimizer: every rank holds the whole model, only the active block's gradient travels.

BAdam trains one block at a time, so under data parallelism only the active block has a gradient to average: the
frozen (bf16) weights need no communication at all when each rank holds a replica, and one step costs one all-reduce
of the active block's gradient (a Llama 3-8B layer: 218M parameters) instead of FSDP's all-gathers of the whole model
in forward and again in backward. This module does that averaging with torch.distributed collectives (NCCL on GPUs,
gloo on the CPU); ``BlockOptimizer(..., process_group=pg)`` uses it.

How a step's gradient is averaged (``BlockGradientSync``):
  * the active block's parameters are grouped into buckets of at most ``bucket_numel`` elements, matrices in reverse
    registration order (the order backward produces them) and 1-D tensors (norms, biases) in the last bucket, because
    a layer's first norm gets its gradient only at the very end of backward;
  * a post-accumulate-grad hook marks each parameter ready; a bucket whose parameters are all ready is all-reduced
    asynchronously at once, so the transfer overlaps the rest of the backward (buckets are launched strictly in
    bucket order, so every rank issues the same collectives in the same order);
  * at the end of the backward (an autograd final callback) the remaining buckets are launched, every bucket is
    awaited and written back divided by the world size (one kernel: the division is the copy back, except for a
    gradient all-reduced in place, which is divided where it lies), so that when ``loss.backward()`` returns ``p.grad``
    holds the average on every rank, as with torch's DistributedDataParallel: a clip or any edit of ``p.grad``
    before ``step()`` sees the same numbers on all ranks, and the replicas stay identical;
  * the gradient reduced is the one ``step()`` would use, in place where it lives: the bf16 ``p.grad`` after one
    backward, the fp32 sum under gradient accumulation (``p.grad`` then shows its rounding again), the fp32 master
    gradient in ``gradients="master"`` mode. ``reduce_dtype`` (default fp32) is the dtype on the wire: a bf16 gradient
    is widened into an fp32 bucket, summed and rounded back once, where a bf16 all-reduce would round every partial
    sum of the ring (N - 1 roundings on N ranks); bf16 halves the bytes;
  * ``no_sync()`` (DDP's name and meaning) skips the averaging for the backward passes of micro-batches that are not
    the last of a step: the last backward then averages the accumulated sum, one all-reduce per step. A ``step()``
    after backward passes that all ran inside ``no_sync()`` averages there (with a warning: anything that read
    ``p.grad`` before it saw this rank's local gradient);
  * a parameter that received no gradient on any rank keeps none (``step()`` skips it, as in one process); one that
    received one on some ranks only gets the average with zeros for the others. Which is which travels as one flag per
    parameter at the end of the last bucket when that bucket holds several tensors (a Llama layer's norm weights), so
    no collective is added; otherwise (a block of one tensor) as one small all-reduce of its own. The flags are read
    back (a device wait) only on a rank that lacked a gradient;
  * ``record_timing = True`` records, per syncing backward, CUDA events (on the CPU: clock readings) at the first
    launch, at the end of the backward's own work and once every gradient is averaged: ``take_timing()`` then gives
    the window the all-reduce could overlap and the exposed tail (benchmarks/multi_gpu.py reports both per rank).

Every rank must run the same number of backward passes through the active block per step (as with DDP); a rank whose
backward never reaches the active block would leave the others waiting. The fp32 master and AdamW states of the
active block are replicated: each rank runs the same update on the same averaged gradient, so no weights travel after
the step (why not ZeRO-1 sharding of those states: README, multi-GPU section).
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from typing import Any

import torch

from .mixed_precision import FP32MasterWeights

DEFAULT_BUCKET_NUMEL = 25_000_000  # 100 MB of fp32 per bucket: a Llama 3-8B layer's 218M parameters make 6 buckets
REDUCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Buckets whose all-reduce may be pending during backward before the oldest is completed, which makes the compute
# stream wait for it: bounds the extra flat buffers (a bucket of several tensors is copied; a lone tensor goes on the
# wire in place). More lets the backward run on while the wire catches up (benchmarks/multi_gpu.py --max-in-flight).
MAX_IN_FLIGHT = 2


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group needs an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group, e.g. under torchrun)")
    return dist


def resolve_reduce_dtype(value: Any) -> torch.dtype:
    """torch.float32 / torch.bfloat16 or their names "fp32" / "bf16"."""
    if isinstance(value, str) and value in REDUCE_DTYPES:
        return REDUCE_DTYPES[value]
    if value in REDUCE_DTYPES.values():
        return value
    raise ValueError(f"reduce_dtype {value!r} is not valid; choose one of {', '.join(REDUCE_DTYPES)} "
                     "(or torch.float32 / torch.bfloat16)")


class _Bucket:
    """Indices (into the masters) of the parameters all-reduced together, their offsets in the flat buffer, and how
    many presence flags follow the gradients in the buffer (the last bucket of several tensors carries them)."""

    __slots__ = ("members", "offsets", "numel", "flags")

    def __init__(self, members: list[int], sizes: list[int]):
        self.members = members
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        self.numel = sum(sizes)
        self.flags = 0


class _InFlight:
    """A launched all-reduce: its bucket, buffer (the gradient itself when in place) and the gradients it came from."""

    __slots__ = ("bucket", "buffer", "in_place", "grads", "work")

    def __init__(self, bucket, buffer, in_place, grads, work):
        self.bucket, self.buffer, self.in_place, self.grads, self.work = bucket, buffer, in_place, grads, work


class BlockGradientSync:
    """Averages the gradients of one FP32MasterWeights (the active block) over a process group; see the module
    docstring. ``attach`` at every block switch, ``detach`` before the block's masters are released."""

    def __init__(self, process_group, *, reduce_dtype: Any = torch.float32,
                 bucket_numel: int = DEFAULT_BUCKET_NUMEL, max_in_flight: int = MAX_IN_FLIGHT):
        dist = _dist()
        self.dist = dist
        self.group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self.reduce_dtype = resolve_reduce_dtype(reduce_dtype)
        if isinstance(bucket_numel, bool) or not isinstance(bucket_numel, int) or bucket_numel < 1:
            raise ValueError(f"bucket_numel must be an integer >= 1 (elements per all-reduce), got {bucket_numel!r}")
        self.bucket_numel = bucket_numel
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an integer >= 1 (all-reduces pending during backward), got "
                             f"{max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self._masters: FP32MasterWeights | None = None
        self._buckets: list[_Bucket] = []
        self._hooks: list = []
        self._syncing = True
        self._reset_backward()
        self.unreduced = False  # a no_sync backward left gradients that no reduction has averaged yet
        self.reductions = 0     # completed averagings (tests and logs)
        self._warned_late = False
        self.record_timing = False  # see take_timing()
        self._timing: dict | None = None
        # badam/overlap.py: the end of backward only launches what is left; before_step() (run on the side stream by
        # the overlapped update) or finish_deferred() waits and averages, and no in-flight limit applies
        self.defer_to_step = False

    # --- one-time agreement between ranks ------------------------------------------------------------------------
    def _source_rank(self) -> int:
        """Global rank of the group's rank 0 (broadcast takes global ranks)."""
        return self.dist.get_global_rank(self.group, 0) if self.group is not None else 0

    def broadcast_object(self, obj):
        """Rank 0's `obj` (picklable) on every rank of the group."""
        box = [obj]
        self.dist.broadcast_object_list(box, src=self._source_rank(), group=self.group,
                                        device=self._object_device())
        return box[0]

    def _object_device(self):
        backend = self.dist.get_backend(self.group)
        return torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(backend) else torch.device("cpu")

    @torch.no_grad()
    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` (the model's parameters) with rank 0's values, one broadcast per tensor, in place."""
        for t in tensors:
            self.dist.broadcast(t.data, src=self._source_rank(), group=self.group)

    def check_same_everywhere(self, fields: dict[str, Any]) -> None:
        """Raise ValueError naming the first field whose value differs between this rank and rank 0 (model
        architecture, block partition, schedule...): a mismatch would otherwise hang or silently diverge."""
        digests = {key: hashlib.sha256(repr(value).encode()).hexdigest() for key, value in fields.items()}
        everyone = [None] * self.world_size
        self.dist.all_gather_object(everyone, digests, group=self.group)
        for rank, theirs in enumerate(everyone):
            for key in fields:
                if theirs.get(key) != everyone[0].get(key):
                    raise ValueError(f"data-parallel BlockOptimizer: rank {rank} differs from rank 0 in {key}; every "
                                     "rank must build the same model and the same BlockOptimizer arguments")

    # --- the active block --------------------------------------------------------------------------------------
    def attach(self, masters: FP32MasterWeights) -> None:
        """Take over the gradients of a new active block: buckets and hooks (after FP32MasterWeights' own hooks,
        so each hook sees the gradient already folded where step() reads it)."""
        self.detach()
        self._masters = masters
        params = masters.params
        matrices = [i for i in reversed(range(len(params))) if params[i].dim() > 1]
        vectors = [i for i in reversed(range(len(params))) if params[i].dim() <= 1]
        self._buckets = []
        for group in (matrices, vectors):
            current: list[int] = []
            for i in group:
                if current and sum(params[j].numel() for j in current) + params[i].numel() > self.bucket_numel:
                    self._buckets.append(_Bucket(current, [params[j].numel() for j in current]))
                    current = []
                current.append(i)
            if current:
                self._buckets.append(_Bucket(current, [params[j].numel() for j in current]))
        # a bucket of several tensors is always copied into a flat buffer: the presence flags ride along at no cost.
        # Decided from the partition alone, which every rank shares, so every rank issues the same collectives.
        if self._buckets and len(self._buckets[-1].members) > 1:
            self._buckets[-1].flags = len(params)
        self._hooks = [p.register_post_accumulate_grad_hook(self._ready_hook(i)) for i, p in enumerate(params)]
        self._reset_backward()
        self.unreduced = False

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for entry in self._in_flight:  # an interrupted backward: collect what was started
            entry.work.wait()
        self._reset_backward()
        self._masters = None
        self._buckets = []

    def _reset_backward(self) -> None:
        self._callback_queued = False
        self._ready: set[int] = set()
        self._next_launch = 0
        self._in_flight: list[_InFlight] = []
        self._missing_local: list[int] = []
        self._pending_missing: dict[int, torch.Tensor] = {}  # averages for parameters this rank had no gradient for
        self._presence: torch.Tensor | None = None  # per parameter: > 0 where some rank had a gradient
        self._presence_work = None  # its own all-reduce when no bucket carries the flags
        self._deferred = False  # defer_to_step: this backward's all-reduces are in flight, to be averaged in step()
        self._marks: dict[str, Any] = {}  # record_timing: events (CUDA) or clock readings (CPU) of this backward

    @property
    def buckets(self) -> list[list[int]]:
        """Indices (into the masters) of each bucket, in launch order."""
        return [list(b.members) for b in self._buckets]

    # --- during backward -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate locally; the first backward outside averages the sum."""
        previous, self._syncing = self._syncing, False
        try:
            yield
        finally:
            self._syncing = previous

    def _ready_hook(self, index: int):
        def on_gradient(_param: torch.Tensor) -> None:
            if not self._syncing:
                self.unreduced = True
                return
            if not self._callback_queued:
                self.finish_deferred()  # a second syncing backward before step(): average the first one's now
                self._reset_backward()
                self._callback_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            self._ready.add(index)
            self._launch_ready_buckets()

        return on_gradient

    def _launch_ready_buckets(self) -> None:
        while self._next_launch < len(self._buckets) and \
                all(i in self._ready for i in self._buckets[self._next_launch].members):
            if self.record_timing and "first_launch" not in self._marks:
                self._mark("first_launch")
            self._launch(self._buckets[self._next_launch], in_backward=True)
            self._next_launch += 1
            if len(self._in_flight) > self.max_in_flight and not self.defer_to_step:
                self._complete(self._in_flight.pop(0))

    def _held(self, index: int, in_backward: bool) -> torch.Tensor | None:
        # inside a backward no user code ran since FP32MasterWeights wrote p.grad: its identity suffices
        return self._masters.held_grad(index, check_values=not in_backward)

    def _launch(self, bucket: _Bucket, in_backward: bool) -> None:
        params = self._masters.params
        grads = [self._held(i, in_backward and i in self._ready) for i in bucket.members]
        self._missing_local += [i for i, g in zip(bucket.members, grads) if g is None]
        only = grads[0] if len(grads) == 1 else None
        if only is not None and only.dtype == self.reduce_dtype and only.is_contiguous():
            buffer, in_place = only, True  # the gradient itself goes on the wire: no copy, no extra memory
        else:
            buffer = torch.empty(bucket.numel + bucket.flags, dtype=self.reduce_dtype,
                                 device=params[bucket.members[0]].device)
            in_place = False
            for i, offset, g in zip(bucket.members, bucket.offsets, grads):
                part = buffer[offset:offset + params[i].numel()]
                if g is None:
                    part.zero_()
                else:
                    part.copy_(g.reshape(-1))
            if bucket.flags:  # the last bucket: every earlier one was launched, so _missing_local is complete
                self._write_presence(buffer[bucket.numel:])
        work = self.dist.all_reduce(buffer, group=self.group, async_op=True)
        self._in_flight.append(_InFlight(bucket, buffer, in_place, grads, work))

    def _write_presence(self, flags: torch.Tensor) -> None:
        """1 per parameter that has a gradient on this rank, 0 where it has none (summed over the ranks)."""
        flags.fill_(1.0)
        if self._missing_local:
            flags[torch.tensor(self._missing_local, device=flags.device)] = 0.0

    @torch.no_grad()
    def _complete(self, entry: _InFlight) -> None:
        entry.work.wait()  # NCCL: the current stream waits for the collective; gloo: the CPU waits
        params, ranks = self._masters.params, self.world_size
        if entry.in_place:
            entry.buffer.div_(ranks)
        for i, offset, g in zip(entry.bucket.members, entry.bucket.offsets, entry.grads):
            summed = entry.buffer[offset:offset + params[i].numel()].view_as(params[i])
            if g is None:
                self._pending_missing[i] = summed / ranks
                continue
            if not entry.in_place:
                # divided in the wire dtype and cast into the gradient by one kernel: the same numbers as dividing
                # the buffer and copying it back, one pass over the buffer fewer
                torch.div(summed, ranks, out=g)
            self._masters.show_grad(i)
        if entry.bucket.flags:
            self._presence = entry.buffer[entry.bucket.numel:]

    @torch.no_grad()
    def _end_of_backward(self) -> None:
        """Autograd final callback of a syncing backward: launch what is left, wait for everything, write back."""
        self._callback_queued = False
        if self.record_timing:
            self._mark("backward_done")
        if self.defer_to_step:
            self._launch_rest(in_backward=True)
            self._deferred = True
            return
        self._reduce_all(in_backward=True)

    def finish_deferred(self) -> None:
        """Wait for and average a backward's all-reduces left in flight for step() (defer_to_step), on the current
        stream; nothing to do otherwise."""
        if self._deferred:
            with torch.no_grad():
                self._finish(in_backward=True)

    def tensors_in_flight(self) -> list[torch.Tensor]:
        """The buffers of the all-reduces not yet averaged (the overlapped update records them on its stream)."""
        flags = [self._presence] if self._presence is not None else []
        return [entry.buffer for entry in self._in_flight] + flags

    def _reduce_all(self, in_backward: bool) -> None:
        self._launch_rest(in_backward)
        self._finish(in_backward)

    def _launch_rest(self, in_backward: bool) -> None:
        while self._next_launch < len(self._buckets):
            self._launch(self._buckets[self._next_launch], in_backward)
            self._next_launch += 1
        if not self._buckets or not self._buckets[-1].flags:
            # no bucket carries the presence flags: one small all-reduce of them, issued by every rank alike
            device = self._masters.params[0].device if self._masters.params else torch.device("cpu")
            self._presence = torch.empty(len(self._masters.params), dtype=torch.float32, device=device)
            self._write_presence(self._presence)
            self._presence_work = self.dist.all_reduce(self._presence, group=self.group, async_op=True)

    def _finish(self, in_backward: bool) -> None:
        for entry in self._in_flight:
            self._complete(entry)
        if self._presence_work is not None:
            self._presence_work.wait()
        if self._missing_local:  # read back only here: the read waits for the device
            counts = self._presence.cpu()
            for i in self._missing_local:
                if counts[i] > 0:  # another rank had one: this rank takes the average too
                    self._masters.set_grad(i, self._pending_missing[i])
        if self.record_timing and in_backward:
            self._mark("averaged")
            self._timing = self._marks
        self._reset_backward()
        self.unreduced = False
        self.reductions += 1

    # --- timing (record_timing) ----------------------------------------------------------------------------------
    def _mark(self, name: str) -> None:
        device = self._masters.params[0].device if self._masters and self._masters.params else None
        if device is not None and device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # on the current stream: reached once the work queued before it is done
            self._marks[name] = event
        else:
            self._marks[name] = time.perf_counter()

    def take_timing(self) -> dict[str, float] | None:
        """Milliseconds of the last syncing backward (record_timing must be on; call after the device is synchronised),
        then forgets them: ``reduce_window_ms`` from the first bucket's launch to the end of the backward's own work
        (what the all-reduce could overlap; 0 when every bucket waited for the end) and ``reduce_tail_ms`` from there
        until every gradient is averaged (the exposed all-reduce, waiting for the slowest rank included). None when
        no syncing backward ran since the last call."""
        marks, self._timing = self._timing, None
        if not marks:
            return None

        def between(a: str, b: str) -> float:
            start, end = marks[a], marks[b]
            if not hasattr(start, "elapsed_time"):
                return (end - start) * 1000.0
            end.synchronize()  # "averaged" may lie on the overlapped update's stream, which nothing else waited for
            return start.elapsed_time(end)

        window = between("first_launch", "backward_done") if "first_launch" in marks else 0.0
        return {"reduce_window_ms": window, "reduce_tail_ms": between("backward_done", "averaged")}

    # --- at the update -----------------------------------------------------------------------------------------
    def before_step(self) -> None:
        """Average what a deferred backward left in flight, and average now if the last backward passes all ran
        inside no_sync() (replicas must not diverge)."""
        self.finish_deferred()
        if not self.unreduced:
            return
        if not self._warned_late:
            self._warned_late = True
            warnings.warn("BlockOptimizer (data parallel): every backward since the last step ran inside no_sync(), "
                          "so the gradients were averaged in step(); a clip or any read of p.grad before step() saw "
                          "this rank's local gradient. Run the last micro-batch's backward outside no_sync(). "
                          "(Warned once.)", stacklevel=3)
        self._reset_backward()
        with torch.no_grad():
            self._reduce_all(in_backward=False)

    def gradients_dropped(self) -> None:
        """zero_grad(): nothing is left to average (all-reduces still in flight are completed, then forgotten)."""
        self.finish_deferred()
        self.unreduced = False


class DataParallelMixin:
    """BlockOptimizer's data-parallel side: ``enable_data_parallel``, ``no_sync`` and the calls its block switch, step
    and zero_grad make (``self._sync`` is None on one process)."""

    _sync: BlockGradientSync | None = None

    def enable_data_parallel(self, process_group=None, *, reduce_dtype: Any = "fp32",
                             bucket_numel: int = DEFAULT_BUCKET_NUMEL, broadcast_weights: bool = True,
                             max_in_flight: int = MAX_IN_FLIGHT) -> None:
        """Average the active block's gradients over `process_group` (None: the default group) from now on; what
        ``BlockOptimizer(..., process_group=pg)`` calls. Call it on every rank, before the first backward.

        Rank 0's block schedule (generator state, order, position) is adopted by every rank, and with
        ``broadcast_weights`` (default) rank 0's parameters too (one broadcast per tensor, as DDP does at
        construction), so the replicas start identical; then every rank checks that its parameters' names, shapes and
        dtypes, its partition and its schedule match rank 0's (ValueError naming the difference)."""
        if self._sync is not None:
            raise RuntimeError("enable_data_parallel: this BlockOptimizer is already data parallel")
        if self._frozen_shards is not None:
            raise RuntimeError("enable_data_parallel must come before shard_frozen_blocks (the shards are cut per "
                               "rank)")
        if self.global_step or self.base_optimizer.state or self.gradient_tensors():
            raise RuntimeError("enable_data_parallel must be called before the first backward and step (every rank "
                               "must start from the same weights and the same gradients)")
        if any(hasattr(p, "_local_tensor") for p in self._all_params):
            raise ValueError("process_group is for a model replicated on every rank; these parameters are sharded "
                             "(FSDP2 DTensors), whose gradients FSDP2 already averages: leave process_group unset")
        sync = BlockGradientSync(process_group, reduce_dtype=reduce_dtype, bucket_numel=bucket_numel,
                                 max_in_flight=max_in_flight)  # when ranks differ here only waits move, not values
        schedule = sync.broadcast_object({"generator": self._generator.get_state(), "order": list(self._order),
                                          "order_pos": self._order_pos})
        reorder = schedule["order"] != self._order
        self._generator.set_state(schedule["generator"])
        self._order, self._order_pos = list(schedule["order"]), schedule["order_pos"]
        if broadcast_weights:
            sync.broadcast_tensors(self._all_params)
        sync.check_same_everywhere({
            "parameter names, shapes and dtypes": [(self._param_names[id(p)], tuple(p.shape), str(p.dtype))
                                                   for p in self._all_params],
            "block partition": self.block_prefix_list, "active_modules": self.active_modules,
            "schedule": (self.switch_mode, self.switch_block_every, self._order, self._order_pos),
            "gradients mode": self.gradients, "reduce dtype and buckets": (str(sync.reduce_dtype), bucket_numel)})
        self._sync = sync
        sync.defer_to_step = getattr(self, "overlap_active", False)  # badam/overlap.py, when enabled first
        if reorder and self.switch_mode == "random":
            self._report({"event": "order", "block_epoch": self.block_epoch, "order": self._order})
        self._activate(self.current_block, event=None)  # masters again, from the (broadcast) weights; hooks on

    @property
    def process_group(self):
        """The process group the gradients are averaged over (None on one process)."""
        return self._sync.group if self._sync is not None else None

    @property
    def gradient_sync(self) -> BlockGradientSync | None:
        return self._sync

    def no_sync(self):
        """Context manager: backward passes inside it are not averaged (the micro-batches of a step but the last,
        as with DDP's no_sync); a no-op on one process."""
        return self._sync.no_sync() if self._sync is not None else contextlib.nullcontext()
