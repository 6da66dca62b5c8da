"""Adam-mini (adam-mini package) on fp32 masters: one second moment per head / neuron / tensor, so about 14 bytes per
parameter against Adam's 18; head size from the model config; unsupported (not a crash) without the package."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from baselines.errors import MethodUnsupportedError
from baselines.registry import get_method_class
from tests.baselines.conftest import build, make_llama, train_step
from tests.baselines.test_resume import check_resume_is_bitwise
from tests.baselines.test_training import check_three_steps_lower_the_loss

needs_adam_mini = pytest.mark.skipif(importlib.util.find_spec("adam_mini") is None,
                                     reason="adam-mini not installed (pip install 'badam-bench[methods]')")


@needs_adam_mini
def test_three_steps_lower_the_loss(batch):
    check_three_steps_lower_the_loss("adam_mini", 1e-2, {}, batch)


@needs_adam_mini
def test_resume_is_bitwise(batch):
    check_resume_is_bitwise("adam_mini", {}, batch)


def second_moment_values(model, head_dim: int) -> int:
    """Adam-mini's blocks written out for a Llama: one value per query / key head (rows of head_dim), one per row of
    v, o, the MLP matrices, the embedding and the LM head; norm weights hold a 0-dim value (not counted as state)."""
    total = 0
    for name, p in model.named_parameters():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            total += p.shape[0] // head_dim
        elif p.dim() == 2:
            total += p.shape[0]
    return total


@needs_adam_mini
@pytest.mark.parametrize("overrides,head_dim", [({}, 8), ({"head_dim": 16}, 16)])
def test_memory_is_masters_full_first_moment_and_one_second_moment_per_block(batch, overrides, head_dim):
    model = make_llama(**overrides)
    n = sum(p.numel() for p in model.parameters())
    method, model = build("adam_mini", model)
    train_step(method, model, batch)
    split = method.memory_split(model)
    assert split["parameters"] == 2 * n
    assert split["optimizer_states"] == 4 * n + 4 * n + 4 * second_moment_values(model, head_dim)
    assert method.describe()["adam_mini_head_numel"] == 32 * head_dim  # hidden x head_dim: one head's rows


@needs_adam_mini
def test_weight_decay_and_process_count():
    method, _ = build("adam_mini", make_llama(), weight_decay=0.1)
    assert method.optimizer.world_size == 1  # not torch.cuda.device_count(): no all-gather in one process
    decay = {g["name"]: g["weight_decay"] for g in method.optimizer.param_groups}
    assert decay["model.layers.0.mlp.up_proj.weight"] == 0.1
    assert decay["model.layers.0.input_layernorm.weight"] == 0.0  # adam-mini exempts norms


def test_missing_package_is_recorded_as_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "adam_mini", None)  # import fails as if not installed
    with pytest.raises(MethodUnsupportedError, match="pip install"):
        build("adam_mini", make_llama())


def test_model_without_config_is_unsupported():
    with pytest.raises(MethodUnsupportedError, match="hidden_size"):
        build("adam_mini", torch.nn.Sequential(torch.nn.Linear(4, 4)))


@pytest.mark.parametrize("options,fragment", [({"fused": True}, "no fused option"), ({"eps": -1}, "eps")])
def test_bad_options_raise_one_clear_error(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class("adam_mini").Options(**options)
