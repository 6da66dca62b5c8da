"""Tiny random-init models and a fixed batch for the method tests (bf16 weights, as the paper trains)."""
from __future__ import annotations

import pytest
import torch


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def make_llama(seed: int = 0, dtype=torch.bfloat16, task: str = "causal_lm", **overrides):
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cls = LlamaForSequenceClassification if task == "sequence_classification" else LlamaForCausalLM
    return cls(tiny_llama_config(**overrides)).to(dtype)




@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(1, 64, (4, 16), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def build(name: str, model, lr: float = 1e-2, weight_decay: float = 0.0, **options):
    """Registry name → prepared model and built method, in the order the harness uses."""
    from baselines.registry import get_method_class

    cls = get_method_class(name)
    method = cls(cls.Options(**options), lr=lr, weight_decay=weight_decay)
    model = method.prepare_model(model)
    method.build_optimizer(model)
    return method, model


def train_step(method, model, batch, max_norm=None) -> float:
    """One optimizer step exactly as the loop runs it; returns the loss before the update."""
    method.set_lr_scale(1.0)
    loss = model(**batch).loss
    method.backward(loss, last_micro_batch=True)
    method.clip_and_norm(max_norm)
    method.step()
    method.zero_grad()
    return float(loss.detach())


def after_backward_and_step(method, model, batch):
    """The method's memory_split after one backward pass and again after the step that follows it."""
    loss = model(**batch).loss
    method.backward(loss)
    after_backward = method.memory_split(model)
    method.step()
    after_step = method.memory_split(model)
    return after_backward, after_step


@torch.no_grad()
def eval_loss(model, batch) -> float:
    return float(model(**batch).loss)
