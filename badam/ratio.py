"""BlockOptimizerRatio: BAdam's "ratio" mode — a fraction of the entries of every weight matrix trains at a time.

Each trainable parameter trains ``update_ratio`` of its entries (the *selection*), re-drawn every ``switch_every``
steps: ``mask_mode="adjacent"`` takes a run of consecutive entries (in row-major order) starting at an offset that moves
on by the run's length at every switch, wrapping around; ``"scatter"`` takes the same sliding window of a fixed random
permutation of the entries (one per parameter, from its seed). Adam states restart at every switch. The constructor
and the meaning of every argument are badam 1.4's (``BlockOptimizerRatio``); see `BlockOptimizerRatio`.

How it works, and what differs from badam 1.4 (each a defect there, shown in tests/badam/test_ratio_official.py):
  * no dense gradient outlives its tensor: a post-accumulate hook adds the selected entries of each gradient into an
    fp32 vector as soon as autograd has produced it and frees the full gradient; 1.4 keeps a sparse COO gradient per
    matrix whose int64 indices cost 16 bytes per selected entry (8x a bf16 value), plus a COO mask per shape;
  * fp32 master values and fp32 Adam states for the selected entries only (12 bytes each; 16 with the gradient).
    1.4 updates the bf16 weights in place with bf16 states, so updates below half a bf16 ulp of a weight are lost;
  * the update is torch's AdamW on those vectors: each param group's ``weight_decay`` is applied (decoupled, to the
    entries that train), which 1.4 ignores; 1.4's eps sits outside the bias correction (SparseAdam's formula), so the
    two differ in the eps term only;
  * tied input / output embeddings work (1.4 crashes looking for a separate ``lm_head``); with tied weights the
    shared matrix trains when ``include_embedding`` is set;
  * parameters smaller than ``preserve_threshold`` train fully, as documented (1.4 masks them anyway), and parameters
    of the same shape share a mask only when their ratios agree too;
  * masks are drawn from private generators (1.4 calls ``torch.manual_seed`` in backward, resetting everyone's
    global RNG); with gradient accumulation the mask of a step is the same for all micro-batches (1.4 advances the
    offset in the first micro-batch of a switching step);
  * ``state_dict()`` holds the schedule, offsets, masks, masters and states: a resumed run continues bitwise.

``measure_rounding=True`` (badam/rounding.py): at every mask switch (and ``release()``), the share of the period's
update that the low-precision weights keep once the masters are dropped, over the trained entries; ``log_fn`` gets a
"period_end" event, ``last_period_rounding`` holds the latest, one warning below half. Costs 2 bytes per trained
entry (bf16/fp16 weights); a period resumed mid-way from a state dict reports nothing.

Gradients: after backward ``p.grad`` is None for the trainable parameters (their gradient lives in fp32 on the
selected entries). ``clip_grad_norm_`` clips it (BAdamCallback does so for HF Trainer); a torch or accelerate clip over
``model.parameters()`` sees nothing, so ``step()`` warns once when neither was called. Gradients assigned to ``p.grad``
by hand (dense or sparse) are added to the selected entries' gradient at the next ``step()``.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch

from .fixed_groups import FixedParamGroupsMixin
from .mixed_precision import local_nbytes
from .partition import find_layer_stack, prefix_matches, split_around_stack, unique_named_parameters
from .rounding import RoundingLog, VisitRounding
from .selection import Selection, adjacent_selection, scatter_selection
from .update import step_tensor_by_tensor

MASK_MODES = ("adjacent", "scatter")
STATE_FORMAT = "badam-bench/BlockOptimizerRatio/1"


class _Trained:
    """One trainable parameter: its selection of entries for this period, fp32 master values, mask seed, offset."""

    def __init__(self, name: str, param: torch.nn.Parameter, group: int, ratio: float, full: bool, seed: int):
        self.name, self.param, self.group, self.ratio, self.full, self.seed = name, param, group, ratio, full, seed
        self.count = param.numel() if full else int(param.numel() * ratio)
        self.offset = 0
        self.selection: Selection | None = None
        self.master: torch.Tensor | None = None
        self.synced_version = -1  # param._version when master and weight last agreed (see _adopt_model_writes)
        self.hook = None


def _check_ratio(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{what} must be a number in (0, 1], got {value!r}")
    return float(value)


class BlockOptimizerRatio(FixedParamGroupsMixin, torch.optim.Optimizer):
    """Sparse AdamW over a moving fraction of every trainable parameter's entries (badam 1.4's constructor).

    Args (1.4's names and meanings):
        param_groups: parameters or param-group dicts, as for any torch optimizer (groups may set lr, betas, eps and
            weight_decay).
        named_parameters_list: ``list(model.named_parameters())``.
        update_ratio: fraction of each parameter's entries that trains at a time.
        verbose: 0 silent, 1 prints every mask switch.
        switch_every: steps between mask switches (the Adam states restart at each).
        preserve_threshold: parameters with fewer entries than this train fully.
        param_update_ratios: ``{name substring: ratio}`` overriding update_ratio for matching parameters (the last
            matching key wins; a value of None keeps update_ratio).
        mask_mode: "adjacent" (a run of consecutive entries) or "scatter" (random entries).
        lr, betas, eps: AdamW hyper-parameters (defaults of the groups); optimizer_defaults replaces them all.
        keep_mask: True: parameters of the same shape and ratio share one scatter mask (less memory; 1.4 caches one
            mask per shape); False: each parameter has its own. Adjacent masks need no storage either way.
        include_embedding / include_lm_head: train the embedding parameters (everything before the layer stack) /
            the output head (``lm_head``); otherwise they are frozen. Parameters already frozen stay frozen.
    Keyword-only additions: ``weight_decay`` (default of the groups, 0 as in 1.4 which has none), ``seed`` (draws the
    per-parameter mask seeds; default from torch's global RNG), ``mask_seeds`` ({name: seed}, e.g. to repeat another
    run's scatter masks), ``measure_rounding`` and ``log_fn`` (module docstring).
    """

    def __init__(self, param_groups, named_parameters_list: Iterable, update_ratio: float = 0.1, verbose: int = 1,
                 switch_every: int = 100, preserve_threshold: int = 100,
                 param_update_ratios: Mapping[str, float | None] | None = None, mask_mode: str = "adjacent",
                 lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 optimizer_defaults: dict | None = None, keep_mask: bool = True, include_embedding: bool = False,
                 include_lm_head: bool = False, *, weight_decay: float = 0.0, seed: int | None = None,
                 mask_seeds: Mapping[str, int] | None = None, measure_rounding: bool = False,
                 log_fn: Callable[[dict], Any] | None = None):
        update_ratio = _check_ratio(update_ratio, "update_ratio")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode {mask_mode!r} is not valid; choose one of {', '.join(MASK_MODES)}")
        if isinstance(switch_every, bool) or not isinstance(switch_every, int) or switch_every < 1:
            raise ValueError(f"switch_every must be an integer >= 1 (steps per mask), got {switch_every!r}")
        if isinstance(preserve_threshold, bool) or not isinstance(preserve_threshold, int) or preserve_threshold < 0:
            raise ValueError(f"preserve_threshold must be an integer >= 0, got {preserve_threshold!r}")
        named = unique_named_parameters(named_parameters_list)
        if any(hasattr(p, "_local_tensor") for _, p in named):
            raise TypeError("BlockOptimizerRatio does not support sharded (DTensor, FSDP2) parameters; use "
                            "BlockOptimizer there")
        self.update_ratio, self.switch_every, self.mask_mode = update_ratio, switch_every, mask_mode
        self.measure_rounding, self.log_fn = bool(measure_rounding), log_fn
        self._period_rounding: VisitRounding | None = None
        self._rounding_log = RoundingLog("BlockOptimizerRatio")
        self.preserve_threshold, self.keep_mask, self.verbose = preserve_threshold, bool(keep_mask), verbose
        defaults = dict(optimizer_defaults) if optimizer_defaults is not None else dict(lr=lr, betas=betas, eps=eps)
        defaults.setdefault("weight_decay", weight_decay)
        groups = self._normalise_groups(param_groups)
        group_of = {id(p): g for g, group in enumerate(groups) for p in group["params"]}
        unknown = sum(1 for group in groups for p in group["params"]) - len(group_of)
        names = {id(p): n for n, p in named}
        missing = [g for g in group_of if g not in names]
        if unknown or missing:
            raise ValueError(f"{len(missing)} parameters in param_groups are not in named_parameters_list (and "
                             f"{unknown} are listed twice); pass list(model.named_parameters()) of the same model")

        frozen = self._frozen_names([n for n, _ in named], include_embedding, include_lm_head)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        seeds = torch.Generator().manual_seed(seed)
        ratios = dict(param_update_ratios or {})
        self._trained: list[_Trained] = []
        nothing = []
        for name, p in named:
            mask_seed = int(torch.randint(0, 2 ** 62, (1,), generator=seeds).item())
            if mask_seeds is not None and name in mask_seeds:
                mask_seed = int(mask_seeds[name])
            if name in frozen or not p.requires_grad or id(p) not in group_of:
                p.requires_grad_(False)
                continue
            ratio = update_ratio
            for key, value in ratios.items():  # 1.4: substring match, the last matching key wins
                if key in name and value is not None:
                    ratio = _check_ratio(value, f"param_update_ratios[{key!r}]")
            entry = _Trained(name, p, group_of[id(p)], ratio, p.numel() < preserve_threshold or ratio == 1.0,
                             mask_seed)
            if entry.count == 0:
                nothing.append(name)
                p.requires_grad_(False)
                continue
            if p.is_sparse or not p.is_contiguous():
                raise ValueError(f"parameter {name!r} is not a contiguous dense tensor; BlockOptimizerRatio selects "
                                 "entries of its flattened storage")
            self._trained.append(entry)
        if nothing:
            warnings.warn(f"BlockOptimizerRatio: {len(nothing)} parameters are too small to train any entry at their "
                          f"ratio and stay frozen (e.g. {nothing[:3]}); raise preserve_threshold above their size to "
                          "train them fully", stacklevel=2)
        if not self._trained:
            raise ValueError("BlockOptimizerRatio: no parameter trains (all frozen, excluded or too small)")

        self.global_step = 0
        self.step_in_period = 0
        self.period = 0
        self._norm_taken = False
        self._warned_no_clip = False
        self._shared: dict[tuple, Selection] = {}
        self._base = torch.optim.AdamW([{**{k: v for k, v in group.items() if k != "params"}, "params": []}
                                        for group in groups], **defaults)
        super().__init__(self._base.param_groups, self._base.defaults)
        self.param_groups = self._base.param_groups  # one set of dicts, shared with the inner AdamW (schedulers)
        self.state = self._base.state
        self._groups_fixed = True
        for entry in self._trained:
            entry.hook = entry.param.register_post_accumulate_grad_hook(self._fold_hook(entry))
        self._start_period()

    # --- construction helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _normalise_groups(param_groups) -> list[dict]:
        if isinstance(param_groups, (torch.optim.Optimizer, torch.nn.Module)):
            raise TypeError(f"param_groups must be parameters or param-group dicts (e.g. model.parameters()), as for "
                            f"any torch optimizer, not a {type(param_groups).__name__}; BlockOptimizerRatio builds "
                            "its own AdamW")
        groups = list(param_groups)
        if not groups:
            raise ValueError("param_groups is empty; pass the model's parameters or a list of param-group dicts")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        out = []
        for group in groups:
            params = group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            out.append({**group, "params": params})
        return out

    @staticmethod
    def _frozen_names(names: list[str], include_embedding: bool, include_lm_head: bool) -> set[str]:
        """Embedding = every parameter before the layer stack (1.4: the first name containing "embed"); head = the
        parameters after it whose name has an ``lm_head`` component. A tied head is not listed on its own: the
        shared matrix is the embedding's."""
        try:
            before, after = split_around_stack(names, find_layer_stack(names))
        except ValueError:  # no layer stack: fall back to 1.4's name rules
            before, after = [n for n in names if "embed" in n], list(names)
        heads = [n for n in after if prefix_matches("lm_head", n)]
        if include_lm_head and not heads:
            raise ValueError("include_lm_head=True but no parameter is named 'lm_head...' (with tied embeddings the "
                             "head is the embedding matrix: pass include_embedding=True to train it)")
        return set(() if include_embedding else before) | set(() if include_lm_head else heads)

    # --- masks and periods ---------------------------------------------------------------------------------------
    def _selection(self, entry: _Trained) -> Selection:
        p = entry.param
        if entry.full:
            return adjacent_selection(p.numel(), p.numel(), 0, p.device)
        if self.mask_mode == "adjacent":
            return adjacent_selection(p.numel(), entry.count, entry.offset, p.device)
        if not self.keep_mask:
            return scatter_selection(p.numel(), entry.count, entry.offset, entry.seed, p.device)
        key = (tuple(p.shape), entry.count, entry.offset, p.device)  # same shape and ratio: one shared mask
        if key not in self._shared:
            self._shared[key] = scatter_selection(p.numel(), entry.count, entry.offset, entry.seed, p.device)
        return self._shared[key]

    @torch.no_grad()
    def _start_period(self, saved_selections: Mapping[str, torch.Tensor] | None = None) -> None:
        """New selections and fresh fp32 masters from the current weights; Adam states restart."""
        self._base.state.clear()
        self._shared = {}
        for group in self.param_groups:
            group["params"] = []
        for entry in self._trained:
            entry.master = None
        for entry in self._trained:
            if saved_selections is not None and entry.name in saved_selections:
                entry.selection = Selection.from_index(entry.param.numel(), saved_selections[entry.name])
            else:
                entry.selection = self._selection(entry)
            entry.master = entry.selection.gather(entry.param.detach().view(-1), torch.float32)
            entry.master.requires_grad_(True)
            entry.synced_version = entry.param._version
            self.param_groups[entry.group]["params"].append(entry.master)
        self._period_rounding = None
        if self.measure_rounding:
            self._period_rounding = VisitRounding([
                ((lambda e=entry: e.selection.gather(e.param.detach().view(-1), e.param.dtype)), entry.master)
                for entry in self._trained]) or None
        if self.verbose >= 1:
            print(f"[BlockOptimizerRatio] step {self.global_step}: mask {self.period} ({self.mask_mode}), "
                  f"{self.trainable_entries:,} entries of {len(self._trained)} parameters train")

    @staticmethod
    def _fold_hook(entry: _Trained):
        def fold_selected_entries(param: torch.Tensor) -> None:
            grad = param.grad
            if grad is None:
                return
            with torch.no_grad():
                dense = grad.to_dense() if grad.is_sparse else grad
                master = entry.master
                if master.grad is None:
                    master.grad = entry.selection.gather(dense.reshape(-1), torch.float32)
                else:
                    entry.selection.add_into(master.grad, dense.reshape(-1))
            param.grad = None  # the full gradient lives for this one tensor only

        return fold_selected_entries

    @property
    def trainable_entries(self) -> int:
        return sum(e.count for e in self._trained)

    @property
    def trainable_parameter_names(self) -> list[str]:
        return [e.name for e in self._trained]

    @property
    def masters(self) -> list[torch.Tensor]:
        """fp32 values of the selected entries, one vector per trainable parameter; ``.grad`` is their gradient."""
        return [e.master for e in self._trained]

    grads_on_params = False  # gradients live on the masters, never on p.grad (see the module docstring)

    # --- optimisation ------------------------------------------------------------------------------------------
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> torch.Tensor:
        """Clip the fp32 gradient of the selected entries to total norm `max_norm`; returns the norm before."""
        self._norm_taken = True
        self._fold_assigned_grads()
        grads = [m for m in self.masters if m.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.nn.utils.clip_grad_norm_(grads, max_norm, norm_type=norm_type,
                                              error_if_nonfinite=error_if_nonfinite)

    def _fold_assigned_grads(self) -> None:
        for entry in self._trained:
            if entry.param.grad is not None:  # assigned by hand since the last backward
                self._fold_hook(entry)(entry.param)

    @staticmethod
    def _adopt_model_writes(entry: _Trained) -> None:
        """A weight written in place since its master values were taken (``model.load_state_dict`` after building the
        optimizer) gives them anew, as a torch optimizer steps from the weight as it is; otherwise the stale masters
        would overwrite the loaded entries. Free unless the version counter moved (``.data`` writes are not seen)."""
        param = entry.param
        if param._version == entry.synced_version:
            return
        current = entry.selection.gather(param.detach().view(-1), param.dtype)
        if not torch.equal(current, entry.master.to(param.dtype)):
            entry.master.copy_(current)
        entry.synced_version = param._version

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._fold_assigned_grads()
        if not self._norm_taken and not self._warned_no_clip:
            self._warned_no_clip = True
            warnings.warn("BlockOptimizerRatio keeps gradients off p.grad (fp32, selected entries only), so a torch or "
                          "accelerate clip_grad_norm_ over model.parameters() sees none; clip with "
                          "optimizer.clip_grad_norm_(max_norm) (BAdamCallback does it for HF Trainer; max_norm=inf "
                          "only measures). (Warned once.)", stacklevel=2)
        self._norm_taken = False
        trained = sorted(self._trained, key=lambda e: e.count)  # smallest first, as BlockOptimizer
        for entry in trained:
            self._adopt_model_writes(entry)

        def finish(k: int) -> None:
            entry = trained[k]
            entry.selection.write(entry.param.detach().view(-1), entry.master)
            entry.synced_version = entry.param._version
            entry.master.grad = None

        step_tensor_by_tensor(self._base, [(e.group, e.master) for e in trained],
                              lambda k: trained[k].master.grad is not None, finish)
        self.global_step += 1
        self.step_in_period += 1
        if self.step_in_period >= self.switch_every:
            self.step_in_period = 0
            self._end_period()
            self.period += 1
            for entry in self._trained:
                if not entry.full:
                    entry.offset = (entry.offset + entry.count) % entry.param.numel()
            self._start_period()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for entry in self._trained:
            for t in (entry.master, entry.param):
                if t is None or t.grad is None:
                    continue
                if set_to_none:
                    t.grad = None
                else:
                    t.grad.zero_()

    def release(self) -> None:
        """Remove the gradient hooks and drop masters and states (call when the optimizer is discarded while the model
        lives on; it is unusable afterwards). With measure_rounding, the period in progress is reported here."""
        self._end_period()
        for entry in self._trained:
            if entry.hook is not None:
                entry.hook.remove()
                entry.hook = None
            entry.master, entry.selection = None, None
        self._base.state.clear()
        self._shared = {}
        for group in self.param_groups:
            group["params"] = []

    def _end_period(self) -> None:
        meter, self._period_rounding = self._period_rounding, None
        record = self._rounding_log.finish(meter, {"global_step": self.global_step, "period": self.period},
                                           f"mask period {self.period} (ending at step {self.global_step})")
        if record is not None and self.log_fn is not None:
            self.log_fn({"event": "period_end", **record})

    @property
    def last_period_rounding(self) -> dict | None:
        """The latest period's measure (measure_rounding=True; keys as BlockOptimizer.last_visit_rounding, with
        period for block), None before the first."""
        return self._rounding_log.latest()

    # --- introspection -----------------------------------------------------------------------------------------
    def mask_indices(self) -> list[torch.Tensor]:
        """The index tensors of the current scatter masks, each once (shared masks are one tensor)."""
        found = {id(e.selection.index): e.selection.index for e in self._trained
                 if e.selection is not None and e.selection.index is not None}
        return list(found.values())

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: fp32 master values, their gradients, AdamW states and the stored indices of scatter masks."""
        masters = [e.master for e in self._trained if e.master is not None]
        states = [v for s in self._base.state.values() for v in s.values() if isinstance(v, torch.Tensor)
                  and v.dim() > 0]
        return {"masters": sum(local_nbytes(m) for m in masters),
                "grads": sum(local_nbytes(m.grad) for m in masters if m.grad is not None),
                "optimizer_states": sum(local_nbytes(v) for v in states),
                "mask_indices": sum(local_nbytes(i) for i in self.mask_indices())}

    def describe(self) -> dict:
        return {"period": self.period, "step_in_period": self.step_in_period, "global_step": self.global_step,
                "update_ratio": self.update_ratio, "mask_mode": self.mask_mode,
                "trainable_entries": self.trainable_entries, "trainable_parameters": len(self._trained),
                "held_bytes": self.memory_bytes()}

    # --- persistence -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "config": {"names": self.trainable_parameter_names, "mask_mode": self.mask_mode,
                       "counts": [e.count for e in self._trained]},
            "schedule": {"global_step": self.global_step, "step_in_period": self.step_in_period,
                         "period": self.period, "switch_every": self.switch_every},
            "offsets": {e.name: e.offset for e in self._trained},
            "seeds": {e.name: e.seed for e in self._trained},
            "selections": {e.name: e.selection.index for e in self._trained if e.selection.index is not None},
            "masters": [e.master.detach() for e in self._trained],
            "adamw": self._base.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_FORMAT:
            raise ValueError(f"not a BlockOptimizerRatio state dict (expected format {STATE_FORMAT!r}); badam 1.4's "
                             "state dict lacks the masks, offsets and masters needed to resume")
        config = state_dict["config"]
        mine = {"names": self.trainable_parameter_names, "mask_mode": self.mask_mode,
                "counts": [e.count for e in self._trained]}
        for key, value in mine.items():
            if config[key] != value:
                raise ValueError(f"cannot resume: the saved {key} differ from this optimizer's (built over another "
                                 "model or with other update_ratio / mask settings)")
        schedule = state_dict["schedule"]
        self.global_step, self.step_in_period = schedule["global_step"], schedule["step_in_period"]
        self.period, self.switch_every = schedule["period"], schedule["switch_every"]
        for entry in self._trained:
            entry.offset, entry.seed = state_dict["offsets"][entry.name], state_dict["seeds"][entry.name]
        self._start_period(saved_selections=state_dict["selections"])
        with torch.no_grad():
            for entry, saved in zip(self._trained, state_dict["masters"]):
                entry.master.copy_(saved)
        if self.step_in_period != 0:
            self._period_rounding = None  # the period began before the save: its start values are not known here
        groups = self.param_groups
        self._base.load_state_dict(state_dict["adamw"])
        for own, loaded in zip(groups, self._base.param_groups):  # keep the dict objects schedulers hold
            params = own["params"]
            own.clear()
            own.update(loaded)
            own["params"] = params
        self._base.param_groups = groups
        self.state = self._base.state

