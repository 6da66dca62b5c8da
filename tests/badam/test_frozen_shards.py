"""badam/frozen_shards.py in one process (the shard is the whole block, so the mechanism runs without gathering):
sharded training equals unsharded bit for bit under every non-graphed checkpointing policy, units are chosen as
documented, state dicts round-trip, misuse gets one clear error. Two ranks: tests/distributed/test_ddp.py."""
from __future__ import annotations

import warnings

import pytest
import torch

from badam import BlockOptimizer
from badam.frozen_shards import shard_units

from .tiny import lm_batch, tiny_llama

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def build(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp32 models warn about memory
        return BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), list(model.named_parameters()),
                              switch_block_every=1, switch_mode="random", seed=3, verbose=0, **kwargs)


def train(shard: bool, policy: str | None, ends: bool, device: str = "cpu", steps: int = 7):
    from badam.hf import enable_block_checkpointing

    model = tiny_llama(torch.bfloat16).to(device).train()
    if policy:
        enable_block_checkpointing(model, policy=policy)
    opt = build(model, include_embedding=ends, include_lm_head=ends)
    shards = opt.shard_frozen_blocks(model) if shard else None
    losses = []
    for s in range(steps):
        loss = model(**{k: v.to(device) for k, v in lm_batch(s).items()}).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    state = shards.gathered_state_dict(model) if shard else {k: v.cpu() for k, v in model.state_dict().items()}
    return losses, state, opt, model


