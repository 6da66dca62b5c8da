"""Q-GaLore (optional q-galore-torch): CUDA only, recorded as unsupported elsewhere or without the package; its
quantized, adaptively refreshed projector survives a weights_only checkpoint."""
from __future__ import annotations

import importlib.util
import io
import sys

import pytest
import torch

from baselines.errors import MethodUnsupportedError
from baselines.registry import get_method_class
from tests.baselines.conftest import build, make_llama

needs_q_galore = pytest.mark.skipif(importlib.util.find_spec("q_galore_torch") is None,
                                    reason="q-galore-torch (optional) not installed")


def test_missing_package_is_recorded_as_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "q_galore_torch", None)
    with pytest.raises(MethodUnsupportedError, match="badam-bench\\[q_galore\\]"):
        build("q_galore", make_llama())


@needs_q_galore
def test_cpu_is_recorded_as_unsupported():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: q_galore runs here")
    from baselines.q_galore import bitsandbytes_api_problem

    reason = "percentile_clipping" if bitsandbytes_api_problem() else "needs CUDA"
    with pytest.raises(MethodUnsupportedError, match=reason):
        build("q_galore", make_llama())


def test_a_bitsandbytes_without_percentile_clipping_is_named_as_the_reason(monkeypatch):
    """q_galore_torch 1.0 passes percentile_clipping / block_wise to bitsandbytes' Optimizer2State by position and
    reads config['percentile_clipping'] in its update: with a bitsandbytes that has no such argument (0.50.2: the
    first step failed with KeyError on an H200) the run is unsupported, with the reason, before anything trains."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.optim import optimizer as bnb_optimizer

    from baselines.q_galore import bitsandbytes_api_problem

    class OldApi:
        def __init__(self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                     optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True):
            pass

    class NewApi:
        def __init__(self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                     optim_bits=32, args=None, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False):
            pass

    monkeypatch.setattr(bnb_optimizer, "Optimizer2State", OldApi)
    assert bitsandbytes_api_problem() is None
    monkeypatch.setattr(bnb_optimizer, "Optimizer2State", NewApi)
    problem = bitsandbytes_api_problem()
    assert "percentile_clipping" in problem and "galore_8bit" in problem


@needs_q_galore
def test_quantized_projector_roundtrips_through_a_weights_only_checkpoint():
    """The package's projector on CPU (its SVD and 4-bit quantization are plain torch): saved as plain attributes,
    rebuilt from the group's settings, it projects exactly as the original, refresh interval and history included."""
    from baselines.projector_state import (load_state_dict_with_projectors, projector_tensors,
                                           state_dict_with_plain_projectors)
    from baselines.q_galore import QGaLore

    method = QGaLore(QGaLore.Options(rank=8, update_proj_gap=1, queue_size=2, cos_threshold=-1.0), lr=1e-3)
    group = method.galore_settings()  # rank, refresh interval, scale, 4-bit quantization, adaptive refresh
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(64, 512))], **group}], lr=1e-3)
    param = optimizer.param_groups[0]["params"][0]
    projector = method.make_projector(optimizer.param_groups[0])
    g = torch.Generator().manual_seed(0)
    for step in range(4):  # cos_threshold -1: every full queue doubles the refresh interval
        projector.project(torch.randn(64, 512, generator=g), step)
    assert projector.update_proj_gap > 1 and projector.ortho_matrix.dtype == torch.uint8
    optimizer.state[param]["projector"] = projector
    held = {id(t) for t in projector_tensors(optimizer)}  # memory_split counts all of them as optimizer state
    assert held == {id(projector.ortho_matrix), id(projector.ortho_matrix_scales), id(projector.ortho_matrix_zeros),
                    id(projector.past_ortho_vector)}
    buffer = io.BytesIO()
    torch.save(state_dict_with_plain_projectors(optimizer), buffer)
    buffer.seek(0)
    fresh = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(64, 512))], **group}], lr=1e-3)
    load_state_dict_with_projectors(fresh, torch.load(buffer, weights_only=True), method.make_projector)
    restored = fresh.state[fresh.param_groups[0]["params"][0]]["projector"]
    grad = torch.randn(64, 512, generator=g)
    assert torch.equal(restored.project(grad, 5), projector.project(grad, 5))
    assert (restored.update_proj_gap, restored.queue, restored.svd_count) == \
        (projector.update_proj_gap, projector.queue, projector.svd_count)


@pytest.mark.parametrize("options,fragment", [
    ({"proj_type": "left"}, "only 'std'"),
    ({"proj_bits": 9}, "between 1 and 8"),
    ({"queue_size": 0}, "queue_size must be a positive integer"),
])
def test_bad_options_raise_one_clear_error(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class("q_galore").Options(**options)
