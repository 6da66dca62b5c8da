"""experiments/fsdp_gather.py: which layers keep their gathered weights, and (2 gloo processes, the shared spawn of
conftest.py) that keeping them changes how often FSDP2 all-gathers, never the numbers."""
from __future__ import annotations

import pytest
import torch

from experiments.config import ConfigError, load_config
from experiments.fsdp_gather import GatherPolicy, layers_to_keep, lowest_reached_layer
from tests.distributed.common import make_method, tiny_llama


def test_layers_to_keep():
    assert layers_to_keep(8, 3, 0) == set()                 # FSDP2's default
    assert layers_to_keep(8, 3, -1) == {3, 4, 5, 6, 7}      # every layer backward reaches
    assert layers_to_keep(8, 3, 2) == {6, 7}                # a budget: the layers nearest the head
    assert layers_to_keep(8, 6, 4) == {6, 7}                # never below the lowest reached layer
    assert layers_to_keep(8, None, -1) == set()             # no gradient (evaluation): everything reshards


def test_lowest_reached_layer_follows_the_trainable_parameters():
    model = tiny_llama(torch.float32)
    layers = list(model.model.layers)
    model.requires_grad_(False)
    assert lowest_reached_layer(layers, model) is None
    model.lm_head.weight.requires_grad_(True)  # the head alone: backward reaches no layer
    assert lowest_reached_layer(layers, model) is None
    layers[1].mlp.down_proj.weight.requires_grad_(True)
    assert lowest_reached_layer(layers, model) == 1
    model.model.embed_tokens.weight.requires_grad_(True)  # gradients flow through every layer to the embeddings
    assert lowest_reached_layer(layers, model) == 0
    lora = make_method("lora").prepare_model(tiny_llama(torch.float32))  # adapters in every layer
    assert lowest_reached_layer(list(lora.base_model.model.model.layers), lora) == 0


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="integer >= -1"):
        GatherPolicy(torch.nn.Linear(2, 2), [], -2)
    with pytest.raises(ConfigError, match="train.fsdp_keep_gathered_layers must be >= -1"):
        load_config("small/smollm2_alpaca.yaml", ["train.fsdp_keep_gathered_layers=-3"])


def test_kept_layers_are_gathered_once_and_train_the_same(fsdp2_run):
    """Tiny Llama (2 layers) + root, BAdam ascending K = 2, 2 micro-batches per step. Per micro-batch, FSDP2 gathers
    the root and both layers in forward, and in backward the root again and the layers backward reaches (active layer
    0: both; layer 1: one; without the policy FSDP2's prefetch also gathered layer 0 then); kept gathered (-1), backward
    gathers only the root; with a budget of 1 only layer 1 is kept."""
    got = fsdp2_run["keep_gathered"]
    assert got[0]["gathers"] == [12, 12, 10, 10]
    assert got[-1]["gathers"] == [8, 8, 8, 8]
    assert got[1]["gathers"] == [10, 10, 8, 8]
    for budget in (-1, 1):
        assert got[budget]["losses"] == got[0]["losses"]
        for key, value in got[0]["weights"].items():
            assert torch.equal(got[budget]["weights"][key], value), (budget, key)
