"""bitsandbytes AdamW8bit on fp32 masters: 8-bit moments (about 2 bytes per parameter instead of 8), recorded as
unsupported where bitsandbytes has no kernel for the device."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.errors import MethodUnsupportedError
from baselines.registry import get_method_class
from tests.baselines.conftest import build, make_llama, train_step
from tests.baselines.test_resume import check_resume_is_bitwise
from tests.baselines.test_training import check_three_steps_lower_the_loss


def bitsandbytes_runs_here() -> bool:
    from baselines.adamw_8bit import check_bitsandbytes_runs

    try:
        check_bitsandbytes_runs(torch.device("cpu"))
    except MethodUnsupportedError:
        return False
    return True


needs_kernel = pytest.mark.skipif(not bitsandbytes_runs_here(), reason="this bitsandbytes has no CPU AdamW8bit")


@needs_kernel
def test_three_steps_lower_the_loss(batch):
    check_three_steps_lower_the_loss("adamw_8bit", 1e-2, {"min_8bit_size": 256}, batch)


@needs_kernel
def test_resume_is_bitwise(batch):
    check_resume_is_bitwise("adamw_8bit", {"min_8bit_size": 256}, batch)


@needs_kernel
def test_moments_are_8bit_above_the_size_threshold(batch):
    model = make_llama()
    n = sum(p.numel() for p in model.parameters())
    method, model = build("adamw_8bit", model, min_8bit_size=1024)
    train_step(method, model, batch)
    masters = dict(zip(method.master_weights.params, method.master_weights.masters))
    big = blocks = 0
    for name, p in model.named_parameters():
        state = method.optimizer.state[masters[p]]
        assert state["state1"].dtype == (torch.uint8 if p.numel() >= 1024 else torch.float32), name
        if p.numel() >= 1024:
            big += p.numel()
            blocks += math.ceil(p.numel() / 256)
    states = method.memory_split(model)["optimizer_states"] - 4 * n  # without the fp32 masters
    # 8-bit tensors: two 1-byte moments + one fp32 scale per block of 256 per moment; two 256-entry fp32 code books
    # shared by all tensors; the small tensors keep two fp32 moments
    assert states == 2 * big + 2 * 4 * blocks + 2 * 256 * 4 + 8 * (n - big)


def test_unsupported_where_bitsandbytes_has_no_kernel(monkeypatch):
    import bitsandbytes as bnb

    class NoKernel(bnb.optim.AdamW8bit):
        def step(self, closure=None):
            raise NotImplementedError("no kernel for this device")

    monkeypatch.setattr(bnb.optim, "AdamW8bit", NoKernel)
    with pytest.raises(MethodUnsupportedError, match="no 8-bit AdamW kernel for device cpu"):
        build("adamw_8bit", make_llama())


@pytest.mark.parametrize("options,fragment", [({"fused": True}, "bitsandbytes' kernel"),
                                              ({"min_8bit_size": 0}, "min_8bit_size")])
def test_bad_options_raise_one_clear_error(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class("adamw_8bit").Options(**options)
