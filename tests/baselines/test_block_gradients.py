"""The harness's clipping and gradient-norm logging for BAdam (gradients on p.grad, or on fp32 masters) and for BAdam's
ratio mode: clip_and_norm reports the fp32 norm of the gradients the step will use and clips what the step uses."""
from __future__ import annotations

import math

import pytest
import torch

from tests.baselines.conftest import build, make_llama


def norm_of(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])))


@pytest.mark.parametrize("name,options", [("badam", {"gradients": "param"}), ("badam", {"gradients": "master"}),
                                          ("badam", {"gradients": None}), ("badam_ratio", {"update_ratio": 0.3})])
def test_clip_and_norm_reports_the_true_norm_and_clips_the_update(name, options, batch):
    method, model = build(name, make_llama(), lr=1.0, **options)
    if name == "badam":
        assert method.optimizer.gradients == (options["gradients"] or "param")  # None: "param" outside FSDP2
    for last in (False, True):  # two micro-batches: the fp32 accumulation path
        method.backward(model(**batch).loss / 2, last_micro_batch=last)
    def grads():  # what step() reads
        return [t.grad for t in method.trainable_parameters() if t.grad is not None]

    expected = norm_of(grads())
    assert method.clip_and_norm(None) == pytest.approx(expected, rel=1e-2)  # measuring does not clip
    assert norm_of(grads()) == pytest.approx(expected, rel=1e-6)
    norm = method.clip_and_norm(expected / 4)
    assert norm == pytest.approx(expected, rel=1e-2)
    assert norm_of(grads()) == pytest.approx(expected / 4, rel=1e-2)
    method.step()
    method.zero_grad()
    assert method.clip_and_norm(None) is None  # nothing to measure after zero_grad


def test_badam_keeps_the_standard_contract_in_the_harness(batch):
    """What the loop leaves after backward is what a torch user sees: the active block's p.grad."""
    method, model = build("badam", make_llama(), switch_mode="ascending")
    method.backward(model(**batch).loss)
    active = [p for n, p in model.named_parameters() if n.startswith("model.layers.0.")]
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in active)
    torch_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf))
    assert method.clip_and_norm(None) == pytest.approx(torch_norm, rel=1e-2)
