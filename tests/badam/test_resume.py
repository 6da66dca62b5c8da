"""A run split at a mid-block step and resumed from saved state is bitwise identical to the uninterrupted run."""

import pytest
import torch

from badam import BlockOptimizer

from .tiny import clone_model, params_equal, roundtrip, tiny_llama, train_steps


def build(model, seed=7):
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    base = torch.optim.AdamW(groups, lr=3e-3)
    opt = BlockOptimizer(base, list(model.named_parameters()), switch_block_every=3, switch_mode="random",
                         include_embedding=True, include_lm_head=True, verbose=0, seed=seed)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s))
    return opt, sched



@pytest.mark.filterwarnings("ignore:BlockOptimizer.*full precision")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_mid_block_and_resume_is_bitwise_identical(dtype):
    total, split = 20, 10  # 20 steps = 3+ block-epochs of 6 blocks at K=3; step 10 is the 2nd step of a visit
    reference = tiny_llama(dtype=dtype)
    start = clone_model(reference)
    opt, sched = build(reference)
    train_steps(reference, opt, total, scheduler=sched)

    first = clone_model(start)
    opt1, sched1 = build(first)
    train_steps(first, opt1, split, scheduler=sched1)
    assert opt1.step_in_block == split % 3 != 0  # really mid-block
    saved = roundtrip({"model": first.state_dict(), "optimizer": opt1.state_dict(), "scheduler": sched1.state_dict()})
    del first, opt1, sched1

    resumed = tiny_llama(dtype=dtype, seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2, sched2 = build(resumed, seed=999)  # a different seed too: the generator state is restored
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert opt2.global_step == split and opt2.current_block == saved["optimizer"]["schedule"]["order"][
        saved["optimizer"]["schedule"]["order_pos"]]
    train_steps(resumed, opt2, total - split, first_step=split, scheduler=sched2)

    assert params_equal(resumed, reference)
    assert opt2.describe()["active_block"] == opt.describe()["active_block"]
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_resume_without_master_copies_is_not_bitwise():
    """Why masters are saved: re-deriving them from the bf16 weights loses the fp32 bits of the current visit."""
    reference = tiny_llama()
    start = clone_model(reference)
    opt, sched = build(reference)
    train_steps(reference, opt, 8, scheduler=sched)
    first = clone_model(start)
    opt1, sched1 = build(first)
    train_steps(first, opt1, 5, scheduler=sched1)
    state = opt1.state_dict()
    resumed = clone_model(first)
    opt2, sched2 = build(resumed)
    state["masters"] = [m.to(torch.bfloat16).float() for m in state["masters"]]
    opt2.load_state_dict(state)
    sched2.load_state_dict(sched1.state_dict())
    train_steps(resumed, opt2, 3, first_step=5, scheduler=sched2)
    assert not params_equal(resumed, reference)


def test_load_rejects_foreign_or_mismatched_state():
    model = tiny_llama(layers=2)
    opt, _ = build(model)
    with pytest.raises(ValueError, match="not a BlockOptimizer state dict"):
        opt.load_state_dict(opt.base_optimizer.state_dict())
    other = tiny_llama(layers=3)
    opt3, _ = build(other)
    with pytest.raises(ValueError, match="saved num_blocks 5 differs"):
        opt.load_state_dict(opt3.state_dict())
    wider = tiny_llama(layers=2, hidden=48)  # same names and blocks, other shapes
    opt_wide, _ = build(wider)
    with pytest.raises(ValueError, match=r"saved master of model\.\S+ has shape \((\d+, )?48,?\), this model's .*"
                                         "comes from another model"):
        opt.load_state_dict(opt_wide.state_dict())
    assert opt.global_step == 0 and opt.describe() == build(tiny_llama(layers=2))[0].describe()  # nothing changed
