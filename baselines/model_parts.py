"""Finding the parts of a transformer that methods treat specially: the repeated layers, the linear maps inside them,
and the randomly initialised task head of an encoder classifier.

Layer names differ between architectures: Llama/Mistral/Qwen `model.layers.N.`, BERT/RoBERTa `encoder.layer.N.`,
GPT-2 `transformer.h.N.`; one pattern covers them.
"""
from __future__ import annotations

import re

from torch import nn

LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")

# Heads that transformers' *ForSequenceClassification / *ForTokenClassification / *ForQuestionAnswering create
# from scratch. (BERT's pooler is pretrained, so it is not listed.)
TASK_HEAD_NAMES = ("classifier", "score", "qa_outputs")


def layer_index(name: str) -> int | None:
    """Index of the transformer layer a parameter/module name belongs to, or None outside the layers."""
    match = LAYER_PATTERN.search(name)
    return int(match.group(1)) if match else None


def _linear_types() -> tuple[type, ...]:
    types: tuple[type, ...] = (nn.Linear,)
    try:  # GPT-2 style models implement their projections as transformers' Conv1D
        from transformers.pytorch_utils import Conv1D
        types += (Conv1D,)
    except ImportError:
        pass
    return types


def linear_module_names_in_layers(model: nn.Module) -> list[str]:
    """Qualified names of every linear map inside the transformer layers (attention and MLP matrices)."""
    kinds = _linear_types()
    names = [name for name, module in model.named_modules()
             if isinstance(module, kinds) and layer_index(name + ".") is not None]
    if not names:
        raise ValueError("found no linear layers inside transformer layers (names like 'layers.N.', 'layer.N.' or "
                         "'h.N.'); pass the target modules explicitly")
    return names


def in_modules(param_name: str, modules) -> bool:
    """True when the parameter belongs to one of `modules` (qualified module names, or their trailing parts such as
    "q_proj" or "self_attn.q_proj")."""
    module = param_name.rsplit(".", 1)[0]
    return module in modules or any(module.endswith("." + m) for m in modules)


def task_head_names(model: nn.Module) -> list[str]:
    """Top-level children that are a freshly initialised task head (empty for causal LMs)."""
    return [name for name, _ in model.named_children() if name in TASK_HEAD_NAMES]
