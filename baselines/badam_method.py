"""BAdam and BSGD: block coordinate descent through badam.BlockOptimizer, with AdamW or SGD as the inner solver.

Only the active block trains; it alone holds an fp32 master copy, an fp32 gradient and optimizer state, and it gets
K = switch_block_every steps before the next block takes over (the BlockOptimizer owns the schedule, the masters and
the switch). Defaults follow the BAdam repository's Llama instruction-tuning command (K = 100, random order).

Gradients stay on the model's p.grad (BlockOptimizer's default, what users of the library get); under FSDP2 they are
folded into the fp32 masters during backward instead (``gradients="master"``), because FSDP2 adds micro-batch gradients
into p.grad itself, in bf16. ``method.gradients`` chooses explicitly.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import statistics

import torch
from torch import nn

from badam import SWITCH_MODES, BlockOptimizer, attention_mlp_blocks, infer_block_prefixes, matrix_blocks
from badam.mixed_precision import GRADIENT_MODES
from badam.rounding import KEPT_WARNING_THRESHOLD
from baselines.adam import AdamOptions, make_adamw
from baselines.base import Method, optimizer_state_tensors, storage_key, tensor_bytes
from baselines.model_parts import task_head_names
from baselines.sgd import SGDOptions

PARTITIONS = ("layers", "attn_mlp", "matrix")


@dataclasses.dataclass
class BlockOptions:
    switch_block_every: int = 100  # K
    switch_mode: str = "random"
    start_block: int | None = None
    include_embedding: bool = False
    include_lm_head: bool = False
    active_modules: list[str] | None = None  # None: the task head (classifier/score) when the model has one
    partition: str = "layers"
    seed: int | None = None  # seed of the random block order (None: drawn from torch's global RNG)
    gradients: str | None = None  # "param" | "master" (BlockOptimizer's gradients=); None: param, master under FSDP2
    # BlockOptimizer(measure_rounding=): per visit, the share of the update the bf16 weights keep when the block's fp32
    # masters are dropped (badam/rounding.py); metrics.jsonl's badam_rounding on switch steps, summary.json's block.
    # Costs 2 bytes per active-block parameter; not under FSDP2.
    measure_rounding: bool = False
    # BlockOptimizer.overlap_update (badam/overlap.py), on CUDA only: the update, its clip and under ddp the wait for
    # the all-reduce on a side stream, overlapping the next forward. metrics.jsonl's grad_norm is then null (reading
    # it every step would make the host wait for the update); the clip itself still applies. On a CPU: no effect.
    overlap_update: bool = False

    def __post_init__(self):
        super().__post_init__()  # the inner solver's options (next in the MRO)
        if isinstance(self.switch_block_every, bool) or int(self.switch_block_every) != self.switch_block_every \
                or self.switch_block_every < 1:
            raise ValueError(f"switch_block_every must be an integer >= 1; got {self.switch_block_every}")
        self.switch_block_every = int(self.switch_block_every)
        if self.switch_mode not in SWITCH_MODES:
            raise ValueError(f"switch_mode {self.switch_mode!r} is not valid; choose one of {', '.join(SWITCH_MODES)}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition {self.partition!r} is not valid; choose one of {', '.join(PARTITIONS)}")
        if self.gradients is not None and self.gradients not in GRADIENT_MODES:
            raise ValueError(f"gradients {self.gradients!r} is not valid; choose one of {', '.join(GRADIENT_MODES)} "
                             "or null (automatic)")


@dataclasses.dataclass
class BAdamOptions(BlockOptions, AdamOptions):
    pass


@dataclasses.dataclass
class BSGDOptions(BlockOptions, SGDOptions):
    pass


def block_prefix_list(model: nn.Module, options: BlockOptions) -> list[list[str]] | None:
    """The partition as BlockOptimizer's block_prefix_list; None lets it infer one block per layer itself."""
    if options.partition == "layers":
        return None
    named = list(model.named_parameters())
    blocks = attention_mlp_blocks(named) if options.partition == "attn_mlp" else matrix_blocks(named)
    if options.include_embedding or options.include_lm_head:
        # infer_block_prefixes puts the embedding block first and the head block last, around the layer blocks
        around = infer_block_prefixes(named, options.include_embedding, options.include_lm_head)
        if options.include_embedding:
            blocks = [around[0]] + blocks
        if options.include_lm_head:
            blocks = blocks + [around[-1]]
    return blocks


