"""The chunked causal-LM loss (train.loss_chunk_tokens) equals the model's own loss and gives the same gradients,
with and without Gemma-style logit soft-capping, tied embeddings, frozen heads and a repeated backward pass."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from experiments.lm_loss import chunked_causal_lm_loss, model_loss


def tiny(tied: bool, softcap: float | None = None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).float()
    if softcap:
        model.config.final_logit_softcapping = softcap
    return model


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (3, 11), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100                     # a prompt that does not train
    labels[2, 8:] = -100                     # padding at the end of the last row
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def reference_loss(model, b, softcap):
    """The model's loss, with soft-capping applied the way Gemma's forward applies it."""
    if not softcap:
        return model(**b).loss
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    logits = torch.tanh(out.logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97).float(), b["labels"][:, 1:].reshape(-1),
                                             ignore_index=-100)


@pytest.mark.parametrize("tied, softcap, chunk", [(True, None, 4), (False, None, 1000), (True, 5.0, 3)])
def test_loss_and_gradients_equal_the_models_own(tied, softcap, chunk):
    b = batch()
    ref_model, model = tiny(tied, softcap), tiny(tied, softcap)
    ref = reference_loss(ref_model, b, softcap)
    ref.backward()
    ours = chunked_causal_lm_loss(model, b, chunk)
    ours.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_frozen_head_gets_no_gradient_and_a_second_backward_gives_the_same_one():
    model = tiny(tied=False)
    model.lm_head.weight.requires_grad_(False)
    loss = chunked_causal_lm_loss(model, batch(), 5)
    loss.backward(retain_graph=True)             # LOMO's gradient-norm pass, then its update pass
    first = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    loss.backward()
    assert model.lm_head.weight.grad is None
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, first)


def test_bf16_autocast_matches_the_models_loss_to_bf16_precision():
    model = tiny(tied=True).to(torch.bfloat16)
    b = batch(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(**b).loss.float()
        ours = model_loss(model, b, chunk_tokens=7)
    assert abs(float(ours) - float(ref)) < 2e-2 * float(ref)


def test_no_labelled_token_gives_zero_and_bad_chunk_is_refused():
    model = tiny(tied=True)
    b = batch()
    b["labels"][:] = -100
    assert float(chunked_causal_lm_loss(model, b, 4)) == 0.0
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        chunked_causal_lm_loss(model, b, 0)