@pytest.mark.parametrize("policy", [None, "non-reentrant", "block", "block-reentrant"])
def test_sharded_training_equals_unsharded_bitwise(policy):
    plain_losses, plain_state, _, _ = train(False, policy, ends=True)
    losses, state, opt, model = train(True, policy, ends=True)
    assert losses == plain_losses
    assert state.keys() == plain_state.keys() and all(torch.equal(state[k], plain_state[k]) for k in state)
    active = set(opt.active_parameter_names)
    for name, p in model.named_parameters():  # between steps: only the active block's units hold their weights
        assert (p.numel() > 0) == (name in active), name
    opt.release()  # the model whole again, with the trained weights
    assert all(torch.equal(v.cpu(), state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_state_dict_round_trip_and_load_errors(device):
    _, state, _, _ = train(True, "non-reentrant", ends=False, device=device, steps=3)
    fresh = tiny_llama(torch.bfloat16, seed=1).to(device)
    shards = build(fresh).shard_frozen_blocks(fresh)
    shards.load_gathered_state_dict(fresh, state)
    assert all(torch.equal(v, state[k]) for k, v in shards.gathered_state_dict(fresh).items())
    bad = dict(state)
    bad["model.layers.1.mlp.up_proj.weight"] = bad["model.layers.1.mlp.up_proj.weight"][:, :3]
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight: shape"):
        shards.load_gathered_state_dict(fresh, bad)
    with pytest.raises(KeyError, match="missing"):
        shards.load_gathered_state_dict(fresh, {k: v for k, v in state.items() if "norm" not in k})


@GPU
def test_on_a_gpu_sharded_compiled_layers_equal_unsharded():
    from experiments.layer_compile import compile_decoder_layers

    runs = []
    for shard in (False, True):
        torch._dynamo.reset()
        model = tiny_llama(torch.bfloat16).cuda().train()
        from badam.hf import enable_block_checkpointing

        enable_block_checkpointing(model, policy="block-reentrant")
        compile_decoder_layers(model, "aot_eager", {})
        opt = build(model)
        shards = opt.shard_frozen_blocks(model) if shard else None
        losses = []
        for s in range(6):
            loss = model(**{k: v.cuda() for k, v in lm_batch(s).items()}).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs.append((losses, shards.gathered_state_dict(model) if shard else model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k].cpu(), runs[1][1][k]) for k in runs[1][1])


def test_units_skip_tied_and_shared_weights():
    tied = tiny_llama(torch.bfloat16, tie=True)
    opt = build(tied, include_embedding=True, include_lm_head=True)
    names = [n for n, _ in shard_units(tied, opt.block_prefix_list, opt._block_params, opt._always_params)]
    assert names == ["model.layers.0", "model.layers.1", "model.layers.2", "model.layers.3", "model.norm"]
    model = tiny_llama(torch.bfloat16)
    with_head = build(model, include_embedding=True, include_lm_head=True, active_modules=["model.layers.3.mlp."])
    names = [n for n, _ in shard_units(model, with_head.block_prefix_list, with_head._block_params,
                                       with_head._always_params)]
    assert "model.layers.3" not in names and "model.layers.2" in names and "lm_head" in names


def test_misuse_gives_one_clear_error():
    model = tiny_llama(torch.bfloat16)
    opt = build(model)
    opt.shard_frozen_blocks(model)
    with pytest.raises(RuntimeError, match="sharded already"):
        opt.shard_frozen_blocks(model)
    with pytest.raises(RuntimeError, match="enable_data_parallel must come before shard_frozen_blocks"):
        opt.enable_data_parallel(None)
    with pytest.raises(ValueError, match="does not combine with shard_frozen_blocks"):
        opt.overlap_update(model)
    other = tiny_llama(torch.bfloat16)
    opt = build(other)
    other(**lm_batch(0)).loss.backward()
    with pytest.raises(RuntimeError, match="between steps"):
        opt.shard_frozen_blocks(other)
    model = tiny_llama(torch.bfloat16)
    across_layers = build(model, block_prefix_list=[["q_proj", "k_proj"], ["v_proj", "o_proj"], ["mlp", "norm"],
                                                    ["embed_tokens"]])  # no block is one module (lm_head: none)
    with pytest.raises(ValueError, match="no block's prefix names a module"):
        across_layers.shard_frozen_blocks(model)
    for depth in (-1, 1.5):
        model = tiny_llama(torch.bfloat16)
        with pytest.raises(ValueError, match=r"prefetch must be an int >= 0 \(units gathered ahead; 0: none\)"):
            build(model).shard_frozen_blocks(model, prefetch=depth)


def test_the_flop_model_reads_sharded_layers_whole():
    """experiments.flops reads a Linear's shape from in/out_features, so MFU counts the sharded layers too."""
    from experiments.flops import FlopCounter

    model = tiny_llama(torch.bfloat16)
    before = FlopCounter(model).shape
    build(model).shard_frozen_blocks(model)
    assert FlopCounter(model).shape == before


def test_plain_state_dict_calls_are_refused_while_blocks_are_sharded():
    """A sharded block's parameters are empty: model.state_dict() / load_state_dict() say so instead of saving or
    loading empty tensors, and work again after release()."""
    model = tiny_llama(torch.bfloat16)
    opt = build(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt.shard_frozen_blocks(model)
    with pytest.raises(RuntimeError, match="gathered_state_dict"):
        model.state_dict()
    with pytest.raises(RuntimeError, match="load_gathered_state_dict"):
        model.load_state_dict(state)
    opt.release()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_a_model_built_on_meta_is_placed_unit_by_unit_as_it_is_sharded(device):
    """experiments.ddp.placement as shard_frozen_blocks' `place`: a random model built on the meta device gets the
    same weights (each module's init seeded by its name) and trains bit for bit like the same model placed whole
    first; the run's RNG is left as it was."""
    from experiments.ddp import placement
    from experiments.models import load_model

    def meta_model():
        return load_model("random:tiny-llama", dtype="bf16", device="meta", tokenizer=False, seed=0)[0].train()

    runs = []
    for shard in (False, True):
        model = meta_model()
        place = placement(model, torch.device(device), seed=3)
        if not shard:
            for name, module in model.named_modules():
                place(name, module)
        opt = build(model)
        rng = torch.random.get_rng_state()
        if shard:
            opt.shard_frozen_blocks(model, place=place)
        assert torch.equal(torch.random.get_rng_state(), rng)
        assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
        losses = []
        for s in range(4):
            batch = {k: (v % model.config.vocab_size).to(device) for k, v in lm_batch(s).items()}
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs.append(losses)
    assert runs[0] == runs[1] and all(torch.isfinite(torch.tensor(runs[0])))