def is_sharded(model: nn.Module) -> bool:
    """True when the parameters are FSDP2 shards (DTensors)."""
    return any(hasattr(p, "_local_tensor") for p in model.parameters())


class BAdam(Method):
    """BlockOptimizer around AdamW.

    memory_split: parameters = every model weight as stored (bf16); gradients = the active block's p.grad (bf16), fp32
    accumulation sums and gradients on the masters; optimizer_states = the active block's fp32 masters and AdamW
    moments. With bf16 weights and one micro-batch per step that is 2 bytes per model parameter plus 14 per
    active-block parameter (16 with "master" gradients or with accumulation: 18). With train.ddp_shard_frozen the
    frozen blocks count as the shards this rank holds.
    """

    name = "badam"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    ddp_unsupported = None  # experiments/ddp.py; tests/distributed compare it with one process
    frozen_sharding_unsupported = None  # tests/distributed: sharded ddp equals replicated ddp bit for bit
    Options = BAdamOptions
    description = "block coordinate descent: one block (a layer) trains with AdamW for K steps, then the next (BAdam)"
    grad_norm_over = "active_block"

    @classmethod
    def compile_layers_problem(cls, options, backend: str) -> str | None:
        # layers / attn_mlp: 3 / 4 graphs in training (below the active block, its part(s), above it)
        if options.partition == "matrix":
            return ("partition=matrix makes each of a layer's tensors a block: one Dynamo graph per tensor, more than "
                    "torch's recompile limit allows (use partition=layers or attn_mlp)")
        return super().compile_layers_problem(options, backend)

    @classmethod
    def frozen_sharding_problem(cls, options) -> str | None:
        if getattr(options, "overlap_update", False):
            return ("overlap_update writes the updated weights while a block switch cuts them into shards; leave one "
                    "of overlap_update and train.ddp_shard_frozen off")
        return super().frozen_sharding_problem(options)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model  # BlockOptimizer freezes everything but the active block

    def base_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return make_adamw(params, self.lr, self.options, self.weight_decay)

    def build_optimizer(self, model: nn.Module) -> None:
        o = self.options
        active = list(o.active_modules) if o.active_modules is not None else task_head_names(model)
        for p in model.parameters():
            p.requires_grad_(True)  # BlockOptimizer decides what trains; it needs every parameter to consider
        self.events: list[dict] = []
        gradients = o.gradients or ("master" if is_sharded(model) else "param")
        self.optimizer = BlockOptimizer(
            self.base_optimizer(list(model.parameters())), list(model.named_parameters()),
            block_prefix_list=block_prefix_list(model, o), switch_block_every=o.switch_block_every,
            start_block=o.start_block, switch_mode=o.switch_mode, active_modules=active,
            include_embedding=o.include_embedding, include_lm_head=o.include_lm_head, verbose=0,
            log_fn=self.events.append, seed=o.seed, gradients=gradients, measure_rounding=o.measure_rounding,
            # the harness stores the weights in the config's model.dtype (bf16 unless a config says fp32, as the CPU
            # profiles do) and summary.json splits the bytes: the library's fp32 warning would only repeat the config
            full_precision_ok=True)
        if o.overlap_update and next(model.parameters()).device.type == "cuda":
            max_norm = getattr(self, "_max_grad_norm", None)
            self.optimizer.overlap_update(model, max_grad_norm=max_norm if max_norm and max_norm > 0 else None)

    @property
    def update_overlapped(self) -> bool:
        """True when updates run on a side CUDA stream (the loop's step timer then waits for its stream only)."""
        return getattr(self, "optimizer", None) is not None and self.optimizer.overlap_active

    def set_max_grad_norm(self, max_norm: float | None) -> None:
        self._max_grad_norm = max_norm  # overlap_update clips inside the queued update

    # --- one step ----------------------------------------------------------------------------------------------
    # trainable_parameters(): the base class's, the optimizer's param groups, which list the tensors holding the
    # gradient between steps (the active block's parameters; its fp32 masters in "master" mode)

    def clip_and_norm(self, max_norm: float | None) -> float | None:
        """The norm (fp32) of the gradients step() will use, clipped to max_norm when given (None when there is none,
        and with the update overlapped: it clips inside step() then)."""
        if not self.optimizer.gradient_tensors() or self.update_overlapped:
            return None
        return float(self.optimizer.clip_grad_norm_(max_norm if max_norm is not None and max_norm > 0 else math.inf))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # --- measurement and persistence ----------------------------------------------------------------------------
    def memory_split(self, model: nn.Module) -> dict[str, int]:
        params = list(model.parameters())
        param_ptrs = {storage_key(p) for p in params}
        copies = [m for m in self.optimizer.masters if storage_key(m) not in param_ptrs]
        shards = self.optimizer.frozen_shards  # frozen blocks sharded (train.ddp_shard_frozen): their parts held here
        return {
            "parameters": tensor_bytes(params) + (shards.shard_bytes() if shards is not None else 0),
            "gradients": tensor_bytes(itertools.chain((p.grad for p in params), self.optimizer.gradient_tensors())),
            "optimizer_states": tensor_bytes(itertools.chain(optimizer_state_tensors(self.optimizer.base_optimizer),
                                                             copies)),
        }

    def describe(self) -> dict:
        info = self.optimizer.describe()
        out = {"active_block": info["active_block"], "active_block_name": " ".join(info["active_block_prefixes"]),
               "block_epoch": info["block_epoch"], "num_blocks": info["num_blocks"]}
        visit = self.optimizer.last_visit_rounding
        if visit is not None and visit["global_step"] == self.optimizer.global_step:  # a visit ended at this step
            out["badam_rounding"] = {k: visit[k] for k in ROUNDING_RECORD_KEYS}
        return out

    def summarize_records(self, records: list[dict]) -> dict:
        """summary.json's badam_rounding block (with measure_rounding): over the visits recorded in metrics.jsonl."""
        if not self.options.measure_rounding:
            return {}
        return {"badam_rounding": rounding_summary([r["badam_rounding"] for r in records if r.get("badam_rounding")])}


