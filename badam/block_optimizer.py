"""BAdam's BlockOptimizer: block coordinate descent with any torch optimizer as the inner solver.

The model is split into D blocks (badam/partition.py). Only the active block is trainable; it alone gets an fp32
master copy and base-optimizer state (badam/mixed_precision.py), and it is updated for exactly K =
``switch_block_every`` steps before the next block takes over. AdamW as the base optimizer gives BAdam, SGD gives BSGD.

Gradients: torch.optim's contract (``gradients="param"``, the default). After ``backward()`` the active block's
``p.grad`` holds its gradient, in the weights' dtype, as with any torch optimizer and as with badam 1.4; ``step()``
uses whatever ``p.grad`` holds then, so clipping it (torch, accelerate, HF Trainer with or without BAdamCallback,
Lightning), editing it or assigning it by hand changes the update, and ``zero_grad()`` behaves as torch's. The design
keeps the bf16 ``p.grad`` visible and folds it into fp32 at the moment precision would be lost:
  * one backward per step: nothing is folded during backward (2 bytes per active parameter, half of an fp32
    gradient); ``step()`` converts ``p.grad`` to fp32 one tensor at a time, right before that tensor's update;
  * gradient accumulation: a tensor hook sees each micro-batch's gradient before autograd would add it to ``p.grad`` in
    bf16, adds it to an fp32 sum instead and shows that sum's rounding in ``p.grad``. The update uses the fp32 sum while
    ``p.grad`` is still exactly that rounding; if ``p.grad`` was replaced or edited (clipping, surgery), the edited
    ``p.grad`` is used (so an external clip after accumulation acts at bf16 precision; ``clip_grad_norm_`` below
    scales the fp32 sum and ``p.grad`` together).
Why this design: keeping only an fp32 gradient (the former default, still ``gradients="master"``) leaves ``p.grad``
None, so every standard idiom silently sees nothing; a version counter alone misses edits made through ``.data``, so
the sum is trusted only while ``p.grad`` equals its rounding. Cost: with accumulation the active block holds 6 bytes
of gradient per parameter (fp32 sum + bf16 view) instead of 4; without accumulation 2 instead of 4.

The constructor is badam 1.4's, so switching from the official package means changing the import. Behaviour that
deliberately differs from 1.4 (each is a defect there; tests/badam/test_official_agreement.py shows each):
  * each param group's own ``weight_decay`` and ``lr`` are used (1.4 replaces decay with the base optimizer's default
    and every group's lr with group 0's), so undecayed biases/norms stay undecayed when the user's groups say so;
  * every block, the first included, gets exactly K steps (1.4 gives the first block K-1);
  * a parameter without a gradient is skipped (1.4 asserts);
  * gradients accumulate in fp32 across micro-batches (1.4 sums them in bf16);
  * the random order is drawn from a seeded generator whose state, like the block order, the current block, the step
    within it and the global step, is part of ``state_dict()`` — so a resumed run continues the same schedule;
  * blocks are found for any ``<path>.<int>.`` layer stack (GPT-2, BERT, ...), not only ``layers.N.``;
  * no ``torch.cuda.empty_cache()`` / ``gc.collect()`` per step or switch: the next block reuses the freed memory;
  * ``switch_mode="fixed"`` keeps training one block with continuous state (1.4 resets it every K steps);
  * the update runs tensor by tensor (smallest first), so no block-sized temporaries exist (``per_tensor_update``;
    same numbers for every torch.optim optimizer);
  * at a switch the old block's masters, state and gradients are freed before the new block's masters are made;
  * ``step()`` leaves ``p.grad`` in place until ``zero_grad()`` (torch's contract; 1.4 consumes it), except that the
    leaving block's gradients are dropped at a switch, since its parameters freeze;
  * gradients on parameters outside the active block cannot be used (they are frozen): a warning names them.
  * parameters the user froze before wrapping stay frozen and belong to no block (1.4 unfreezes them with their
    block; badam/block_setup.py); weights written after construction (``load_state_dict``) are stepped from, not
    overwritten by the active block's older fp32 masters (FP32MasterWeights.adopt_model_writes).
Opt-in diagnostic ``measure_rounding=True`` (badam/rounding.py): how much of each visit's update the low-precision
weights keep once the masters are dropped, reported as a "visit_end" event and warned about once when it is small.
Call ``release()`` when dropping an optimizer while its model lives on. 1.4's BlockOptimizerRatio is
badam/ratio.py. Data parallelism (``process_group=``): badam/data_parallel.py. The update on a side CUDA stream,
overlapping the next forward (``overlap_update(model)``): badam/overlap.py. Frozen blocks sharded over the data-parallel
ranks (``shard_frozen_blocks(model)``): badam/frozen_shards.py. Not implemented: DeepSpeed ZeRO-3.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .block_setup import (SWITCH_MODES, check_base_optimizer, freeze, frozen_note, map_groups, split_user_frozen,
                          validate_arguments, warn_full_precision)
from .block_state import STATE_FORMAT, BlockStateMixin
from .data_parallel import DataParallelMixin
from .fixed_groups import FixedParamGroupsMixin
from .frozen_shards import FrozenShardingMixin
from .mixed_precision import GRADIENT_MODES, FP32MasterWeights, local_nbytes
from .overlap import UpdateOverlapMixin
from .partition import assign_to_blocks, infer_block_prefixes, prefix_matches, unique_named_parameters
from .rounding import BlockRoundingMixin, RoundingLog, VisitRounding
from .update import step_tensor_by_tensor

class BlockOptimizer(FixedParamGroupsMixin, UpdateOverlapMixin, BlockStateMixin, BlockRoundingMixin, DataParallelMixin,
                     FrozenShardingMixin, torch.optim.Optimizer):
    """Wrap `base_optimizer` (built by the user over all parameters) so that one block trains at a time.

    Args (badam 1.4's meanings):
        base_optimizer: any torch optimizer over the model's parameters, e.g. AdamW with decay / no-decay groups.
        named_parameters_list: ``list(model.named_parameters())``.
        block_prefix_list: list of blocks, each a list of name prefixes; None infers one block per layer.
        switch_block_every: K, optimizer steps per block visit.
        start_block: index of the first block (default: last for descending, first for ascending, random for random;
            required for fixed).
        switch_mode: "random" (a fresh permutation every block-epoch), "ascending", "descending", "fixed".
        active_modules: name prefixes of parameters that train in every block (e.g. a classifier head).
        include_embedding / include_lm_head: add the parameters before / after the layer stack as blocks
            (used only when block_prefix_list is None).
        verbose: 0 silent, 1 prints block switches and random orders, 2 also the names of the trainable parameters.
        log_fn: called with a dict for every switch and every new random order.
        seed: seed of the generator for random orders (default: drawn from torch's global RNG, so
            ``torch.manual_seed`` makes runs repeatable).
        per_tensor_update: run the base optimizer on one tensor at a time, smallest first, freeing each fp32
            gradient right after its update. Same result for optimizers whose state is per tensor (every torch.optim
            optimizer), with less peak memory: no block-sized temporaries (foreach AdamW allocates one) and gradients
            leave as updates proceed. Default: True for torch.optim optimizers, False for others (their update may
            couple tensors).
        gradients: "param" (default): gradients live in ``p.grad`` as with any torch optimizer (module docstring).
            "master": each gradient is folded into the fp32 master during backward and ``p.grad`` is None
            afterwards: 4 bytes per active parameter with accumulation (6 in "param" mode) and fp32 accumulation
            under FSDP2; clip and read gradients only through ``clip_grad_norm_`` and ``masters`` then.
        process_group: data parallelism over a torch.distributed group (every rank holds the whole model): the
            active block's gradient is averaged during backward, so ``p.grad`` holds the average when backward
            returns; ``no_sync()`` for micro-batches but the last; rank 0's weights and schedule are broadcast.
            ``reduce_dtype`` ("fp32" or "bf16") is the all-reduce dtype. See ``enable_data_parallel``.
        measure_rounding: measure, for every block visit, how much of its update survives in the bf16/fp16 weights
            when the block's fp32 masters are dropped (badam/rounding.py): a copy of the active block's stored values
            is kept from the start of each visit (2 bytes per active parameter in bf16/fp16; nothing for fp32
            weights, which are their own masters), and at the visit's end (the switch, or ``release()``) log_fn gets
            a "visit_end" event with ``update_kept`` (||w_end - w_start|| / ||master_end - w_start||) and
            ``elements_frozen`` (share of the elements whose master moved but whose stored value did not); the
            latest is ``last_visit_rounding``. One warning when a visit keeps less than half its update. A visit
            resumed from a state dict mid-way has no start copy and reports nothing. Off by default (no memory or
            time cost). Not available on FSDP2-sharded parameters.
        full_precision_ok: the weights are stored in fp32 on purpose, so the warning that BAdam's memory saving is lost
            is not given. The warning is for weights that ended up in fp32 unasked (``from_pretrained`` without a
            ``torch_dtype`` loads fp32); choices it would only repeat: a CPU run (CPUs without bf16 units multiply
            bf16 far slower), or fp32 storage under bf16 autocast so that every visit's whole update is kept
            (see measure_rounding). Default False.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, named_parameters_list: Iterable,
                 block_prefix_list: Sequence | None = None, switch_block_every: int = 50,
                 start_block: int | None = None, switch_mode: str = "descending", active_modules: Sequence[str] = (),
                 include_embedding: bool = False, include_lm_head: bool = False, verbose: int = 1,
                 log_fn: Callable[[dict], Any] | None = None, ds_zero3_enabled: bool | None = None,
                 *, seed: int | None = None, per_tensor_update: bool | None = None, gradients: str = "param",
                 process_group=None, reduce_dtype="fp32", measure_rounding: bool = False,
                 full_precision_ok: bool = False):
        check_base_optimizer(base_optimizer)
        if ds_zero3_enabled:
            raise NotImplementedError("DeepSpeed ZeRO-3 is not supported by this BlockOptimizer; use badam 1.4")
        validate_arguments(switch_mode, switch_block_every, verbose, block_prefix_list)
        if gradients not in GRADIENT_MODES:
            raise ValueError(f"gradients={gradients!r} is not valid; choose one of {', '.join(GRADIENT_MODES)}")
        self.gradients = gradients
        self.measure_rounding = bool(measure_rounding)
        self._visit_rounding: VisitRounding | None = None
        self._rounding_log = RoundingLog("BlockOptimizer")
        self.base_optimizer = base_optimizer
        self.switch_mode = switch_mode
        self.switch_block_every = switch_block_every
        self.verbose = verbose
        self.log_fn = log_fn
        if per_tensor_update is None:
            per_tensor_update = type(base_optimizer).__module__.startswith("torch.optim")
        self.per_tensor_update = bool(per_tensor_update)

        named, frozen = split_user_frozen(unique_named_parameters(named_parameters_list))
        if self.measure_rounding and any(hasattr(p, "_local_tensor") for _, p in named):
            raise ValueError("measure_rounding=True is not supported on FSDP2-sharded (DTensor) parameters (each rank "
                             "holds a shard, so the norms would need a collective); turn it off, or measure on one "
                             "device or with process_group= data parallelism")
        names = [n for n, _ in named]
        self.lora_mode = any("lora_" in n for n in names)  # as 1.4: with LoRA, only adapters train in a block
        try:
            if block_prefix_list is None:
                block_prefix_list = infer_block_prefixes(names, include_embedding, include_lm_head)
            self.block_prefix_list = [[b] if isinstance(b, str) else list(b) for b in block_prefix_list]
            blocks = assign_to_blocks(names, self.block_prefix_list)
        except ValueError as error:
            raise ValueError(f"{error}{frozen_note(frozen)}") from None
        active_modules = [active_modules] if isinstance(active_modules, str) else list(active_modules)
        for prefix in active_modules:
            if not any(prefix_matches(prefix, n) for n in names):
                raise ValueError(f"active_modules prefix {prefix!r} matches no parameter name; "
                                 f"names look like: {', '.join(names[:4])}, ...")
        self.active_modules = active_modules
        always = {i for i, n in enumerate(names) if any(prefix_matches(a, n) for a in active_modules)}
        trains = (lambda i: "lora_" in names[i]) if self.lora_mode else (lambda i: True)
        self._always_params = [named[i][1] for i in sorted(always) if trains(i)]
        self._block_params = [[named[i][1] for i in members if i not in always and trains(i)] for members in blocks]
        for b, params in enumerate(self._block_params):
            if not params and not self._always_params:
                raise ValueError(f"block {b} ({self.block_prefix_list[b]}) has no trainable parameter"
                                 + (" (LoRA mode trains only lora_ parameters)" if self.lora_mode else ""))
        self._param_names = {id(p): n for n, p in named + frozen}
        self._all_params = [p for _, p in named + frozen]  # every rank must agree on the frozen ones too
        self.frozen_parameter_names = [n for n, _ in frozen]
        self._warned_foreign_grads = False
        self._group_of = map_groups(base_optimizer, named, frozen)
        # LoRA adapters are fp32 by design; the memory argument is about full weights
        if not self.lora_mode and not full_precision_ok:
            warn_full_precision(named, {id(p) for ps in self._block_params for p in ps}
                                | {id(p) for p in self._always_params})

        super().__init__(base_optimizer.param_groups, base_optimizer.defaults)
        # One list of group dicts shared with the base optimizer for the whole run (LR schedulers see the same dicts)
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self._groups_fixed = True

        if start_block is not None and not (isinstance(start_block, int) and 0 <= start_block < self.num_blocks):
            raise ValueError(f"start_block must be an integer in [0, {self.num_blocks - 1}], got {start_block!r}")
        if switch_mode == "fixed" and start_block is None:
            raise ValueError(f"switch_mode 'fixed' trains one block: pass start_block in [0, {self.num_blocks - 1}]")
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        self._generator = torch.Generator().manual_seed(seed)
        self.global_step = self.step_in_block = self.block_epoch = 0
        self._order = self._first_order(start_block)
        self._order_pos = 0
        self._masters: FP32MasterWeights | None = None
        self._rest_params: list[list] = []    # per group: the tensors listed there between steps
        self._group_masters: list[list] = []  # per group: the masters the base optimizer steps
        self._active_params: list[torch.nn.Parameter] = []
        self._update_order: list[tuple[int, int]] = []  # (group, master index), smallest tensor first
        for _, p in named:  # everything starts frozen; _activate unfreezes the active block
            freeze(p)
            p.grad = None
        self._activate(self._order[0])
        if process_group is not None:
            self.enable_data_parallel(process_group, reduce_dtype=reduce_dtype)

    # --- block schedule ---------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self._block_params)

    block_num = num_blocks  # badam 1.4's name

    @property
    def current_block(self) -> int:
        """Index (into block_prefix_list) of the block being trained now."""
        return self._order[self._order_pos]

    @property
    def active_block_prefixes(self) -> list[str]:
        return list(self.block_prefix_list[self.current_block])

    @property
    def active_parameter_names(self) -> list[str]:
        return [self._param_names[id(p)] for p in self._active_params]

    def _first_order(self, start_block: int | None) -> list[int]:
        n = self.num_blocks
        if self.switch_mode == "random":
            order = self._draw_random_order()
            if start_block is not None:
                order = [start_block] + [b for b in order if b != start_block]
            self._report({"event": "order", "block_epoch": 0, "order": order})
            return order
        if self.switch_mode == "fixed":
            return [start_block]
        step = 1 if self.switch_mode == "ascending" else -1
        first = start_block if start_block is not None else (0 if step == 1 else n - 1)
        return [(first + step * k) % n for k in range(n)]

    def _draw_random_order(self) -> list[int]:
        return torch.randperm(self.num_blocks, generator=self._generator).tolist()

    def _next_block(self) -> int:
        """Advance the schedule by one block visit; a new block-epoch starts after every block was visited."""
        if self.switch_mode == "fixed":
            return self._order[0]
        self._order_pos += 1
        if self._order_pos == len(self._order):
            self.block_epoch += 1
            self._order_pos = 0
            if self.switch_mode == "random":
                self._order = self._draw_random_order()
                self._report({"event": "order", "block_epoch": self.block_epoch, "order": self._order})
            else:  # ascending / descending continue cyclically from where the last epoch ended
                n = self.num_blocks
                step = 1 if self.switch_mode == "ascending" else -1
                last = self._order[-1]
                self._order = [(last + step * (k + 1)) % n for k in range(n)]
        return self._order[self._order_pos]

    def _report(self, event: dict) -> None:
        if self.log_fn is not None:
            self.log_fn(dict(event))
        if self.verbose >= 1:
            if event["event"] == "order":
                print(f"[BlockOptimizer] block-epoch {event['block_epoch']} order: {event['order']}")
            elif event["event"] == "visit_end":
                kept = "n/a" if event["update_kept"] is None else f"{event['update_kept']:.1%}"
                print(f"[BlockOptimizer] step {event['global_step']}: block {event['block']} kept {kept} of its "
                      f"update in {event['dtype']}")
            else:
                verb = "resumes" if event["event"] == "resume" else "trains"
                print(f"[BlockOptimizer] step {event['global_step']}: block {event['block']} "
                      f"{event['block_prefixes']} {verb} for {self.switch_block_every} steps")
                if self.verbose >= 2:
                    print("  trainable:", ", ".join(self.active_parameter_names))

    # --- switching -------------------------------------------------------------------------------------------
    def _activate(self, block: int, event: str | None = "switch") -> None:
        """Make `block` (plus active_modules) the trainable set: release the previous block's fp32 masters,
        gradients and optimizer state, then create them for the new block only (event None: not reported)."""
        new_params = self._block_params[block] + self._always_params
        if self._overlap is not None:  # new masters are copied from these weights: a queued update must have run
            self._overlap.wait_if_writing(new_params)
        new_ids = {id(p) for p in new_params}
        for p in self._active_params:
            if id(p) not in new_ids:
                freeze(p)
                p.grad = None  # the leaving block freezes: its gradient can never be used
        if self._sync is not None:
            self._sync.detach()
        if self._masters is not None:
            self._masters.release()  # release before allocating: peak memory holds one block, not two
            self._masters = None
        self.base_optimizer.state.clear()  # cleared in place: self.state is the same dict
        old_ids = {id(p) for p in self._active_params}
        for p in new_params:
            if id(p) not in old_ids:
                p.grad = None  # whatever was put there while it was frozen is not a gradient of this block's steps
            p.requires_grad_(True)
        self._switch_shards(self._active_params, new_params)  # frozen blocks sharded: the new one whole first
        self._masters = FP32MasterWeights(new_params, gradients=self.gradients)
        master_of = {id(p): m for p, m in zip(self._masters.params, self._masters.masters)}
        # At rest the groups list the tensors whose .grad holds the gradient, as torch optimizers do (frameworks such
        # as Lightning clip over optimizer.param_groups): the model's parameters in "param" mode, the masters in
        # "master" mode. Inside step() and (de)serialisation they hold the masters the base optimizer works on.
        self._rest_params = [[p for p in new_params if self._group_of[id(p)] == g]
                             for g in range(len(self.param_groups))]
        self._group_masters = [[master_of[id(p)] for p in ps] for ps in self._rest_params]
        at_rest = self._rest_params if self.gradients == "param" else self._group_masters
        for group, params in zip(self.param_groups, at_rest):
            group["params"] = list(params)
        # smallest first: the first updates free gradient memory before the large tensors need their temporaries
        sizes = [m.numel() for m in self._masters.masters]
        self._update_order = sorted(((self._group_of[id(p)], i) for i, p in enumerate(self._masters.params)),
                                    key=lambda gi: (sizes[gi[1]], gi[1]))
        self._active_params = new_params
        if self._sync is not None:
            self._sync.attach(self._masters)  # after the masters' hooks: it reads the gradient where they put it
        self._begin_visit_rounding(measure=event != "resume")
        if event is not None:
            self._report({"event": event, "global_step": self.global_step, "block": block,
                          "block_prefixes": self.block_prefix_list[block], "block_epoch": self.block_epoch})

    # --- optimisation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One base-optimizer step on the active block; after the K-th step of a visit, switch to the next block."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._warn_about_foreign_grads()
        if self._overlap is not None:
            self._step_overlapped(self._update_masters)  # badam/overlap.py: queued on a side stream
        else:
            if self._sync is not None:
                self._sync.before_step()
            self._update_masters()
        self.global_step += 1
        self.step_in_block += 1
        if self.step_in_block >= self.switch_block_every:
            self.step_in_block = 0
            if self.switch_mode != "fixed":
                self._end_visit()  # before _next_block: the event names the leaving block and its block-epoch
                self._activate(self._next_block())
            elif self.verbose >= 2:
                print(f"[BlockOptimizer] step {self.global_step}: fixed block {self.current_block} continues")
        return loss

    def _update_masters(self) -> None:
        """The base optimizer's step on the active block's masters, and the masters written back into the model."""
        masters = self._masters
        if self.per_tensor_update:
            order = self._update_order

            def finish(k: int) -> None:
                masters.copy_one_to_model(order[k][1])
                masters.unstage_grad(order[k][1])

            step_tensor_by_tensor(self.base_optimizer, [(g, masters.masters[i]) for g, i in order],
                                  lambda k: masters.stage_grad(order[k][1]), finish)
        else:
            for i in range(len(masters)):
                masters.stage_grad(i)
            with self._groups_hold_masters():
                self.base_optimizer.step()
            masters.copy_to_model()
            for i in range(len(masters)):
                masters.unstage_grad(i)

    def release(self) -> None:
        """Drop the active block's masters, gradients, hooks and optimizer state and freeze it, and gather sharded
        frozen blocks back; call when the optimizer is discarded while the model lives on (it is unusable then). With
        measure_rounding, the visit in progress ends here and is reported."""
        if self._overlap is not None:
            self._overlap.close()
        self._end_visit()
        if self._sync is not None:
            self._sync.detach()
        if self._frozen_shards is not None:  # the model whole again (every rank gathers every block)
            self._frozen_shards.remove()
        if self._masters is not None:
            self._masters.release()
            self._masters = None
        self.base_optimizer.state.clear()
        for group in self.param_groups:
            group["params"] = []
        for p in self._active_params:
            freeze(p)
            p.grad = None
        self._active_params = []

    @contextlib.contextmanager
    def _groups_hold_masters(self):
        rest = [group["params"] for group in self.param_groups]
        try:
            for group, masters in zip(self.param_groups, self._group_masters):
                group["params"] = list(masters)
            yield
        finally:
            for group, params in zip(self.param_groups, rest):
                group["params"] = params

    def _warn_about_foreign_grads(self) -> None:
        if self._warned_foreign_grads:
            return
        active = {id(p) for p in self._active_params}
        foreign = [self._param_names[id(p)] for p in self._all_params if p.grad is not None and id(p) not in active]
        if foreign:
            self._warned_foreign_grads = True
            warnings.warn(f"BlockOptimizer: {len(foreign)} parameters outside the active block carry a gradient (e.g. "
                          f"{foreign[:3]}); BAdam updates only the active block {self.active_block_prefixes}, so "
                          "these gradients are not used. Assign gradients to the active block's parameters "
                          "(active_parameter_names) only. (Warned once.)", stacklevel=3)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's: the active block's gradients become None (or zero), with any fp32 sums behind them."""
        if not set_to_none:
            self.wait_for_update()  # zeroing in place on this stream would race an overlapped update reading them
        if self._masters is not None:
            self._masters.zero_grad(set_to_none)
        if self._sync is not None:
            self._sync.gradients_dropped()

    @property
    def masters(self) -> list[torch.Tensor]:
        """The tensors the base optimizer updates now: fp32 copies of the active block (the parameters themselves
        when the model is fp32). In "master" mode their ``.grad`` is the accumulated fp32 gradient; in "param" mode
        gradients live on the model's ``p.grad`` and reach the masters only inside ``step()``."""
        return list(self._masters.masters) if self._masters is not None else []

    def gradient_tensors(self) -> list[torch.Tensor]:
        """Every tensor held now as a gradient of the active block (p.grad, fp32 sums, gradients on masters)."""
        return self._masters.grad_tensors() if self._masters is not None else []

    @property
    def uses_master_copies(self) -> bool:
        """True when the active block is low precision, so it has separate fp32 masters."""
        return self._masters is not None and self._masters.has_copies

    @property
    def grads_on_params(self) -> bool:
        """True when the model's p.grad holds the gradient step() uses (so a clip over model.parameters() acts)."""
        return self.gradients == "param" or not self.uses_master_copies

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> torch.Tensor:
        """Clip the active block's gradients to total norm `max_norm`; returns the norm before clipping, computed in
        fp32 from the gradients step() will use (an fp32 accumulation sum is scaled in fp32). ``max_norm=inf``
        only measures."""
        if self._masters is None:
            return torch.zeros(())
        if self._sync is not None:
            self._sync.finish_deferred()  # overlap_update: the average is formed in step() unless read before it
        return self._masters.clip_grad_norm_(max_norm, norm_type, error_if_nonfinite)

    # --- introspection -----------------------------------------------------------------------------------------
    def memory_bytes(self) -> dict[str, int]:
        """Bytes this optimizer holds now: fp32 master copies, the active block's gradients (p.grad, fp32 sums and
        gradients staged on masters), base-optimizer state tensors."""
        held = self._masters.nbytes() if self._masters is not None else {"masters": 0, "grads": 0}
        seen, states = set(), 0
        for per_param in self.base_optimizer.state.values():
            for value in per_param.values():
                local = getattr(value, "_local_tensor", value)  # a DTensor (FSDP2): the shard held here
                if isinstance(value, torch.Tensor) and value.dim() > 0 and local.data_ptr() not in seen:
                    seen.add(local.data_ptr())
                    states += local_nbytes(value)
        out = {"masters": held["masters"], "grads": held["grads"], "optimizer_states": states}
        if self.measure_rounding:
            out["rounding_start_copy"] = self._visit_rounding.nbytes() if self._visit_rounding is not None else 0
        return out

    def describe(self) -> dict:
        """JSON-serialisable summary for logging."""
        return {
            "active_block": self.current_block,
            "active_block_prefixes": self.active_block_prefixes,
            "num_blocks": self.num_blocks,
            "switch_mode": self.switch_mode,
            "switch_block_every": self.switch_block_every,
            "step_in_block": self.step_in_block,
            "global_step": self.global_step,
            "block_epoch": self.block_epoch,
            "active_parameters": sum(p.numel() for p in self._active_params),
            "held_bytes": self.memory_bytes(),
        }
