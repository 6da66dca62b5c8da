"""FP32MasterWeights: fp32 copies, fp32 accumulation through hooks, write-back, release, byte counts."""
import pytest
import torch

from badam.mixed_precision import FP32MasterWeights


def _bf16_linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 4).to(torch.bfloat16)


def test_masters_are_fp32_copies_and_model_grad_is_freed():
    layer = _bf16_linear()
    mp = FP32MasterWeights(list(layer.parameters()))
    assert [m.dtype for m in mp.masters] == [torch.float32, torch.float32]
    for p, m in zip(layer.parameters(), mp.masters):
        assert m is not p and m.is_leaf
        assert torch.equal(m, p.float())
    layer(torch.randn(3, 8, dtype=torch.bfloat16)).sum().backward()
    assert all(p.grad is None for p in layer.parameters())
    assert all(m.grad is not None and m.grad.dtype == torch.float32 for m in mp.masters)


def test_accumulation_is_fp32_sum_of_micro_batch_grads():
    layer = _bf16_linear()
    inputs = [torch.randn(5, 8, dtype=torch.bfloat16) * 10 ** k for k in range(-3, 2)]
    # reference: each micro-batch's bf16 gradient, summed in fp32
    expected = torch.zeros(4, 8)
    for x in inputs:
        layer.weight.grad = None
        layer(x).sum().backward()
        expected += layer.weight.grad.float()
    layer.zero_grad(set_to_none=True)
    mp = FP32MasterWeights(list(layer.parameters()))
    for x in inputs:
        layer(x).sum().backward()
    assert torch.equal(mp.masters[0].grad, expected)
    # a bf16 running sum would differ: this is what fp32 accumulation buys
    bf16_sum = torch.zeros(4, 8, dtype=torch.bfloat16)
    for x in inputs:
        g = torch.autograd.grad(layer(x).sum(), layer.weight)[0]
        bf16_sum += g
    assert not torch.equal(bf16_sum.float(), expected)


def test_copy_to_model_zero_grad_and_release():
    layer = _bf16_linear()
    mp = FP32MasterWeights(list(layer.parameters()))
    opt = torch.optim.SGD(mp.masters, lr=0.5)
    layer(torch.ones(2, 8, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    mp.copy_to_model()
    assert torch.equal(layer.weight, mp.masters[0].to(torch.bfloat16))
    mp.zero_grad()
    assert all(m.grad is None for m in mp.masters)
    mp.release()
    assert mp.masters == [] and mp.nbytes() == {"masters": 0, "grads": 0}
    layer(torch.ones(2, 8, dtype=torch.bfloat16)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.bfloat16  # hook gone


def test_fp32_params_are_their_own_masters():
    layer = torch.nn.Linear(8, 4)
    mp = FP32MasterWeights(list(layer.parameters()))
    assert all(m is p for m, p in zip(mp.masters, layer.parameters()))
    assert not mp.has_copies
    layer(torch.ones(2, 8)).sum().backward()
    assert layer.weight.grad is not None  # no hook moves it away
    assert mp.nbytes() == {"masters": 0, "grads": (32 + 4) * 4}
    mp.zero_grad()
    assert layer.weight.grad is None


def test_nbytes_counts_copies_and_grads_and_tied_params_once():
    layer = _bf16_linear()
    params = list(layer.parameters())
    mp = FP32MasterWeights(params + [layer.weight])  # the weight listed twice, as a tied embedding would be
    assert len(mp) == 2
    assert mp.nbytes() == {"masters": (32 + 4) * 4, "grads": 0}
    layer(torch.ones(2, 8, dtype=torch.bfloat16)).sum().backward()
    assert mp.nbytes()["grads"] == (32 + 4) * 4


def test_non_float_parameter_is_rejected():
    with pytest.raises(TypeError, match="not floating point"):
        FP32MasterWeights([torch.nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False)])


def test_a_new_owner_takes_over_from_an_unreleased_one():
    layer = _bf16_linear()
    stale = FP32MasterWeights(list(layer.parameters()))  # e.g. an optimizer dropped without release()
    with pytest.warns(UserWarning, match="takes it over"):
        fresh = FP32MasterWeights(list(layer.parameters()))
    layer(torch.ones(2, 8, dtype=torch.bfloat16)).sum().backward()
    assert all(m.grad is not None for m in fresh.masters)
    assert all(m.grad is None for m in stale.masters)
    stale.release()  # releasing the stale owner must not unhook the fresh one
    layer(torch.ones(2, 8, dtype=torch.bfloat16)).sum().backward()
    assert layer.weight.grad is None and fresh.nbytes()["grads"] == (32 + 4) * 4
