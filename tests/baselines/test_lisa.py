"""LISA: gamma random layers plus everything outside the layers train, redrawn every K steps; moments of layers that
leave are dropped; 16 bytes per active parameter; resume continues the same draws."""
from __future__ import annotations

import pytest
import torch

from baselines.model_parts import layer_index
from baselines.registry import get_method_class
from tests.baselines.conftest import after_backward_and_step, build, make_llama, train_step
from tests.baselines.test_resume import check_resume_is_bitwise
from tests.baselines.test_training import check_three_steps_lower_the_loss


def active_layers_of(model) -> set[int]:
    return {layer_index(n) for n, p in model.named_parameters() if p.requires_grad and layer_index(n) is not None}


def test_defaults_are_the_papers():
    options = get_method_class("lisa").Options()
    assert (options.n_layers, options.switch_every, options.always_on_outside_layers) == (2, 20, True)


def test_three_steps_lower_the_loss(batch):
    check_three_steps_lower_the_loss("lisa", 1e-2, {"n_layers": 1, "switch_every": 2, "seed": 0}, batch)


def test_resume_is_bitwise(batch):
    # K = 2 and 2 steps before the checkpoint: a redraw happens right before saving
    check_resume_is_bitwise("lisa", {"n_layers": 1, "switch_every": 2, "seed": 7}, batch)


def test_gamma_layers_and_the_outside_parameters_train(batch):
    method, model = build("lisa", make_llama(num_hidden_layers=4), n_layers=2, switch_every=2, seed=3)
    assert len(active_layers_of(model)) == 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= trainable
    assert set(method.active_names) == trainable  # masters exist for exactly the trainable parameters
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    draws = []
    for _ in range(6):
        draws.append(tuple(sorted(active_layers_of(model))))
        train_step(method, model, batch)
    assert draws[0] == draws[1] and draws[2] == draws[3] and draws[4] == draws[5]  # K = 2
    assert method.describe()["lisa_draws"] == 4  # the first draw + one after each of 3 periods
    visited = set().union(*map(set, draws))
    for name, p in model.named_parameters():
        index = layer_index(name)
        moved = not torch.equal(p, start[name])
        assert moved == (index is None or index in visited), name


def test_moments_of_leaving_layers_are_dropped_and_the_rest_kept(batch):
    method, model = build("lisa", make_llama(num_hidden_layers=6), n_layers=1, switch_every=1, seed=0)
    embed = dict(model.named_parameters())["model.embed_tokens.weight"]
    for step in range(1, 4):
        before = set(active_layers_of(model))
        train_step(method, model, batch)
        after = set(active_layers_of(model))
        held = {layer_index(method.active_names[i]) for i, m in enumerate(method.master_weights.masters)
                if m in method.optimizer.state}
        assert held - {None} <= after  # no state survives for a layer that left
        for index in before & after:  # drawn again: its moments continue
            assert index in held
        master = method.master_weights.masters[method.active_names.index("model.embed_tokens.weight")]
        assert int(method.optimizer.state[master]["step"]) == step  # always on: one uninterrupted AdamW
    assert embed.requires_grad


def test_memory_is_16_bytes_per_active_parameter(batch):
    method, model = build("lisa", make_llama(num_hidden_layers=4), n_layers=1, seed=1)
    n = sum(p.numel() for p in model.parameters())
    active = sum(p.numel() for p in model.parameters() if p.requires_grad)
    grads, states = after_backward_and_step(method, model, batch)
    assert grads["parameters"] == 2 * n
    assert grads["gradients"] == 4 * active
    assert states["optimizer_states"] == 12 * active  # fp32 master + two fp32 moments


def test_only_sampled_layers_train_without_the_outside(batch):
    method, model = build("lisa", make_llama(), n_layers=1, always_on_outside_layers=False, seed=0)
    assert all(layer_index(n) is not None for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("options,fragment", [
    ({"n_layers": 0}, "n_layers must be an integer >= 1"),
    ({"switch_every": 1.5}, "switch_every must be an integer >= 1"),
    ({"betas": (0.9, 1.0)}, "betas"),
])
def test_bad_options_raise_one_clear_error(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class("lisa").Options(**options)


def test_more_layers_than_the_model_has_is_refused():
    with pytest.raises(ValueError, match="between 1 and 2"):
        build("lisa", make_llama(), n_layers=3)
