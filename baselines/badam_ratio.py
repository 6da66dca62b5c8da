"""BAdam's ratio mode: every weight matrix trains a fraction of its entries at a time (badam.BlockOptimizerRatio).

Defaults are badam 1.4's BlockOptimizerRatio defaults (update_ratio 0.1, a new adjacent mask every 100 steps,
parameters under 100 entries trained fully, embeddings and lm_head frozen). A task head created from scratch (a
classifier) trains fully, as BAdam's active_modules does. Not available under FSDP2 (the selection works on whole,
unsharded parameters).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import torch
from torch import nn

from badam import MASK_MODES, BlockOptimizerRatio
from baselines.adam import AdamOptions
from baselines.base import Method, optimizer_state_tensors, storage_key, tensor_bytes
from baselines.errors import MethodUnsupportedError
from baselines.model_parts import task_head_names


@dataclasses.dataclass
class BAdamRatioOptions(AdamOptions):
    update_ratio: float = 0.1
    switch_every: int = 100
    mask_mode: str = "adjacent"
    preserve_threshold: int = 100
    keep_mask: bool = True
    include_embedding: bool = False
    include_lm_head: bool = False
    param_update_ratios: dict[str, float] | None = None  # {name substring: ratio}
    seed: int | None = None  # draws the per-parameter mask seeds (None: from torch's global RNG)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.update_ratio, bool) or not 0.0 < float(self.update_ratio) <= 1.0:
            raise ValueError(f"update_ratio must be a number in (0, 1]; got {self.update_ratio}")
        self.update_ratio = float(self.update_ratio)
        if isinstance(self.switch_every, bool) or int(self.switch_every) != self.switch_every or self.switch_every < 1:
            raise ValueError(f"switch_every must be an integer >= 1; got {self.switch_every}")
        self.switch_every = int(self.switch_every)
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode {self.mask_mode!r} is not valid; choose one of {', '.join(MASK_MODES)}")


class BAdamRatio(Method):
    """BlockOptimizerRatio (sparse AdamW on the selected entries, fp32 masters and states for those only).

    memory_split: parameters = every model weight as stored; gradients = fp32 gradients of the selected entries (plus
    any p.grad); optimizer_states = fp32 master values and AdamW moments of the selected entries, and the index
    tensors of scatter masks. About 16 bytes per selected entry: 1.6 bytes per parameter at update_ratio 0.1.
    """

    name = "badam_ratio"
    Options = BAdamRatioOptions
    description = "BAdam's ratio mode: a fraction of each matrix's entries trains with AdamW, the mask moves every K"
    fsdp2_unsupported = ("it selects entries of whole parameters, which FSDP2 splits into shards; BlockOptimizerRatio "
                         "refuses sharded parameters")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)  # BlockOptimizerRatio freezes the embedding and head as its options say
        return model

    def build_optimizer(self, model: nn.Module) -> None:
        if any(hasattr(p, "_local_tensor") for p in model.parameters()):
            raise MethodUnsupportedError("badam_ratio selects entries of whole parameters and does not run on FSDP2 "
                                         "shards; use method 'badam' with train.distributed=fsdp2")
        o = self.options
        ratios = {f"{head}.": 1.0 for head in task_head_names(model)}  # a fresh classifier trains fully
        ratios.update(o.param_update_ratios or {})
        fused = o.fused if o.fused is not None else all(p.is_cuda for p in model.parameters())
        self.optimizer = BlockOptimizerRatio(
            [{"params": list(model.parameters())}], list(model.named_parameters()), update_ratio=o.update_ratio,
            verbose=0, switch_every=o.switch_every, preserve_threshold=o.preserve_threshold,
            param_update_ratios=ratios, mask_mode=o.mask_mode, keep_mask=o.keep_mask,
            include_embedding=o.include_embedding, include_lm_head=o.include_lm_head, seed=o.seed,
            optimizer_defaults=dict(lr=self.lr, betas=o.betas, eps=o.eps, weight_decay=self.weight_decay,
                                    fused=fused or None))

    # --- one step ----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.Tensor]:
        return self.optimizer.masters  # fp32 values of the selected entries; their .grad is the gradient

    def clip_and_norm(self, max_norm: float | None) -> float | None:
        if not any(m.grad is not None for m in self.optimizer.masters):
            return None
        return float(self.optimizer.clip_grad_norm_(max_norm if max_norm is not None and max_norm > 0 else math.inf))

    # --- measurement and persistence ----------------------------------------------------------------------------
    def memory_split(self, model: nn.Module) -> dict[str, int]:
        params = list(model.parameters())
        param_ptrs = {storage_key(p) for p in params}
        masters = [m for m in self.optimizer.masters if storage_key(m) not in param_ptrs]
        return {
            "parameters": tensor_bytes(params),
            "gradients": tensor_bytes(itertools.chain((p.grad for p in params), (m.grad for m in masters))),
            "optimizer_states": tensor_bytes(itertools.chain(optimizer_state_tensors(self.optimizer), masters,
                                                             self.optimizer.mask_indices())),
        }

    def describe(self) -> dict:
        info = self.optimizer.describe()
        return {"mask_period": info["period"], "trainable_entries": info["trainable_entries"]}
