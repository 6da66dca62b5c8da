"""BlockOptimizerRatio against badam 1.4's: the same parameters where 1.4 is right, and its defects.

Where 1.4 is right: fp32 weights (1.4 updates the weights in place in their own dtype), no weight decay (1.4 has none),
no gradient accumulation (1.4 moves its mask within a step), parameters above preserve_threshold (1.4 masks the small
ones anyway), and eps = 0: 1.4 adds eps to sqrt(v) before the bias correction (torch.optim.SparseAdam's formula),
torch's AdamW after it, so with eps > 0 the two differ where |gradient| is near eps.
"""
import pytest
import torch

from badam import BlockOptimizerRatio
from badam.reference import load_official

from .tiny import clone_model, lm_batch, tiny_llama


@pytest.fixture
def official():
    return load_official()


def run(model, opt, steps, ours):
    for s in range(steps):
        model(**lm_batch(s)).loss.backward()
        if ours:
            opt.clip_grad_norm_(float("inf"))
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("mask_mode,keep_mask", [("adjacent", True), ("scatter", False)])
def test_same_parameters_as_official_across_mask_switches(official, mask_mode, keep_mask):
    theirs = tiny_llama(dtype=torch.float32)
    ours = clone_model(theirs)
    common = dict(update_ratio=0.1, switch_every=2, preserve_threshold=0, mask_mode=mask_mode, keep_mask=keep_mask,
                  lr=1e-2, eps=0.0, verbose=0)
    opt_theirs = official.BlockOptimizerRatio(list(theirs.parameters()), list(theirs.named_parameters()), **common)
    seeds = {n: opt_theirs.sparse_dict[p]["seed"] for n, p in theirs.named_parameters()}  # 1.4's scatter seeds
    opt_ours = BlockOptimizerRatio(list(ours.parameters()), list(ours.named_parameters()), mask_seeds=seeds, **common)
    run(theirs, opt_theirs, 5, ours=False)  # 5 steps: two mask switches (offsets move, states restart)
    run(ours, opt_ours, 5, ours=True)
    start = tiny_llama(dtype=torch.float32)
    for (name, a), b, s in zip(ours.named_parameters(), theirs.parameters(), start.parameters()):
        assert torch.equal(a != s, b != s), name  # the same entries trained
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # to fp32 rounding of a different operation order
    assert any((a != s).any() for a, s in zip(ours.parameters(), start.parameters()))


def test_official_crashes_on_tied_embeddings(official):
    model = tiny_llama(tie=True)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'requires_grad_'"):
        official.BlockOptimizerRatio(list(model.parameters()), list(model.named_parameters()), verbose=0)
    BlockOptimizerRatio(list(model.parameters()), list(model.named_parameters()), verbose=0)  # ours: fine


def test_official_ignores_weight_decay_ours_applies_it(official):
    def moved(make, wd):
        model = tiny_llama(dtype=torch.float32, layers=2)
        start = clone_model(model)
        opt = make(model, [{"params": list(model.parameters()), "weight_decay": wd}])
        run(model, opt, 1, ours=isinstance(opt, BlockOptimizerRatio))
        return torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), start.parameters())])

    def theirs(model, groups):
        return official.BlockOptimizerRatio(groups, list(model.named_parameters()), lr=0.1, verbose=0)

    def ours(model, groups):
        return BlockOptimizerRatio(groups, list(model.named_parameters()), lr=0.1, verbose=0)

    assert torch.equal(moved(theirs, 0.0), moved(theirs, 0.5))
    assert not torch.equal(moved(ours, 0.0), moved(ours, 0.5))


def test_official_masks_parameters_below_preserve_threshold(official):
    """1.4's hook sparsifies a small parameter whole but then falls through to the masking branch (no elif)."""
    model = tiny_llama(dtype=torch.float32, layers=2)
    start = clone_model(model)
    opt = official.BlockOptimizerRatio(list(model.parameters()), list(model.named_parameters()), update_ratio=0.1,
                                       preserve_threshold=100, lr=1e-2, verbose=0)
    run(model, opt, 1, ours=False)
    norm, before = model.model.norm.weight, start.model.norm.weight
    assert int((norm != before).sum()) == 3  # int(32 x 0.1) of 32 entries, although 32 < preserve_threshold


def test_official_reseeds_the_global_rng_in_backward_ours_does_not(official):
    def draw_after_one_step(make):
        model = tiny_llama(dtype=torch.float32, layers=2)
        opt = make(model)
        torch.manual_seed(123)
        model(**lm_batch(0)).loss.backward()
        return torch.rand(4)

    expected = (torch.manual_seed(123), torch.rand(4))[1]
    theirs = draw_after_one_step(lambda m: official.BlockOptimizerRatio(
        list(m.parameters()), list(m.named_parameters()), mask_mode="scatter", verbose=0))
    ours = draw_after_one_step(lambda m: BlockOptimizerRatio(
        list(m.parameters()), list(m.named_parameters()), mask_mode="scatter", verbose=0))
    assert torch.equal(ours, expected)  # dropout, data shuffling, ... see the RNG stream they seeded
    assert not torch.equal(theirs, expected)


def test_official_gradient_memory_is_dominated_by_int64_indices(official):
    """After backward 1.4 holds a sparse COO gradient per matrix (int64 index pairs + values); ours holds one fp32
    value per selected entry."""
    model = tiny_llama(layers=2)
    opt = official.BlockOptimizerRatio(list(model.parameters()), list(model.named_parameters()), verbose=0,
                                       preserve_threshold=0)
    model(**lm_batch(0)).loss.backward()
    sparse = [p.grad for p in model.parameters() if p.grad is not None]
    theirs = sum(g._indices().numel() * 8 + g._values().numel() * g._values().element_size() for g in sparse)
    ours_model = tiny_llama(layers=2)
    ours_opt = BlockOptimizerRatio(list(ours_model.parameters()), list(ours_model.named_parameters()), verbose=0,
                                   preserve_threshold=0)
    ours_model(**lm_batch(0)).loss.backward()
    ours = ours_opt.memory_bytes()["grads"]
    assert ours == 4 * ours_opt.trainable_entries
    assert theirs >= 4 * ours  # 2-D: 16 bytes of indices + 2 of value per entry, against 4
    del opt
