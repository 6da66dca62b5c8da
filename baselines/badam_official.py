"""The official badam 1.4 BlockOptimizer as a reference method, for side-by-side measurements with our `badam`.

It runs as its users run it: AdamW base optimizer over all parameters, the official wrapper, bf16 gradients on the
model (1.4 casts them to fp32 only inside step), clipping on those model gradients. badam 1.4 finds blocks only in
parameter names containing `layers.N.` (Llama-style); other models (BERT `layer.N.`, GPT-2 `h.N.`) get a
MethodUnsupportedError — use method `badam` for them.
"""
from __future__ import annotations

import dataclasses
import itertools
import re

import torch
from torch import nn

from badam import load_official
from baselines.adam import AdamOptions, make_adamw
from baselines.base import Method, optimizer_state_tensors, tensor_bytes
from baselines.errors import MethodUnsupportedError
from baselines.model_parts import task_head_names

OFFICIAL_SWITCH_MODES = ("random", "ascending", "descending", "fixed")
# badam 1.4's own block pattern (BlockOptimizer.infer_param_groups)
_OFFICIAL_LAYER_PATTERN = re.compile(r".*layers.[^.]*\.")


@dataclasses.dataclass
class BAdamOfficialOptions(AdamOptions):
    switch_block_every: int = 100
    switch_mode: str = "random"
    start_block: int | None = None
    include_embedding: bool = False
    include_lm_head: bool = False
    active_modules: list[str] | None = None  # None: the task head when the model has one

    def __post_init__(self):
        super().__post_init__()
        if int(self.switch_block_every) != self.switch_block_every or self.switch_block_every < 1:
            raise ValueError(f"switch_block_every must be an integer >= 1; got {self.switch_block_every}")
        if self.switch_mode not in OFFICIAL_SWITCH_MODES:
            raise ValueError(f"switch_mode {self.switch_mode!r} is not valid; "
                             f"choose one of {', '.join(OFFICIAL_SWITCH_MODES)}")


class BAdamOfficial(Method):
    """badam 1.4's BlockOptimizer around AdamW.

    memory_split: parameters = the model weights; gradients = bf16 gradients on the active block's parameters plus
    the fp32 copies 1.4 makes inside step; optimizer_states = 1.4's fp32 copies of the active block and AdamW moments.
    """

    name = "badam_official"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    Options = BAdamOfficialOptions
    description = "the official badam 1.4 BlockOptimizer (side-by-side reference; installed apart by setup_env.sh)"
    fsdp2_note = ("the official badam 1.4 runs here because it only toggles requires_grad and keeps fp32 copies with "
                  ".float(); its DeepSpeed ZeRO-3 path is not used")
    grad_norm_over = "active_block"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        names = [n for n, _ in model.named_parameters()]
        if not any(_OFFICIAL_LAYER_PATTERN.match(n) for n in names):
            raise MethodUnsupportedError(
                "badam_official (badam 1.4) finds blocks only in parameter names containing 'layers.N.'; this model's "
                f"names look like {names[:3]}. Use method 'badam', which handles any '<path>.<int>.' layer stack.")
        return model

    def build_optimizer(self, model: nn.Module) -> None:
        official = load_official()
        o = self.options
        active = list(o.active_modules) if o.active_modules is not None else task_head_names(model)
        self.named_parameters = list(model.named_parameters())
        base = make_adamw([p for _, p in self.named_parameters], self.lr, o, self.weight_decay)
        self.optimizer = official.BlockOptimizer(
            base_optimizer=base, named_parameters_list=self.named_parameters, switch_block_every=o.switch_block_every,
            start_block=o.start_block, switch_mode=o.switch_mode, active_modules=active,
            include_embedding=o.include_embedding, include_lm_head=o.include_lm_head, verbose=0)

    # --- one step ----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.Tensor]:
        return list(self.optimizer.param_idx2lp.values())  # 1.4 keeps gradients on the bf16 parameters until step

    def zero_grad(self) -> None:
        for p in self.optimizer.param_idx2lp.values():
            p.grad = None

    # --- measurement and persistence ----------------------------------------------------------------------------
    def memory_split(self, model: nn.Module) -> dict[str, int]:
        params = list(model.parameters())
        hp = list(self.optimizer.param_idx2hp.values())
        return {
            "parameters": tensor_bytes(params),
            "gradients": tensor_bytes(itertools.chain((p.grad for p in params), (h.grad for h in hp))),
            "optimizer_states": tensor_bytes(itertools.chain(
                optimizer_state_tensors(self.optimizer.base_optimizer), hp)),
        }

    def describe(self) -> dict:
        opt = self.optimizer
        # 1.4 advances current_block_idx right after a switch (it points at the NEXT block), so the active block is
        # recovered from the prefixes it made trainable: the block's own prefixes followed by active_modules.
        prefixes = list(opt.active_param_prefixs)
        own = prefixes[:len(prefixes) - len(opt.active_modules)]
        active = opt.block_prefix_list.index(own) if own in opt.block_prefix_list else None
        return {"active_block": active, "active_block_name": " ".join(own), "num_blocks": opt.block_num}

    def state_dict(self) -> dict:
        """1.4's own state_dict is only the base optimizer's; a resume also needs the schedule position and the fp32
        copies of the active block, which are taken from 1.4's attributes here."""
        opt = self.optimizer
        return {
            "base_optimizer": opt.base_optimizer.state_dict(),
            "active_param_prefixs": list(opt.active_param_prefixs),
            "hp": {int(i): h.detach() for i, h in opt.param_idx2hp.items()},
            "current_block_idx": opt.current_block_idx,
            "block_order": list(getattr(opt, "block_order", [])),
            "global_step": opt.global_step,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        opt = self.optimizer
        opt.active_param_prefixs = list(state["active_param_prefixs"])
        opt._switch_trainable_params_single_gpu(verbose=0)  # rebuild the active block's trainable set and fp32 copies
        if sorted(opt.param_idx2hp) != sorted(state["hp"]):
            raise ValueError("badam_official: the checkpoint's active block does not match this model's parameters")
        for i, value in state["hp"].items():
            opt.param_idx2hp[int(i)].copy_(value)
        opt.base_optimizer.load_state_dict(state["base_optimizer"])
        opt.current_block_idx = state["current_block_idx"]
        if opt.switch_mode == "random":
            opt.block_order = list(state["block_order"])
        opt.global_step = state["global_step"]
