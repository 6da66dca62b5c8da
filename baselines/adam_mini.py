"""Adam-mini (Zhang, Chen, Li, Ding, Wu, Kingma, Ye, Luo, Sun 2024, arXiv 2406.16793; pip `adam-mini` 1.1.1, MIT).

Adam keeps one second-moment value per parameter; Adam-mini keeps one per block of parameters that share a Hessian
block: per head for queries and keys, per output neuron (row) for values, attention output, MLP matrices, embeddings
and the LM head, one per tensor for norm weights; biases keep Adam's. The first moment stays full, so the optimizer
state is about 4 bytes per parameter instead of AdamW's 8 (the paper's "45-50 % less memory" is of the optimizer
states). The blocks are found from parameter names, and the head size from the model config (hidden size, heads,
key/value heads), which this method reads from `model.config`.

Mixed precision as `adam`: fp32 masters and fp32 gradients of bf16 weights, Adam-mini over the masters (named like
the model's parameters, which is what adam_mini reads). Total: 2 (weights) + 4 (gradients) + 4 (masters) + 4 (first
moment) + ~0 = about 14 bytes per parameter, against Adam's 18.

Two adjustments of the package's settings, both from the model rather than the package's guesses:
  * `head_numel`: adam_mini assumes head_dim = hidden / heads; models with an explicit `head_dim` get their real one.
  * `world_size`: adam_mini takes torch.cuda.device_count() as the number of processes and then all-gathers in a
    single process on a multi-GPU machine; it is set to the real process-group size (1 without one).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.adam import AdamOptions
from baselines.errors import MethodUnsupportedError
from baselines.precision import MasterWeightMethod

@dataclasses.dataclass
class AdamMiniOptions(AdamOptions):
    # the package's defaults: betas (0.9, 0.999), eps 1e-8 (AdamOptions' values); weight decay is the common key

    def __post_init__(self):
        super().__post_init__()
        if self.fused is not None:
            raise ValueError("fused selects torch AdamW's kernel; adam_mini has its own update and no fused option "
                             "(leave fused unset)")


def transformer_shape(model: nn.Module) -> dict:
    """hidden size, heads, key/value heads and head size from a transformers config (Llama-style names)."""
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if hidden is None or heads is None:
        raise MethodUnsupportedError("adam_mini needs the model's hidden_size and num_attention_heads (from "
                                     "model.config) to find its per-head blocks; this model has no such config")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {"dim": int(hidden), "n_heads": int(heads), "n_kv_heads": int(kv_heads), "head_dim": int(head_dim)}


def process_count() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class AdamMini(MasterWeightMethod):
    """Adam-mini on fp32 masters. memory_split (see MasterWeightMethod): optimizer_states = masters + Adam-mini's
    state (full first moments, one second moment per block)."""

    name = "adam_mini"
    Options = AdamMiniOptions
    description = "Adam with one second moment per head / neuron / tensor instead of per parameter (Adam-mini)"
    requirements = ("adam-mini>=1.1.1",)
    extra = "methods"
    fsdp2_unsupported = ("adam-mini 1.1.1 all-reduces the second moment of single-value blocks (norm weights) by "
                         "moving it to CUDA, which fails under gloo ('Torch not compiled with CUDA enabled'); on GPUs "
                         "its sharded path was not verified against one process")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        try:
            import adam_mini  # noqa: F401
        except ImportError as exc:
            raise MethodUnsupportedError(f"adam_mini needs the package adam-mini ({exc}); {self.install_hint()}") from exc
        self.shape = transformer_shape(model)
        return super().prepare_model(model)

    def param_groups(self, named_masters):
        return named_masters  # adam_mini takes (name, tensor) pairs and makes its own groups

    def make_optimizer(self, named_masters):
        from adam_mini import Adam_mini

        s = self.shape
        optimizer = Adam_mini(named_masters, lr=self.lr, betas=self.options.betas, eps=self.options.eps,
                              weight_decay=self.weight_decay, dim=s["dim"], n_heads=s["n_heads"],
                              n_kv_heads=s["n_kv_heads"], verbose=False)
        optimizer.head_numel = s["dim"] * s["head_dim"]  # one query/key head: head_dim rows of `dim` columns
        optimizer.world_size = process_count()
        return optimizer

    def describe(self) -> dict:
        return {"adam_mini_head_numel": int(self.optimizer.head_numel)}
