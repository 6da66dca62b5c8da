"""BlockLLM: a scoring step ranks every candidate tensor by gradient norm / (1 + times chosen), the top ones up to
(1 - sparsity) of the parameters train with AdamW, and the subset is reselected when the loss stops improving."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.model_parts import layer_index
from baselines.registry import get_method_class
from tests.baselines.conftest import after_backward_and_step, build, make_llama, train_step
from tests.baselines.test_resume import check_resume_is_bitwise
from tests.baselines.test_training import check_three_steps_lower_the_loss


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_defaults():
    options = get_method_class("blockllm").Options()
    assert (options.sparsity, options.patience, options.include_embedding_and_head) == (0.95, 100, False)


def test_three_steps_lower_the_loss(batch):
    check_three_steps_lower_the_loss("blockllm", 1e-2, {"sparsity": 0.5, "patience": 1}, batch)


def test_resume_is_bitwise(batch):
    # patience 1 with a constant batch: the steps cross a reselection (a scoring step, then a new subset)
    check_resume_is_bitwise("blockllm", {"sparsity": 0.7, "patience": 1}, batch)


def reference_selection(batch, sparsity: float, visits: dict | None = None) -> list[str]:
    """The rule written out: norms of each layer tensor's gradient (bf16, as the hook sees them) divided by
    1 + visits, taken in decreasing order until (1 - sparsity) of the candidates' parameters are covered."""
    model = make_llama()
    model(**batch).loss.backward()
    candidates = [(n, p) for n, p in model.named_parameters() if layer_index(n) is not None]
    visits = visits or {}
    scores = {n: float(p.grad.float().norm()) / (1 + visits.get(n, 0)) for n, p in candidates}
    budget = math.ceil((1 - sparsity) * sum(p.numel() for _, p in candidates))
    chosen, count = [], 0
    for name, _ in sorted(candidates, key=lambda item: -scores[item[0]]):
        if count >= budget:
            break
        chosen.append(name)
        count += dict(candidates)[name].numel()
    return sorted(chosen)


def test_first_step_scores_without_holding_gradients_then_selects_the_top_tensors(batch):
    method, model = build("blockllm", make_llama(), sparsity=0.8)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(p.requires_grad for n, p in model.named_parameters() if layer_index(n) is not None)
    loss = model(**batch).loss
    method.backward(loss)
    assert method.memory_split(model)["gradients"] == 0  # every scored gradient was freed in its hook
    assert method.clip_and_norm(1.0) is None  # nothing trains on the scoring step
    method.step()
    method.zero_grad()
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters())
    assert sorted(trainable(model)) == reference_selection(batch, 0.8)
    assert method.describe()["blockllm_selections"] == 1
    assert not any(n.startswith(("model.embed_tokens", "lm_head")) for n in trainable(model))


def test_reselection_when_the_loss_stops_improving_and_visits_lower_the_score(batch):
    # lr = 0: the loss stays the same, so after patience + 1 losses the mean of the last m equals the mean of all
    method, model = build("blockllm", make_llama(), lr=0.0, sparsity=0.8, patience=2)
    first = sorted(trainable(model))
    train_step(method, model, batch)  # scoring + selection
    selected = sorted(trainable(model))
    for _ in range(3):
        train_step(method, model, batch)
        assert method.describe()["blockllm_selections"] == 1
    assert sorted(trainable(model)) == first != selected  # the next step scores again: every candidate has a grad
    train_step(method, model, batch)
    assert method.describe()["blockllm_selections"] == 2
    visits = {n: 1 for n in selected}
    assert sorted(trainable(model)) == reference_selection(batch, 0.8, visits)


def test_no_reselection_while_the_loss_falls(batch):
    method, model = build("blockllm", make_llama(), lr=1e-2, sparsity=0.5, patience=2)
    for _ in range(6):
        train_step(method, model, batch)
    assert method.describe()["blockllm_selections"] == 1


def test_memory_is_16_bytes_per_selected_parameter(batch):
    method, model = build("blockllm", make_llama(), sparsity=0.6)
    train_step(method, model, batch)  # scoring step
    n = sum(p.numel() for p in model.parameters())
    selected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    grads, states = after_backward_and_step(method, model, batch)
    assert grads["parameters"] == 2 * n
    assert grads["gradients"] == 4 * selected
    assert states["optimizer_states"] == 12 * selected


def test_embedding_and_head_can_be_candidates(batch):
    method, model = build("blockllm", make_llama(), sparsity=0.0, include_embedding_and_head=True)
    train_step(method, model, batch)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= trainable(model)


@pytest.mark.parametrize("options,fragment", [
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"sparsity": -0.1}, "sparsity must be in"),
    ({"patience": 0}, "patience must be an integer"),
    ({"eps": 0}, "eps must be > 0"),
])
def test_bad_options_raise_one_clear_error(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class("blockllm").Options(**options)
