"""APOLLO (optional, CC-BY-NC apollo-torch): low-rank random-projection moments scale the full gradient; recorded as
unsupported, with its license, when the package is absent; checkpoints carry the projections and their seeds."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from baselines.errors import MethodUnsupportedError
from baselines.model_parts import layer_index
from baselines.registry import get_method_class
from tests.baselines.conftest import build, make_llama, train_step
from tests.baselines.test_resume import check_resume_is_bitwise
from tests.baselines.test_training import check_three_steps_lower_the_loss

needs_apollo = pytest.mark.skipif(importlib.util.find_spec("apollo_torch") is None,
                                  reason="apollo-torch (CC-BY-NC, optional) not installed")


def test_missing_package_is_recorded_as_unsupported_with_its_license(monkeypatch):
    monkeypatch.setitem(sys.modules, "apollo_torch", None)
    with pytest.raises(MethodUnsupportedError, match="CC-BY-NC 4.0.*badam-bench\\[apollo\\]"):
        build("apollo", make_llama(), rank=4)


@needs_apollo
def test_three_steps_lower_the_loss(batch):
    check_three_steps_lower_the_loss("apollo", 1e-2, {"rank": 4, "update_proj_gap": 2}, batch)


@needs_apollo
@pytest.mark.parametrize("proj", ["random", "svd"])
def test_resume_is_bitwise(batch, proj):
    # update_proj_gap 2: a projection refresh (and, for random, a new seed) falls inside the resumed steps
    check_resume_is_bitwise("apollo", {"rank": 4, "update_proj_gap": 2, "proj": proj}, batch)


@needs_apollo
def test_memory_counts_low_rank_moments_and_projections(batch):
    rank = 4
    model = make_llama()
    expected = 0
    for name, p in model.named_parameters():
        expected += 4 * p.numel()  # fp32 master
        if layer_index(name) is not None and p.dim() == 2:
            m, k = p.shape  # std projection: along the smaller side
            expected += 4 * (2 * m * rank + rank * k) if m >= k else 4 * (2 * rank * k + m * rank)
        else:
            expected += 8 * p.numel()  # plain AdamW moments
    method, model = build("apollo", model, rank=rank)
    train_step(method, model, batch)
    assert method.memory_split(model)["optimizer_states"] == expected


@pytest.mark.parametrize("options,fragment", [
    ({"proj": "gaussian"}, "random, svd"),
    ({"scale_type": "row"}, "channel, tensor"),
    ({"proj_type": "full"}, "std, reverse_std, right, left"),
    ({"rank": 0}, "rank must be a positive integer"),
])
def test_bad_options_raise_one_clear_error(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class("apollo").Options(**options)
