"""Persistence of a BlockOptimizer: its state dict holds the block schedule, the generator of the random order, the
active block's fp32 masters and the base optimizer's state, so a resumed run continues the same schedule bitwise."""
from __future__ import annotations

import torch

STATE_FORMAT = "badam-bench/BlockOptimizer/1"


class BlockStateMixin:
    """state_dict / load_state_dict of BlockOptimizer (badam/block_optimizer.py), which provides the attributes."""

    def state_dict(self) -> dict:
        """Everything needed to continue the same run: schedule, generator, base-optimizer state, fp32 masters.
        Restore the model's weights first, then call load_state_dict on a BlockOptimizer built the same way."""
        return {
            "format": STATE_FORMAT,
            "schedule": {
                "num_blocks": self.num_blocks, "switch_mode": self.switch_mode,
                "switch_block_every": self.switch_block_every, "block_prefix_list": self.block_prefix_list,
                "order": list(self._order), "order_pos": self._order_pos, "block_epoch": self.block_epoch,
                "step_in_block": self.step_in_block, "global_step": self.global_step,
                "generator_state": self._generator.get_state(),
            },
            "masters": [m.detach() for m in self.masters],
            "base_optimizer": self._base_state_dict(),
        }

    def _base_state_dict(self) -> dict:
        with self._groups_hold_masters():  # torch keys the state by the tensors listed in the groups
            state = self.base_optimizer.state_dict()
        return state

    def _check_saved_masters(self, schedule: dict, saved: list) -> None:
        """The saved masters fit the saved active block of this model (same count, same shapes)."""
        block = schedule["order"][schedule["order_pos"]]
        params = list({id(p): p for p in self._block_params[block] + self._always_params}.values())
        if len(saved) != len(params):
            raise ValueError(f"cannot resume: {len(saved)} saved masters, the saved active block {block} has "
                             f"{len(params)} parameters here")
        shards = self._frozen_shards  # a sharded frozen block's parameters have empty storage: their shapes are kept
        for param, value in zip(params, saved):
            shape = tuple(param.shape if shards is None else shards.shape_of(param))
            if shape != tuple(value.shape):
                raise ValueError(f"cannot resume: the saved master of {self._param_names[id(param)]} has shape "
                                 f"{tuple(value.shape)}, this model's {shape}; the state dict comes from another model")

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_FORMAT:
            raise ValueError(f"not a BlockOptimizer state dict (expected format {STATE_FORMAT!r}); a plain torch "
                             "optimizer or badam 1.4 state dict lacks the block schedule and cannot resume one")
        schedule = state_dict["schedule"]
        for key in ("num_blocks", "switch_mode", "block_prefix_list"):
            mine = getattr(self, key)
            if schedule[key] != mine:
                raise ValueError(f"cannot resume: saved {key} {schedule[key]!r} differs from this optimizer's {mine!r}")
        self._check_saved_masters(schedule, state_dict["masters"])  # before anything here changes
        self.switch_block_every = schedule["switch_block_every"]
        self._order = list(schedule["order"])
        self._order_pos = schedule["order_pos"]
        self.block_epoch = schedule["block_epoch"]
        self.step_in_block = schedule["step_in_block"]
        self.global_step = schedule["global_step"]
        self._generator.set_state(schedule["generator_state"].cpu())  # accelerate may have moved it to the device
        self._activate(self.current_block, event="resume")
        saved = state_dict["masters"]
        with torch.no_grad():
            for master, value in zip(self._masters.masters, saved):
                master.copy_(value)
        if self.step_in_block == 0 and self.switch_mode != "fixed":
            self._begin_visit_rounding()  # the saved visit had not begun: it starts from the weights restored now
        groups = self.param_groups
        rest = [group["params"] for group in groups]
        with self._groups_hold_masters():
            self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        # torch's load_state_dict builds new group dicts; copy their values into ours so the dicts stay the same
        for mine, loaded, params in zip(groups, self.base_optimizer.param_groups, rest):
            mine.clear()
            mine.update(loaded)
            mine["params"] = params
        self.base_optimizer.param_groups = groups
        self.state = self.base_optimizer.state
