"""block_checkpoint: each checkpointed layer call gets the checkpointing backward needs (none below BAdam's active
block, non-reentrant for it and above it, or reentrant above it with policy block-reentrant) and the same numbers as
non-reentrant checkpointing everywhere."""
import functools

import pytest
import torch

from badam import BlockOptimizer
from badam import checkpointing as ckpt
from badam.hf import enable_block_checkpointing

from .tiny import VOCAB, clone_model, lm_batch


def dropout_llama(layers=4, seed=0):
    """fp32 tiny Llama with attention dropout, so the recompute must replay the forward's RNG state."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attention_dropout=0.2)
    return LlamaForCausalLM(config)


def kinds_per_layer(model, monkeypatch) -> dict[int, str]:
    """The kind block_checkpoint picked for each decoder layer in one forward and backward."""
    index = {id(layer): i for i, layer in enumerate(model.model.layers)}
    picked: dict[int, str] = {}
    original = ckpt.checkpoint_kind

    def spy(function, args, kwargs, reentrant=False):
        kind = original(function, args, kwargs, reentrant)
        layer = ckpt._layer_of(function)
        if id(layer) in index:  # (an earlier spy of the same test sees the later model's layers too)
            picked.setdefault(index[id(layer)], kind)  # the forward's call, not the recompute's
        return kind

    monkeypatch.setattr(ckpt, "checkpoint_kind", spy)
    model.train()
    model(**lm_batch(0)).loss.backward()
    return picked


def fixed_block(model, block, embeddings=False):
    """BlockOptimizer training block `block` only (one block per layer; with `embeddings` the embeddings are block 0
    and the layers follow)."""
    prefixes = [[f"model.layers.{i}."] for i in range(len(model.model.layers))]
    if embeddings:
        prefixes.insert(0, ["model.embed_tokens."])
    return BlockOptimizer(torch.optim.AdamW(model.parameters()), list(model.named_parameters()),
                          block_prefix_list=prefixes, switch_mode="fixed", start_block=block, verbose=0,
                          full_precision_ok=True)


@pytest.mark.parametrize("policy, above", [("block", "non-reentrant"), ("block-reentrant", "reentrant"),
                                           ("block-reentrant-graphed", "reentrant")])
def test_each_layer_gets_what_backward_needs(monkeypatch, policy, above):
    model = dropout_llama()
    enable_block_checkpointing(model, policy=policy)
    opt = fixed_block(model, 1)
    assert kinds_per_layer(model, monkeypatch) == {0: "none", 1: "non-reentrant", 2: above, 3: above}
    assert all(p.grad is not None for g in opt.param_groups for p in g["params"])


def test_trainable_embeddings_or_every_layer_trainable_keep_non_reentrant_where_parameters_train(monkeypatch):
    model = dropout_llama()
    enable_block_checkpointing(model, policy="block-reentrant")
    fixed_block(model, 0, embeddings=True)  # the embeddings train: every layer's input requires grad, no parameter
    assert set(kinds_per_layer(model, monkeypatch).values()) == {"reentrant"}
    model = dropout_llama()
    enable_block_checkpointing(model, policy="block-reentrant")  # every parameter trains (Adam; LoRA's adapters)
    assert set(kinds_per_layer(model, monkeypatch).values()) == {"non-reentrant"}


def test_no_grad_unknown_callables_and_keyword_tensors():
    layer = torch.nn.Linear(4, 4).requires_grad_(False)
    x = torch.randn(2, 4)
    call = functools.partial(lambda module, h: module(h), layer)
    assert ckpt.checkpoint_kind(call, (x,), {}, reentrant=True) == "none"
    x.requires_grad_()
    assert ckpt.checkpoint_kind(call, (x,), {}, reentrant=True) == "reentrant"
    assert ckpt.checkpoint_kind(call, (x,), {}) == "non-reentrant"
    assert ckpt.checkpoint_kind(lambda h: layer(h), (x.detach(),), {}) == "non-reentrant"  # parameters it may hide
    scale = torch.ones(4, requires_grad=True)
    keyword = functools.partial(lambda module, h, scale: module(h) * scale, layer, scale=scale)
    assert ckpt.checkpoint_kind(keyword, (x.detach(),), {}) == "non-reentrant"  # keywords get no gradient when
    assert ckpt.checkpoint_kind(keyword, (x,), {}, reentrant=True) == "non-reentrant"  # reentrant
    assert ckpt.checkpoint_kind(call, ((x.detach(), [x]),), {}, reentrant=True) == "reentrant"
    with torch.no_grad():
        assert ckpt.checkpoint_kind(call, (x,), {}) == "none"
    layer.weight.requires_grad_(True)
    assert ckpt.checkpoint_kind(call, (x.detach(),), {}, reentrant=True) == "non-reentrant"


def test_the_layer_is_found_in_either_form_transformers_passes():
    """transformers >= 5.2x checkpoints partial(forward, layer, **kw); earlier 5.x partial(layer.__call__, **kw)."""
    layer = torch.nn.Linear(4, 4).requires_grad_(False)
    x = torch.randn(2, 4, requires_grad=True)
    older = functools.partial(layer.__call__)
    assert ckpt._layer_of(older) is layer and ckpt._layer_of(functools.partial(torch.nn.Linear.forward, layer)) is layer
    assert ckpt._layer_of(lambda h: layer(h)) is None and ckpt._layer_of(functools.partial(torch.add, x)) is None
    assert ckpt.checkpoint_kind(older, (x,), {}, reentrant=True) == "reentrant"
    assert ckpt.checkpoint_kind(older, (x.detach(),), {}) == "none"


@pytest.mark.parametrize("policy", ["block", "block-reentrant", "block-reentrant-graphed"])  # (graphs: CUDA only)
@pytest.mark.parametrize("block", [0, 1, 3, 4])  # the embeddings, the lowest layer, a middle one, the top one
def test_same_losses_and_gradients_as_non_reentrant_checkpointing_everywhere(block, policy):
    reference = dropout_llama()
    model = clone_model(reference)
    enable_block_checkpointing(reference)
    enable_block_checkpointing(model, policy=policy)
    results = []
    for net in (reference, model):
        opt = fixed_block(net, block, embeddings=True)
        net.train()
        losses = []
        for step in range(3):  # three updates: the later steps run on weights the earlier gradients moved
            torch.manual_seed(step)  # the dropout masks of the forward; the recompute must replay them
            loss = net(**lm_batch(step)).loss
            loss.backward()
            grads = [p.grad.clone() for g in opt.param_groups for p in g["params"]]
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        results.append((losses, grads))
    (ref_losses, ref_grads), (losses, grads) = results
    assert all(torch.equal(a, b) for a, b in zip(ref_losses, losses))
    assert len(grads) == len(ref_grads) > 0 and all(torch.equal(a, b) for a, b in zip(ref_grads, grads))
    assert any(g.abs().sum() > 0 for g in grads)


def test_policies():
    model = dropout_llama(layers=2)
    enable_block_checkpointing(model, policy="block")
    assert all(m._gradient_checkpointing_func is ckpt.block_checkpoint for m in model.model.layers)
    enable_block_checkpointing(model)  # the default: non-reentrant for every layer, as transformers does
    funcs = [m._gradient_checkpointing_func for m in model.model.layers]
    assert all(f.keywords.get("use_reentrant") is False for f in funcs)
    enable_block_checkpointing(model, policy="block-reentrant")
    funcs = [m._gradient_checkpointing_func for m in model.model.layers]
    assert all(f.func is ckpt.block_checkpoint and f.keywords == {"reentrant": True} for f in funcs)
    graphs = enable_block_checkpointing(model, policy="block-graphed")
    funcs = [m._gradient_checkpointing_func for m in model.model.layers]
    assert all(f.func is ckpt.block_checkpoint and f.keywords == {"graphs": graphs} for f in funcs)
    graphs = enable_block_checkpointing(model, policy="block-reentrant-graphed")
    funcs = [m._gradient_checkpointing_func for m in model.model.layers]
    assert all(f.keywords == {"reentrant": True, "graphs": graphs} for f in funcs) and graphs is not None
    with pytest.raises(ValueError, match="unknown checkpointing policy 'reentrant'; choose one of block, "
                                         "block-graphed, block-reentrant, block-reentrant-graphed, non-reentrant"):
        enable_block_checkpointing(model, policy="reentrant")
