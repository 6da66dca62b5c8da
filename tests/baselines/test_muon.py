"""Muon (torch.optim.Muon) for the layers' weight matrices, AdamW for the rest, Moonlight's update scaling so one lr
serves both; 14 bytes per matrix parameter."""
from __future__ import annotations

import pytest
import torch

from baselines.model_parts import layer_index
from baselines.registry import get_method_class
from tests.baselines.conftest import build, make_llama, train_step
from tests.baselines.test_resume import check_resume_is_bitwise
from tests.baselines.test_training import check_three_steps_lower_the_loss


def test_three_steps_lower_the_loss(batch):
    check_three_steps_lower_the_loss("muon", 1e-2, {}, batch)


def test_resume_is_bitwise(batch):
    check_resume_is_bitwise("muon", {}, batch)


def test_matrices_of_the_layers_get_muon_the_rest_adamw():
    method, model = build("muon", make_llama())
    muon, adamw = method.optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    masters = dict(zip(method.master_weights.params, method.master_weights.masters))
    by_name = {n: masters[p] for n, p in model.named_parameters()}
    in_muon = {n for n, m in by_name.items() if any(m is q for q in muon.param_groups[0]["params"])}
    assert in_muon == {n for n, p in model.named_parameters() if p.dim() == 2 and layer_index(n) is not None}
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def test_moonlight_scaling_gives_an_adamw_sized_update(batch):
    """0.2 * sqrt(max(A, B)) times an orthogonalised matrix (RMS 1 / sqrt(max(A, B))): update RMS about 0.2 lr, the
    RMS of a typical AdamW update, whatever the shape."""
    lr = 1e-2
    method, model = build("muon", make_llama(dtype=torch.float32), lr=lr)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(method, model, batch)
    for name, p in model.named_parameters():
        if p.dim() == 2 and layer_index(name) is not None:
            rms = float((p.detach() - start[name]).pow(2).mean().sqrt())
            assert 0.1 * lr < rms < 0.3 * lr, f"{name}: update RMS {rms:.2e} for lr {lr}"


def test_memory_split(batch):
    model = make_llama()
    n = sum(p.numel() for p in model.parameters())
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and layer_index(name) is not None)
    method, model = build("muon", model)
    train_step(method, model, batch)
    split = method.memory_split(model)
    # masters (4) for all; Muon's momentum (4) for matrices, AdamW's two moments (8) for the rest
    assert split["optimizer_states"] == 4 * n + 4 * matrices + 8 * (n - matrices)
    assert method.describe()["muon_parameters"] == matrices


@pytest.mark.parametrize("options,fragment", [
    ({"adjust_lr": "spectral"}, "match_rms_adamw, original"),
    ({"ns_steps": 0}, "ns_steps"),
    ({"momentum": 1.0}, "momentum"),
])
def test_bad_options_raise_one_clear_error(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class("muon").Options(**options)


def test_no_matrix_in_the_targets_is_refused():
    with pytest.raises(ValueError, match="target_modules"):
        build("muon", make_llama(), target_modules=["no_such_proj"])


def test_a_torch_without_muon_is_recorded_as_unsupported(monkeypatch):
    from baselines.errors import MethodUnsupportedError

    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(MethodUnsupportedError, match="torch >= 2.9"):
        build("muon", make_llama())
