"""memory_split reports the bytes each method really holds, checked against hand-computed per-parameter costs."""
from __future__ import annotations

import pytest
import torch

from tests.baselines.conftest import after_backward_and_step, build, make_llama


def numel(params) -> int:
    return sum(p.numel() for p in params)


def test_adam_is_18_bytes_per_parameter(batch):
    model = make_llama()
    n = numel(model.parameters())
    method, model = build("adam", model)
    grads, states = after_backward_and_step(method, model, batch)
    assert grads["parameters"] == 2 * n  # bf16 weights
    assert grads["gradients"] == 4 * n  # fp32 gradients (the bf16 ones are folded in and freed during backward)
    assert grads["optimizer_states"] == 4 * n  # fp32 masters; moments do not exist before the first step
    assert states["optimizer_states"] == 12 * n  # masters + exp_avg + exp_avg_sq
    assert sum(grads.values()) - grads["optimizer_states"] + states["optimizer_states"] == 18 * n
    method.zero_grad()
    assert method.memory_split(model)["gradients"] == 0


def test_adam_bf16_is_8_bytes_per_parameter(batch):
    model = make_llama()
    n = numel(model.parameters())
    method, model = build("adam_bf16", model)
    grads, states = after_backward_and_step(method, model, batch)
    assert (grads["parameters"], grads["gradients"], states["optimizer_states"]) == (2 * n, 2 * n, 4 * n)


def test_sgd_counts_masters_and_momentum(batch):
    model = make_llama()
    n = numel(model.parameters())
    method, model = build("sgd", model, momentum=0.0)
    _, split = after_backward_and_step(method, model, batch)
    assert split["optimizer_states"] == 4 * n  # masters only
    method, model = build("sgd", make_llama(), momentum=0.9)
    _, split = after_backward_and_step(method, model, batch)
    assert split["optimizer_states"] == 8 * n  # masters + momentum buffers


@pytest.mark.parametrize("gradients,grad_bytes", [("param", 2), ("master", 4)])
def test_badam_holds_masters_moments_and_gradients_of_the_active_block_only(batch, gradients, grad_bytes):
    """bf16 p.grad (2 bytes, "param" mode) or fp32 master gradient (4 bytes) + fp32 master and two moments (12)."""
    model = make_llama()
    n = numel(model.parameters())
    layer0 = numel(p for name, p in model.named_parameters() if name.startswith("model.layers.0."))
    method, model = build("badam", model, switch_mode="ascending", gradients=gradients)
    grads, states = after_backward_and_step(method, model, batch)
    assert grads["parameters"] == 2 * n
    assert grads["gradients"] == grad_bytes * layer0
    assert states["optimizer_states"] == 12 * layer0  # fp32 master + two fp32 moments of the active block
    method.zero_grad()
    assert method.memory_split(model)["gradients"] == 0


def test_badam_accumulation_holds_an_fp32_sum_beside_the_bf16_gradient(batch):
    model = make_llama()
    layer0 = numel(p for name, p in model.named_parameters() if name.startswith("model.layers.0."))
    method, model = build("badam", model, switch_mode="ascending")
    for last in (False, True):
        method.backward(model(**batch).loss / 2, last_micro_batch=last)
    assert method.memory_split(model)["gradients"] == 6 * layer0


def test_badam_ratio_holds_16_bytes_per_selected_entry(batch):
    model = make_llama()
    n = numel(model.parameters())
    method, model = build("badam_ratio", model, update_ratio=0.25, preserve_threshold=0)
    entries = method.optimizer.trainable_entries
    grads, states = after_backward_and_step(method, model, batch)
    assert grads["parameters"] == 2 * n and grads["gradients"] == 4 * entries  # fp32, selected entries only
    assert states["optimizer_states"] == 12 * entries  # fp32 master values + two moments
    assert 0.2 * n < entries < 0.25 * n  # embeddings and lm_head are frozen


def test_badam_official_holds_the_same_active_block_bytes(batch):
    model = make_llama()
    layer1 = numel(p for name, p in model.named_parameters() if name.startswith("model.layers.1."))
    method, model = build("badam_official", model, switch_mode="descending")
    grads, states = after_backward_and_step(method, model, batch)
    assert grads["gradients"] == 2 * layer1  # 1.4 keeps bf16 gradients until step
    assert states["optimizer_states"] == 12 * layer1


def test_lora_counts_adapters_as_parameters(batch):
    model = make_llama()
    n_base = numel(model.parameters())
    method, peft_model = build("lora", model, rank=4)
    n_lora = numel(p for name, p in peft_model.named_parameters() if "lora_" in name)
    grads, states = after_backward_and_step(method, peft_model, batch)
    assert grads["parameters"] == 2 * n_base + 4 * n_lora  # bf16 base + fp32 adapters
    assert grads["gradients"] == 4 * n_lora
    assert states["optimizer_states"] == 8 * n_lora  # adapters are fp32: no master copies, two moments


def galore_bytes(model, rank: int) -> int:
    """fp32 masters of everything, full moments for non-GaLore parameters, and for each layer matrix (m x k) the
    low-rank moments plus the projector of galore-torch's 'std' projection. With fp32 gradients that projector is a
    slice (view) of the full SVD factor, Vh (k x k) when m >= k else U (m x m), so the whole factor stays allocated."""
    total = 0
    for name, p in model.named_parameters():
        total += 4 * p.numel()
        if name.startswith("model.layers.") and p.dim() == 2:
            m, k = p.shape
            r = min(rank, m, k)
            low_rank, svd_factor = (m * r, k * k) if m >= k else (r * k, m * m)
            total += 4 * (2 * low_rank + svd_factor)
        else:
            total += 8 * p.numel()
    return total


def test_galore_counts_low_rank_moments_and_projectors(batch):
    model = make_llama()
    expected = galore_bytes(model, rank=4)
    method, model = build("galore", model, rank=4)
    _, states = after_backward_and_step(method, model, batch)
    assert states["optimizer_states"] == expected


def test_galore_layerwise_holds_the_same_states_and_no_gradients(batch):
    model = make_llama()
    expected = galore_bytes(model, rank=4)
    method, model = build("galore_layerwise", model, rank=4)
    grads, _ = after_backward_and_step(method, model, batch)
    assert grads["gradients"] == 0  # each gradient was consumed by its update inside backward
    assert grads["optimizer_states"] == expected


def test_lomo_holds_no_gradients_and_no_state(batch):
    model = make_llama()
    n = numel(model.parameters())
    method, model = build("lomo", model)
    grads, states = after_backward_and_step(method, model, batch)
    assert grads == {"parameters": 2 * n, "gradients": 0, "optimizer_states": 0}
    assert states == grads


def test_fp32_model_has_no_master_copies(batch):
    model = make_llama(dtype=torch.float32)
    n = numel(model.parameters())
    method, model = build("adam", model)
    _, states = after_backward_and_step(method, model, batch)
    assert states == {"parameters": 4 * n, "gradients": 4 * n, "optimizer_states": 8 * n}


def test_lora_bf16_adapters_get_fp32_masters(batch):
    model = make_llama()
    n_base = numel(model.parameters())
    method, peft_model = build("lora", model, rank=4, adapter_dtype="bf16")
    n_lora = numel(p for name, p in peft_model.named_parameters() if "lora_" in name)
    grads, states = after_backward_and_step(method, peft_model, batch)
    assert grads["parameters"] == 2 * (n_base + n_lora)
    assert grads["gradients"] == 4 * n_lora
    assert states["optimizer_states"] == 12 * n_lora  # masters + two moments: the paper's Table 2 accounting
