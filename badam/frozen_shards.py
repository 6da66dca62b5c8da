"""Frozen blocks sharded over the data-parallel ranks: each rank stores 1/N of the weights BAdam is not training.

Under data parallelism (badam/data_parallel.py) every rank holds the whole model. That is the fastest layout while the
bf16 weights fit one GPU; when they do not (Llama 3-70B: 141 GB), the frozen blocks can be sharded instead of the
whole model going to FSDP2. BAdam needs far less than FSDP2 gives: frozen weights never get gradients, and the active
block is small enough to replicate, so only forward passes need the frozen weights, and only as a whole layer at a
time. What this module does (``BlockOptimizer.shard_frozen_blocks(model)``):
  * a *unit* is the module a block's name prefix names (``model.layers.3``): its parameters are laid out, per dtype,
    in one flat buffer padded to a multiple of N, and rank r keeps elements [r*S, (r+1)*S) of it; the Parameter
    objects stay in the model (same names, same identity for optimizers) with empty storage while sharded;
  * before a unit's forward (a forward pre-hook) the flat buffer is all-gathered (one collective per unit and dtype,
    where FSDP2 handles each of a Llama layer's 9 weights on its own) and the module's parameters are replaced by
    views of it (wrapped as Parameters) for that call only; after the call (a forward hook) the Parameters are put
    back, and a hook on the unit's output gradient installs them again before its backward. Nothing is copied
    in or out: the gathered buffer lives as long as autograd keeps a view of it, so with activation checkpointing a
    frozen layer's weights are freed after its forward and gathered again when backward recomputes it, and without
    checkpointing a layer backward passes through keeps them until its backward is done. On one rank the shard is
    the whole buffer and nothing is gathered;
  * the next units' all-gathers are issued while the current one computes (``prefetch``: how many units ahead,
    asynchronous collectives): the next ones up in forward, the next ones down in backward's recomputation, but
    never below the lowest trained unit (backward stops there), and the first ones at the end of backward, for the
    next step. ``gather_stream=True`` issues them on CUDA from a side stream, so an all-gather waits only for the
    previous one, not for the compute queued before it (torch.distributed's collectives wait for the current stream
    first); the buffer then lives in that stream's memory pool and is recorded on the compute stream that reads it.
    Off by default: on 2 x H100 (Llama 3-8B, batch 2 x 728, compiled layers) it made the step slower, 22,011-22,064
    against 22,665-22,743 tokens/s, the host's forward 51 against 37-44 ms (two units ahead: 22,283-22,393);
  * the active block's units are *pinned*: gathered once at the switch, their parameters hold the whole weights, the
    block trains exactly as under plain data parallelism (replicated masters and states, averaged gradient), and at
    the next switch each rank cuts its shard out of the updated weights (every rank holds the same update, so no
    communication). Units of ``active_modules`` stay pinned.
Parameters outside any unit (embeddings and head when they are no block, norms, tied weights) stay replicated. CUDA
graphs of the graphed checkpointing policies need fixed weight addresses and are not supported; the overlapped update
is not supported either (it would write weights a switch is about to cut into shards).
State dicts: ``gathered_state_dict`` (the whole model, unit by unit, on CPU on rank 0) and ``load_gathered_state_dict``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from .checkpointing import first_requiring_grad

# Why shard_frozen_blocks and overlap_update exclude each other (both orders refuse; badam/overlap.py is the other)
OVERLAP_CONFLICT = "the queued update would write weights a block switch cuts into shards"


@dataclasses.dataclass
class _Flat:
    """The parameters of one unit that share a dtype, in registration order, as one padded flat buffer."""

    dtype: torch.dtype
    slots: list  # (owner module, attribute name, Parameter)
    offsets: list[int]
    shapes: list  # the parameters' shapes (a sharded Parameter's own storage is empty)
    total: int   # elements without the padding
    shard: torch.Tensor | None = None  # this rank's part while the unit is sharded
    installed: tuple | None = None  # (buffer, its weights as Parameters): reused while the buffer is the same (1 rank)

    def padded(self, world: int) -> int:
        return -(-self.total // world) * world


@dataclasses.dataclass
class _Unit:
    name: str
    module: nn.Module
    index: int  # position in forward order
    flats: list[_Flat]
    pinned: bool = False
    installed: str | None = None  # "forward" / "backward": the module holds views of the gathered weights now

    def params(self) -> list[nn.Parameter]:
        return [p for flat in self.flats for _, _, p in flat.slots]


def _in_backward() -> bool:
    """Whether this code runs inside autograd's backward (a checkpoint's recomputation)."""
    return torch._C._current_graph_task_id() != -1


class FrozenBlockShards:
    """The sharding of one model's frozen units over `process_group` (module docstring). Built by
    ``BlockOptimizer.shard_frozen_blocks``; `units` are (name, module) in forward order; `active` the parameters
    trained now (their units stay whole); `distributed=False`: one rank, whatever the default group."""

    def __init__(self, units: list[tuple[str, nn.Module]], active: Iterable[torch.Tensor], process_group=None,
                 *, prefetch: int = 1, gather_stream: bool = False, distributed: bool = True, place=None):
        self.group = process_group
        distributed = distributed and dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size(process_group) if distributed else 1
        self.rank = dist.get_rank(process_group) if distributed else 0
        self.units = [_Unit(name, module, i, self._layout(module)) for i, (name, module) in enumerate(units)]
        self.device = torch.device("cpu")
        self._pending: dict[int, tuple] = {}  # unit index -> (works, gathered buffers, side stream or None): ahead
        self._side: torch.cuda.Stream | None = None  # the prefetches' stream on CUDA (gather_stream)
        self._shards_changed = True  # shards written on the compute stream since the side stream last waited for it
        self._unit_of = {id(p): u for u in self.units for p in u.params()}
        self._end_queued = False
        self._state_dict_ok = False  # set while gathered_state_dict / load_gathered_state_dict read or load the rest
        self.gathers = 0  # all-gathers issued (a unit's dtypes count once): what tests and benchmarks read
        self.prefetched = 0  # of them, issued ahead and used when their unit ran
        active_ids = {id(p) for p in active}
        self._hooks = []
        for unit in self.units:
            if place is not None:  # built on the meta device or the CPU: whole on its device one unit at a time
                for sub, module in unit.module.named_modules():
                    place(f"{unit.name}.{sub}" if sub else unit.name, module)
            self.device = unit.params()[0].device
            if any(id(p) in active_ids for p in unit.params()):
                unit.pinned = True
            else:
                self._shard(unit)
            self._hooks.append(unit.module.register_forward_pre_hook(self._pre_hook(unit)))
            self._hooks.append(unit.module.register_forward_hook(self._post_hook(unit), always_call=True))
            self._hooks.append(unit.module.register_state_dict_post_hook(self._refuse_state_dict(unit)))
            self._hooks.append(unit.module.register_load_state_dict_pre_hook(self._refuse_state_dict(unit)))
        self.prefetch = int(prefetch) if self.world > 1 else 0
        self.gather_stream = gather_stream

    # --- layout --------------------------------------------------------------------------------------------------
    @staticmethod
    def _layout(module: nn.Module) -> list[_Flat]:
        flats: dict[torch.dtype, _Flat] = {}
        for owner in module.modules():
            for attr, p in owner._parameters.items():
                if p is None:
                    continue
                flat = flats.setdefault(p.dtype, _Flat(p.dtype, [], [], [], 0))
                flat.slots.append((owner, attr, p))
                flat.offsets.append(flat.total)
                flat.shapes.append(p.shape)
                flat.total += p.numel()
        return list(flats.values())

    def _shard(self, unit: _Unit) -> None:
        """Cut this rank's part out of the unit's whole weights and free them (their Parameters keep no storage)."""
        for flat in unit.flats:
            size = flat.padded(self.world) // self.world
            with torch.no_grad():
                whole = torch.cat([p.detach().reshape(-1) for _, _, p in flat.slots]
                                  + [torch.zeros(flat.padded(self.world) - flat.total, dtype=flat.dtype,
                                                 device=self.device)])
            flat.shard = whole if self.world == 1 else whole[self.rank * size:(self.rank + 1) * size].clone()
            flat.installed = None
            for _, _, p in flat.slots:
                p.data = torch.empty(0, dtype=flat.dtype, device=self.device)
        unit.pinned = False
        self._shards_changed = True
        self._pending.pop(unit.index, None)

    def _gather(self, unit: _Unit, async_op: bool = False):
        """The unit's whole flat buffers: (works or None, [buffer per dtype], side stream or None)."""
        if self.world == 1:
            return None, [flat.shard for flat in unit.flats], None
        side = self._side_stream() if async_op else None
        buffers, works = [], []
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for flat in unit.flats:
                out = torch.empty(flat.padded(self.world), dtype=flat.dtype, device=self.device)
                works.append(dist.all_gather_into_tensor(out, flat.shard, group=self.group, async_op=async_op))
                buffers.append(out)
        self.gathers += 1
        return (works if async_op else None), buffers, side

    def _side_stream(self) -> torch.cuda.Stream | None:
        if not self.gather_stream or self.device.type != "cuda":
            return None
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        if self._shards_changed:  # a shard cut or loaded on the compute stream must be written before it is sent
            self._side.wait_stream(torch.cuda.current_stream(self.device))
            self._shards_changed = False
        return self._side

    def _gathered(self, unit: _Unit) -> list[torch.Tensor]:
        pending = self._pending.pop(unit.index, None)
        if pending is None:
            return self._gather(unit)[1]
        works, buffers, side = pending
        self.prefetched += 1
        for work in works:
            work.wait()  # on CUDA: the compute stream waits for the all-gather's stream
        if side is not None:  # freed only once the compute stream is done with it, not when the side stream is
            for buffer in buffers:
                buffer.record_stream(torch.cuda.current_stream(self.device))
        return buffers

    @staticmethod
    def _views(flat: _Flat, buffer: torch.Tensor):
        pieces = buffer.split_with_sizes([s.numel() for s in flat.shapes] + [buffer.numel() - flat.total])
        for (owner, attr, p), piece, shape in zip(flat.slots, pieces, flat.shapes):
            yield owner, attr, p, piece.view(shape)

    def _weights(self, flat: _Flat, buffer: torch.Tensor) -> list:
        """The weights to install from `buffer`, as Parameters (Dynamo then sees the same graph inputs as for a
        module's own weights); made once per buffer, so on one rank, where the buffer is the shard, only once."""
        if flat.installed is None or flat.installed[0] is not buffer:
            flat.installed = (buffer, [(owner, attr, nn.Parameter(view, requires_grad=False))
                                       for owner, attr, _, view in self._views(flat, buffer)])
        return flat.installed[1]

    # --- the hooks ------------------------------------------------------------------------------------------------
    # A unit's weights are installed (its module's parameters replaced by views of the gathered buffer) around its
    # forward, and again from just before its backward (a hook on its output's gradient, which autograd runs before
    # any node of the unit, so before a checkpoint recomputes it, whether the checkpoint wraps the module's call or
    # only its forward) until the backward of the unit below begins or the backward ends.
    def _install(self, unit: _Unit, how: str) -> None:
        if unit.installed:
            return
        for flat, buffer in zip(unit.flats, self._gathered(unit)):
            for owner, attr, weight in self._weights(flat, buffer):
                owner._parameters[attr] = weight
            if self.world > 1:
                flat.installed = None  # the next gather makes a new buffer: this one is freed when autograd is done
        unit.installed = how

    @staticmethod
    def _restore(unit: _Unit) -> None:
        for flat in unit.flats:
            for owner, attr, p in flat.slots:
                owner._parameters[attr] = p
        unit.installed = None

    def _pre_hook(self, unit: _Unit):
        def gather_before_forward(_module, _args):
            if unit.installed:  # a recomputation inside backward: installed by the hook on the output's gradient
                return
            if not unit.pinned:
                self._install(unit, "forward")
            if self.prefetch and not _in_backward():
                self._prefetch(range(unit.index + 1, unit.index + 1 + self.prefetch))  # also from the active unit
        return gather_before_forward

    def _post_hook(self, unit: _Unit):
        def restore_after_forward(_module, _args, output):
            if unit.pinned or unit.installed != "forward":
                return
            self._restore(unit)
            if torch.is_grad_enabled() and not _in_backward():
                tensor = first_requiring_grad((output,))
                if tensor is not None:  # backward reaches this unit and may recompute it
                    tensor.register_hook(self._pre_backward_hook(unit))
        return restore_after_forward

    def _pre_backward_hook(self, unit: _Unit):
        def gather_before_backward(grad):
            for other in self.units:
                if other.installed == "backward" and other is not unit:
                    self._restore(other)  # its backward is done: the gradient of its input has arrived here
            if not self._end_queued:
                self._end_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            if not unit.pinned:
                self._install(unit, "backward")
            lowest = min((u.index for u in self.units if u.pinned), default=None)
            if self.prefetch and lowest is not None:  # recomputation runs top-down, down to the lowest trained unit
                self._prefetch(range(unit.index - 1, max(lowest, unit.index - 1 - self.prefetch), -1))
            return grad
        return gather_before_backward

    def _end_of_backward(self) -> None:
        self._end_queued = False
        for unit in self.units:
            if unit.installed == "backward":
                self._restore(unit)
        if self.prefetch:  # the next forward starts at the lowest unit (a switch that pins it uses the gather too)
            self._prefetch(range(self.prefetch))

    def _refuse_state_dict(self, unit: _Unit):
        def refuse(*_args):
            if not unit.pinned and not self._state_dict_ok:  # its parameters hold no weights: never save or load them
                raise RuntimeError(f"{unit.name}: this block's weights are sharded over the ranks (BlockOptimizer."
                                   "shard_frozen_blocks), so model.state_dict() / load_state_dict() cannot see them; "
                                   "call optimizer.frozen_shards.gathered_state_dict(model) / load_gathered_state_dict("
                                   "model, state) on every rank, or optimizer.release() to make the model whole")
        return refuse

    def _prefetch(self, indices: Iterable[int]) -> None:
        for index in indices:
            if 0 <= index < len(self.units) and not self.units[index].pinned and not self.units[index].installed \
                    and index not in self._pending:
                self._pending[index] = self._gather(self.units[index], async_op=True)

    # --- block switches -------------------------------------------------------------------------------------------
    def switch(self, leaving: Iterable[torch.Tensor], entering: Iterable[torch.Tensor]) -> None:
        """The active set changes from `leaving` to `entering` parameters: the entering units are gathered and stay
        whole (before the optimizer copies them into masters), the leaving ones are cut back into shards from their
        updated weights. Every rank calls it at the same switch."""
        enter = {id(self._unit_of[id(p)]): self._unit_of[id(p)] for p in entering if id(p) in self._unit_of}
        leave = {id(self._unit_of[id(p)]): self._unit_of[id(p)] for p in leaving if id(p) in self._unit_of}
        for key, unit in enter.items():
            if not unit.pinned:
                for flat, buffer in zip(unit.flats, self._gathered(unit)):
                    for _, _, p, view in self._views(flat, buffer):
                        p.data = view  # the update writes into the gathered buffer; _shard cuts from it
                    flat.shard = flat.installed = None
                unit.pinned = True
        for key, unit in leave.items():
            if key not in enter:
                self._shard(unit)

    def remove(self) -> None:
        """Every unit whole again (gathered) and the hooks gone: the model as it was, with its current weights."""
        for unit in self.units:
            if not unit.pinned:
                self.switch([], unit.params())
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def shape_of(self, p: torch.Tensor) -> torch.Size:
        """A parameter's shape, also while it is held as a shard (its own storage is empty then)."""
        unit = self._unit_of.get(id(p))
        for flat in unit.flats if unit is not None else ():
            for (_, _, q), shape in zip(flat.slots, flat.shapes):
                if q is p:
                    return shape
        return p.shape

    def shard_bytes(self) -> int:
        """Bytes of the shards this rank holds (the sharded units' weights; pinned units are held as parameters)."""
        return sum(f.shard.untyped_storage().nbytes() for u in self.units if not u.pinned for f in u.flats)

    # --- state dicts ------------------------------------------------------------------------------------------------
    def sharded_names(self, model: nn.Module) -> set[str]:
        """Names (model.state_dict keys) of the parameters held as shards now."""
        sharded = {id(p) for u in self.units if not u.pinned for p in u.params()}
        return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in sharded}

    def gathered_state_dict(self, model: nn.Module, to_rank: int = 0) -> dict | None:
        """model.state_dict() with the sharded parameters whole, as CPU tensors, on rank `to_rank` (None on the
        others; a collective: every rank calls it). One unit is gathered at a time."""
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        whole: dict[str, torch.Tensor] = {}
        for unit in self.units:
            if unit.pinned:
                continue
            for flat, buffer in zip(unit.flats, self._gathered(unit)):
                for _, _, p, view in self._views(flat, buffer):
                    if self.rank == to_rank:
                        whole[names[id(p)]] = view.detach().to("cpu", copy=True)
        if self.rank != to_rank:
            return None
        self._state_dict_ok = True
        try:
            own = model.state_dict()
        finally:
            self._state_dict_ok = False
        state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in own.items() if k not in whole}
        state.update(whole)
        return {k: state[k] for k in own if k in state}

    @torch.no_grad()
    def load_gathered_state_dict(self, model: nn.Module, state: dict) -> None:
        """Load a whole-model state dict (every rank passes the same one): shards are cut from it, everything else is
        loaded as model.load_state_dict(strict=True) would."""
        sharded = self.sharded_names(model)
        rest = {k: v for k, v in state.items() if k not in sharded}
        self._state_dict_ok = True
        try:
            missing, unexpected = model.load_state_dict(rest, strict=False)
        finally:
            self._state_dict_ok = False
        missing = [k for k in missing if k not in sharded or k not in state]
        if missing or unexpected:
            raise KeyError(f"state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        for unit in self.units:
            if unit.pinned:
                continue
            for flat in unit.flats:
                size = flat.padded(self.world) // self.world
                whole = torch.zeros(flat.padded(self.world), dtype=flat.dtype)
                for (_, _, p), offset, shape in zip(flat.slots, flat.offsets, flat.shapes):
                    value = state[names[id(p)]]
                    if tuple(value.shape) != tuple(shape):
                        raise ValueError(f"{names[id(p)]}: shape {tuple(value.shape)} in the state dict, "
                                         f"{tuple(shape)} in the model")
                    whole[offset:offset + shape.numel()] = value.reshape(-1).to(flat.dtype)
                flat.shard.copy_(whole[self.rank * size:(self.rank + 1) * size])
            self._pending.pop(unit.index, None)
        self._shards_changed = True



class FrozenShardingMixin:
    """BlockOptimizer's side: ``shard_frozen_blocks`` and the call its block switch makes (``self._frozen_shards`` is
    None until enabled)."""

    _frozen_shards: FrozenBlockShards | None = None

    @property
    def frozen_shards(self) -> FrozenBlockShards | None:
        return self._frozen_shards

    def shard_frozen_blocks(self, model: nn.Module, *, prefetch: int = 1, gather_stream: bool = False,
                            place=None) -> FrozenBlockShards:
        """Keep 1/N of every frozen block's weights on each of the N data-parallel ranks (module docstring). Call it
        on every rank, after ``enable_data_parallel`` (or ``process_group=``) and between steps; `model` is the module
        whose named_parameters() built this optimizer. Without data parallelism the shard is the whole block: nothing
        is saved, the mechanism runs as it would on N ranks (what a one-GPU measurement of its cost needs).
        A block is sharded when its name prefix names a module all of whose parameters belong to that block alone;
        the others (and everything outside the blocks) stay replicated.
        `prefetch`: units whose all-gather is issued ahead (0: none; each holds one more unit's weights);
        `gather_stream`: on CUDA issue those from a side stream (module docstring: measured slower at 8B).
        `place(name, module)`: for a model built on the meta device or loaded on the CPU, so that it never sits whole
        on the GPU: it must put that module's own parameters and buffers (not its children's) on the device, keeping
        the Parameter objects; each unit is placed and cut into shards before the next, then every other module is
        placed and the active block's masters are made again from the placed weights."""
        if self._frozen_shards is not None:
            raise RuntimeError("shard_frozen_blocks: this BlockOptimizer's frozen blocks are sharded already")
        if not isinstance(prefetch, int) or prefetch < 0:  # True / False: 1 / 0
            raise ValueError(f"shard_frozen_blocks: prefetch must be an int >= 0 (units gathered ahead; 0: none), "
                             f"got {prefetch!r}")
        if self._overlap is not None:
            raise ValueError(f"shard_frozen_blocks does not combine with overlap_update ({OVERLAP_CONFLICT}): use one "
                             "of them")
        if any(hasattr(p, "_local_tensor") for p in self._all_params):
            raise ValueError("shard_frozen_blocks: these parameters are FSDP2-sharded already")
        if self.gradient_tensors():
            raise RuntimeError("shard_frozen_blocks must be called between steps (after zero_grad), not between a "
                               "backward and its step")
        units = shard_units(model, self.block_prefix_list, self._block_params, self._always_params)
        if not units:
            raise ValueError("shard_frozen_blocks: no block's prefix names a module of this model that holds only that "
                             f"block's parameters (blocks: {self.block_prefix_list[:3]} ...)")
        group = self.process_group
        if place is not None:  # masters and hooks of the unplaced weights go first (placing swaps the tensors)
            if self._sync is not None:
                self._sync.detach()
            if self._masters is not None:
                self._masters.release()
                self._masters = None
        self._frozen_shards = FrozenBlockShards(units, self._active_params, group, prefetch=prefetch,
                                                gather_stream=gather_stream, distributed=self._sync is not None,
                                                place=place)
        if place is not None:
            inside = {id(m) for _, unit in units for m in unit.modules()}
            for name, module in model.named_modules():
                if id(module) not in inside:
                    place(name, module)
            self._activate(self.current_block, event=None)  # masters (and gradient hooks) from the placed weights
        return self._frozen_shards

    def _switch_shards(self, leaving: list, entering: list) -> None:
        if self._frozen_shards is not None:
            self._frozen_shards.switch(leaving, entering)


def shard_units(model: nn.Module, block_prefixes: list[list[str]], block_params: list[list],
                always_params: list) -> list[tuple[str, nn.Module]]:
    """(name, module) of every block prefix that names a module (or a parameter of a module) whose parameters all belong
    to that block and to no other module outside it (tied weights stay replicated), in the model's module order; a
    unit inside another is dropped in favour of the inner one."""
    modules = dict(model.named_modules())
    owner_block = {id(p): b for b, params in enumerate(block_params) for p in params}
    always = {id(p) for p in always_params}
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    parameter_names = {n for names in names_of.values() for n in names}
    chosen = []
    for b, prefixes in enumerate(block_prefixes):
        for prefix in prefixes:
            name = prefix.rstrip(".")
            if name not in modules and name in parameter_names:  # a prefix naming a weight: its module, if all its own
                name = name.rpartition(".")[0]
            module = modules.get(name)
            params = list(module.parameters()) if module is not None else []
            if not params or any(owner_block.get(id(p), b) != b or id(p) in always for p in params):
                continue
            if any(not n.startswith(name + ".") for p in params for n in names_of.get(id(p), [])):
                continue
            chosen.append(name)
    inner = [n for n in chosen if not any(o != n and o.startswith(n + ".") for o in chosen)]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return [(n, modules[n]) for n in sorted(set(inner), key=order.__getitem__)]
