"""Adafactor (transformers.optimization.Adafactor) over fp32 masters: trains, resumes bitwise, takes the harness's lr
(no relative step), and holds factored second moments: rows + columns per matrix, not one value per parameter."""
from __future__ import annotations

import re

import pytest
import torch

from tests.baselines.conftest import build, make_llama, train_step
from tests.baselines.test_resume import check_resume_is_bitwise
from tests.baselines.test_training import check_three_steps_lower_the_loss


def test_three_steps_lower_the_loss(batch):
    check_three_steps_lower_the_loss("adafactor", 1e-2, {}, batch)


def test_resume_is_bitwise(batch):
    check_resume_is_bitwise("adafactor", {}, batch)


def test_the_update_is_transformers_adafactor_at_the_harness_lr(batch):
    """The same step as transformers' Adafactor with an external lr applied to fp32 copies by hand."""
    from transformers.optimization import Adafactor

    model = make_llama(dtype=torch.float32)
    reference = make_llama(dtype=torch.float32)
    method, model = build("adafactor", model, lr=3e-3)
    optimizer = Adafactor(reference.parameters(), lr=3e-3, relative_step=False, scale_parameter=False,
                          warmup_init=False)
    for _ in range(2):
        train_step(method, model, batch)
        reference(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for (name, mine), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("beta1", [None, 0.9])
def test_memory_split_counts_factored_moments(batch, beta1):
    model = make_llama()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    factored = sum(p.shape[0] + p.shape[1] for p in params if p.dim() == 2)
    full = sum(p.numel() for p in params if p.dim() < 2)
    method, model = build("adafactor", model, beta1=beta1)
    train_step(method, model, batch)
    split = method.memory_split(model)
    first_moment = 4 * n if beta1 is not None else 0
    # bf16 weights; fp32 masters (4) + row / column factors of each matrix, a full second moment of each vector
    assert split["parameters"] == 2 * n
    assert split["optimizer_states"] == 4 * n + 4 * (factored + full) + first_moment


@pytest.mark.parametrize("options,fragment", [
    ({"eps": 1e-3}, "eps must be two numbers > 0"),
    ({"decay_rate": 0.8}, "decay_rate must be in [-1, 0)"),
    ({"beta1": 1.0}, "beta1 must be in [0, 1) or null"),
    ({"clip_threshold": 0}, "clip_threshold must be > 0"),
])
def test_bad_options_are_one_line(options, fragment):
    from baselines.registry import get_method_class

    with pytest.raises(ValueError, match=re.escape(fragment)):
        get_method_class("adafactor").Options(**options)
