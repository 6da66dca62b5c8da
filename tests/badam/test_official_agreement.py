"""Against the official badam 1.4: the same trajectory where 1.4 is right, and the deliberate differences.

Where 1.4 is right (weight decay 0, one lr, every parameter has a gradient, fixed order) both implement the same
algorithm: fp32 master copy of the active block, AdamW on it, write-back to the model, fresh state at each switch.
1.4 gives its first block K-1 steps, so the comparison starts where 1.4 enters its second block: we train 1.4's first
(short) visit, hand the same weights to ours starting at 1.4's second block, and compare every later visit.
"""
from types import SimpleNamespace

import pytest
import torch

from badam import BlockOptimizer
from badam.reference import load_official

from .tiny import clone_model, lm_batch, params_equal, tiny_bert, tiny_llama, train_steps

K = 3


@pytest.fixture
def official(monkeypatch):
    module = load_official()
    # 1.4 runs gc.collect() at every switch: over a second each with transformers loaded, and no effect on numbers
    monkeypatch.setattr(module.block_optim, "gc", SimpleNamespace(collect=lambda: 0))
    return module


def official_optimizer(official, model, base, **kwargs):
    return official.BlockOptimizer(base, list(model.named_parameters()), switch_block_every=K, verbose=0, **kwargs)


@pytest.mark.filterwarnings("ignore:BlockOptimizer.*full precision", "ignore:BAdam expect model")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode,second_block", [("ascending", 1), ("descending", 2)])
def test_same_parameters_as_official_after_several_switches(official, dtype, mode, second_block):
    theirs = tiny_llama(dtype=dtype)
    opt_theirs = official_optimizer(official, theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-2,
                                                                        weight_decay=0.0), switch_mode=mode)
    train_steps(theirs, opt_theirs, K - 1)  # 1.4's short first visit
    ours = clone_model(theirs)
    opt_ours = BlockOptimizer(torch.optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.0),
                              list(ours.named_parameters()), switch_block_every=K, switch_mode=mode,
                              start_block=second_block, verbose=0)
    for visit in range(3):  # three more visits, i.e. three switches
        first = K - 1 + visit * K
        train_steps(theirs, opt_theirs, K, first_step=first)
        train_steps(ours, opt_ours, K, first_step=first)
        assert params_equal(ours, theirs), f"diverged in visit {visit}"
    changed = [n for (n, a), b in zip(ours.named_parameters(), tiny_llama(dtype=dtype).parameters())
               if not torch.equal(a, b)]
    assert len({n.split(".")[2] for n in changed}) == 4  # all four layers were trained along the way


def test_first_block_gets_k_steps_not_k_minus_1(official):
    """1.4 switches when (global_step + 1) % K == 0, so its first visit is one step short."""
    theirs = tiny_llama()
    opt_theirs = official_optimizer(official, theirs, torch.optim.AdamW(theirs.parameters()), switch_mode="ascending")
    ours = clone_model(theirs)
    opt_ours = BlockOptimizer(torch.optim.AdamW(ours.parameters()), list(ours.named_parameters()),
                              switch_block_every=K, switch_mode="ascending", verbose=0)
    layer0 = lambda m: m.model.layers[0].mlp.up_proj.weight.requires_grad  # noqa: E731
    train_steps(theirs, opt_theirs, K - 1)
    train_steps(ours, opt_ours, K - 1)
    assert not layer0(theirs)  # 1.4 already left block 0 after K-1 steps
    assert layer0(ours) and opt_ours.step_in_block == K - 1
    train_steps(ours, opt_ours, 1, first_step=K - 1)
    assert not layer0(ours) and opt_ours.current_block == 1


@pytest.mark.filterwarnings("ignore:BlockOptimizer.*full precision", "ignore:BAdam expect model")
def test_group_weight_decay_and_lr_are_honoured(official):
    """1.4 rebuilds the groups with the base optimizer's defaults: the user's decay (0.1 on matrices, 0 on norms)
    becomes AdamW's default 0.01 everywhere and every lr becomes group 0's. Ours equals a plain AdamW step over the
    user's groups restricted to the active block."""
    def groups(model):
        return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1, "lr": 1e-2},
                {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0, "lr": 5e-2}]

    start = tiny_llama(dtype=torch.float32)
    models = {name: clone_model(start) for name in ("ours", "theirs", "plain")}
    opt_ours = BlockOptimizer(torch.optim.AdamW(groups(models["ours"])), list(models["ours"].named_parameters()),
                              switch_block_every=K, start_block=1, switch_mode="ascending", verbose=0)
    opt_theirs = official_optimizer(official, models["theirs"], torch.optim.AdamW(groups(models["theirs"])),
                                    start_block=1, switch_mode="ascending")
    assert {g["weight_decay"] for g in opt_theirs.base_optimizer.param_groups} == {0.01}
    plain = models["plain"]
    for name, p in plain.named_parameters():
        p.requires_grad_(name.startswith("model.layers.1."))
    opt_plain = torch.optim.AdamW(groups(plain))
    for name, opt in (("ours", opt_ours), ("theirs", opt_theirs), ("plain", opt_plain)):
        train_steps(models[name], opt, 2)
    assert params_equal(models["ours"], models["plain"])
    norm_theirs = models["theirs"].model.layers[1].input_layernorm.weight
    norm_plain = plain.model.layers[1].input_layernorm.weight
    assert not torch.equal(norm_theirs, norm_plain)


def test_parameter_without_gradient_crashes_official_but_not_ours(official):
    def model_with_unused_param():
        model = tiny_llama(layers=2)
        model.model.layers[1].extra = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        return model

    theirs = model_with_unused_param()
    opt_theirs = official_optimizer(official, theirs, torch.optim.AdamW(theirs.parameters()), switch_mode="descending")
    theirs(**lm_batch(0)).loss.backward()
    with pytest.raises(AssertionError, match="gradient is None"):
        opt_theirs.step()
    ours = model_with_unused_param()
    opt_ours = BlockOptimizer(torch.optim.AdamW(ours.parameters()), list(ours.named_parameters()),
                              switch_block_every=K, switch_mode="descending", verbose=0)
    train_steps(ours, opt_ours, 2)
    assert torch.equal(ours.model.layers[1].extra, torch.ones(4, dtype=torch.bfloat16))


def test_official_finds_no_blocks_in_bert_names_ours_finds_every_layer(official):
    names = [n for n, _ in tiny_bert(layers=3).named_parameters()]
    assert official.BlockOptimizer.infer_param_groups(None, names, False, False) == []
    from badam.partition import infer_block_prefixes

    assert infer_block_prefixes(names) == [[f"bert.encoder.layer.{i}."] for i in range(3)]


def test_state_dict_of_official_lacks_the_schedule(official):
    model = tiny_llama(layers=2)
    opt_theirs = official_optimizer(official, model, torch.optim.AdamW(model.parameters()), switch_mode="random")
    assert set(opt_theirs.state_dict()) == {"state", "param_groups"}  # block order, index and step are lost


def test_load_official_reports_a_missing_install(tmp_path):
    with pytest.raises(ModuleNotFoundError, match="official badam 1.4 not found under"):
        load_official(tmp_path, module_name="badam_official_missing")