ROUNDING_RECORD_KEYS = ("block", "update_kept", "elements_frozen", "update_norm", "elements", "dtype")


def rounding_summary(visits: list[dict]) -> dict:
    """Median / minimum share of each visit's update kept by the stored weights, median share of frozen elements,
    and how many visits kept less than badam.rounding.KEPT_WARNING_THRESHOLD (None where no visit was measured:
    fp32 weights are their own masters, so nothing is lost or measured)."""
    kept = [v["update_kept"] for v in visits if v.get("update_kept") is not None]
    frozen = [v["elements_frozen"] for v in visits if v.get("elements_frozen") is not None]
    return {"visits": len(visits), "median_update_kept": statistics.median(kept) if kept else None,
            "min_update_kept": min(kept) if kept else None,
            "median_elements_frozen": statistics.median(frozen) if frozen else None,
            "visits_below_threshold": sum(k < KEPT_WARNING_THRESHOLD for k in kept),
            "threshold": KEPT_WARNING_THRESHOLD,
            "dtype": ",".join(sorted({v["dtype"] for v in visits})) or None}


class BSGD(BAdam):
    """BlockOptimizer around SGD (the paper's BCD-with-SGD ablation). memory_split as BAdam; with momentum 0 the
    active block costs 8 bytes per parameter (fp32 master and gradient; 4 more for a momentum buffer)."""

    name = "bsgd"
    Options = BSGDOptions
    description = "block coordinate descent with SGD inside the active block (the paper's BSGD ablation)"

    def base_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        o = self.options
        return torch.optim.SGD(params, lr=self.lr, momentum=o.momentum, dampening=o.dampening,
                               nesterov=o.nesterov, weight_decay=self.weight_decay)
