"""LoRA through peft: frozen bf16 base weights, fp32 low-rank adapters trained with AdamW.

Defaults follow the paper's LoRA baseline: adapters on every linear map of every transformer layer (q, k, v, o, gate,
up, down for Llama), alpha = 4 × rank. An encoder classifier's freshly initialised head stays fully trainable
(peft's modules_to_save), as the paper's SuperGLUE runs do.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from baselines.adam import AdamOptions, make_adamw
from baselines.model_parts import linear_module_names_in_layers, task_head_names
from baselines.precision import MasterWeightMethod

ADAPTER_DTYPES = ("fp32", "bf16")


@dataclasses.dataclass
class LoRAOptions(AdamOptions):
    rank: int = 100  # the paper's LoRA rank for the Llama runs (its Table 2 also shows rank 8)
    alpha: float | None = None  # None: 4 × rank
    dropout: float = 0.1  # lora_dropout default of the LLaMA-Factory copy in the BAdam repository
    target_modules: list[str] | None = None  # None: every linear layer inside the transformer layers
    modules_to_save: list[str] | None = None  # None: the task head (classifier/score) when the model has one
    # fp32: adapters stored in fp32 (peft's default, 16 bytes per adapter parameter with AdamW). bf16: adapters stored
    # like the base weights with fp32 masters (18 bytes), which is what the paper's Table 2 LoRA figures imply
    # (Llama 3-8B, rank 100: +0.6 GB parameters, 1.0 GB gradients, 3.1 GB optimizer states for ~0.26 B adapter
    # parameters).
    adapter_dtype: str = "fp32"

    def __post_init__(self):
        super().__post_init__()
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"rank must be a positive integer; got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (or null for 4 × rank); got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise ValueError(f"adapter_dtype {self.adapter_dtype!r} is not valid; choose one of "
                             f"{', '.join(ADAPTER_DTYPES)}")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 4.0 * self.rank


class LoRA(MasterWeightMethod):
    """peft LoRA trained with AdamW.

    By default adapters are fp32 (peft's autocast_adapter_dtype), so they are their own masters; bf16 adapters
    (adapter_dtype="bf16") and a trainable bf16 task head get fp32 masters as in any full-parameter method.
    memory_split: "parameters" counts the frozen base weights AND the adapters (they are parameters of the wrapped
    model); "gradients" the adapter (and head) gradients; "optimizer_states" AdamW's fp32 moments plus the fp32
    master copies of bf16 trainables.
    """

    name = "lora"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    ddp_unsupported = None  # experiments/ddp.py; tests/distributed compare it with one process
    Options = LoRAOptions
    description = "low-rank adapters (rank r) on every linear map of the layers, trained with AdamW (peft)"
    requirements = ("peft>=0.12",)
    extra = "methods"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        o = self.options
        targets = list(o.target_modules) if o.target_modules is not None else linear_module_names_in_layers(model)
        heads = list(o.modules_to_save) if o.modules_to_save is not None else task_head_names(model)
        config = LoraConfig(r=int(o.rank), lora_alpha=o.lora_alpha, lora_dropout=o.dropout,
                            target_modules=targets, modules_to_save=heads or None, bias="none")
        self.lora_config = config
        with warnings.catch_warnings():
            # peft (0.21) reads transformers' deprecated is_gradient_checkpointing alias: a FutureWarning in every LoRA
            # run that asks nothing of its user (the student's default run showed it as if something had failed)
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            # autocast_adapter_dtype=False leaves the adapters in the base weights' dtype (they then get fp32 masters)
            return get_peft_model(model, config, autocast_adapter_dtype=o.adapter_dtype == "fp32")

    @classmethod
    def compile_layers_options(cls, backend: str) -> dict:
        # Inductor's defaults skip some of the bf16 roundings eager performs between the operations it fuses. On one
        # H100 (Llama 3-8B random init, bf16; results/bench/compile_layers_h100x1/README.md, "LoRA probe") that made
        # the first AdamW step at lr 1e-6 lower the loss 0.018-0.024 more than eager or fp32 did (0.001-0.002, the
        # reference), whatever the dropout, adapter dtype or alpha; with emulate_precision_casts, which rounds where
        # eager rounds, the same step moved the loss by +0.0006 against eager's +0.0016 and fp32's -0.0011. Not
        # reproduced on the CPU. BAdam's compiled bf16 runs show no such offset, so only LoRA asks for it.
        return {"emulate_precision_casts": True} if backend == "inductor" else {}

    def make_optimizer(self, param_groups):
        return make_adamw(param_groups, self.lr, self.options, self.weight_decay)

    def describe(self) -> dict:
        return {"lora_rank": int(self.options.rank), "lora_alpha": self.options.lora_alpha}

    @staticmethod
    def merge(model: nn.Module) -> nn.Module:
        """Fold the adapters into the base weights (W + alpha/r · B A) and return the plain transformers model; used
        by the rank analysis, which compares merged weights with the pretrained ones."""
        if not hasattr(model, "merge_and_unload"):
            raise TypeError(f"LoRA.merge expects the peft model returned by prepare_model; got {type(model).__name__}")
        return model.merge_and_unload()
