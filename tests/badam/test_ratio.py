"""BlockOptimizerRatio: which entries train, fp32 accumulation, memory, weight decay, tied embeddings, clipping,
resume."""

import pytest
import torch

from badam import BlockOptimizerRatio

from .tiny import clone_model, lm_batch, params_equal, roundtrip, tiny_llama, train_steps


def make(model, **kwargs):
    kwargs.setdefault("verbose", 0)
    kwargs.setdefault("lr", 1e-2)
    return BlockOptimizerRatio(model.parameters(), list(model.named_parameters()), **kwargs)


def train(model, opt, steps, first_step=0):
    for s in range(first_step, first_step + steps):
        model(**lm_batch(s)).loss.backward()
        opt.clip_grad_norm_(float("inf"))  # measures only; tells the optimizer that clipping goes through it
        opt.step()
        opt.zero_grad()


def changed_fraction(model, start):
    return {n: float((p != q).float().mean()) for (n, p), q in zip(model.named_parameters(), start.parameters())}


@pytest.mark.parametrize("mask_mode", ["adjacent", "scatter"])
def test_each_matrix_trains_its_ratio_of_entries_and_every_layer_changes(mask_mode):
    model = tiny_llama(layers=3)
    start = clone_model(model)
    opt = make(model, update_ratio=0.1, switch_every=4, mask_mode=mask_mode, preserve_threshold=0)
    train(model, opt, 4)  # one mask period
    fractions = changed_fraction(model, start)
    assert fractions.pop("model.embed_tokens.weight") == 0.0 and fractions.pop("lm_head.weight") == 0.0
    matrices = {n for n, p in model.named_parameters() if p.dim() >= 2}
    for name, fraction in fractions.items():  # int(numel x 0.1) entries each; bf16 may round a tiny move away
        assert (0.08 if name in matrices else 0.0) < fraction <= 0.1, (name, fraction)
    assert {n.split(".")[2] for n, f in fractions.items() if n.startswith("model.layers.") and f > 0} == {"0", "1", "2"}
    train(model, opt, 4, first_step=4)  # the next period trains other entries
    assert all(0.17 <= f <= 0.2 for n, f in changed_fraction(model, start).items() if "layers" in n and n in matrices)


def test_tied_embeddings_train_and_a_head_that_does_not_exist_is_refused():
    model = tiny_llama(tie=True)
    start = clone_model(model)
    opt = make(model, update_ratio=0.5, include_embedding=True)
    train(model, opt, 2)
    fraction = changed_fraction(model, start)["model.embed_tokens.weight"]
    assert 0.3 < fraction <= 0.5  # the shared matrix, trained through both of its uses
    assert model.lm_head.weight is model.model.embed_tokens.weight
    frozen = make(tiny_llama(tie=True))  # neither flag: the shared matrix is frozen (1.4 crashes here)
    assert "model.embed_tokens.weight" not in frozen.trainable_parameter_names
    with pytest.raises(ValueError, match="no parameter is named 'lm_head...'.*include_embedding=True"):
        make(tiny_llama(tie=True), include_lm_head=True)


def test_small_parameters_below_preserve_threshold_train_fully():
    model = tiny_llama(layers=2)
    start = clone_model(model)
    opt = make(model, update_ratio=0.1, preserve_threshold=100)  # norm weights have 32 entries
    train(model, opt, 2)
    fractions = changed_fraction(model, start)
    assert fractions["model.norm.weight"] > 0.9 and fractions["model.layers.0.input_layernorm.weight"] > 0.9
    assert fractions["model.layers.0.mlp.up_proj.weight"] <= 0.1


def test_param_update_ratios_override_by_name_substring():
    model = tiny_llama(layers=2)
    opt = make(model, update_ratio=0.1, param_update_ratios={"mlp": 0.5, "down_proj": None}, preserve_threshold=0)
    counts = dict(zip(opt.trainable_parameter_names, (e.count for e in opt._trained)))
    assert counts["model.layers.0.mlp.up_proj.weight"] == 1024  # 2048 entries x 0.5
    assert counts["model.layers.0.mlp.down_proj.weight"] == 1024  # None keeps the earlier match
    assert counts["model.layers.0.self_attn.q_proj.weight"] == 102  # int(1024 x 0.1)


def test_no_full_gradient_outlives_its_tensor_and_micro_batches_sum_in_fp32():
    model = tiny_llama(layers=2)
    opt = make(model, update_ratio=0.25, preserve_threshold=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    alive = []
    for p in trainable:  # runs as each gradient arrives, before it is stored: count full gradients held elsewhere
        p.register_hook(lambda g: alive.append(sum(q.grad is not None for q in trainable)) or g)
    weight = model.model.layers[1].mlp.up_proj.weight
    grads = [torch.autograd.grad(model(**lm_batch(s)).loss, weight)[0] for s in range(3)]
    alive.clear()
    for s in range(3):
        model(**lm_batch(s)).loss.backward()
    assert alive and max(alive) == 0 and all(p.grad is None for p in trainable)
    entry = next(e for e in opt._trained if e.param is weight)
    expected = sum(entry.selection.gather(g.reshape(-1), torch.float32) for g in grads)
    assert torch.equal(entry.master.grad, expected)
    held = opt.memory_bytes()
    entries = opt.trainable_entries
    assert held == {"masters": 4 * entries, "grads": 4 * entries, "optimizer_states": 0, "mask_indices": 0}
    opt.clip_grad_norm_(1.0)
    opt.step()
    assert opt.memory_bytes()["optimizer_states"] == 8 * entries  # fp32 exp_avg and exp_avg_sq, selected only


def test_weight_decay_shrinks_the_selected_entries_only():
    model = tiny_llama(layers=2)
    start = clone_model(model)
    lr, wd = 0.1, 0.5
    opt = BlockOptimizerRatio([{"params": list(model.parameters()), "weight_decay": wd}],
                              list(model.named_parameters()), update_ratio=0.25, lr=lr, verbose=0, preserve_threshold=0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)  # assigned by hand: used at the next step
    opt.clip_grad_norm_(1.0)
    opt.step()
    weight, before = model.model.layers[0].mlp.up_proj.weight.view(-1), start.model.layers[0].mlp.up_proj.weight
    entry = next(e for e in opt._trained if e.name == "model.layers.0.mlp.up_proj.weight")
    selected = torch.zeros(weight.numel(), dtype=torch.bool)
    entry.selection.write(selected, torch.ones(entry.count))
    shrunk = (before.view(-1).float() * (1 - lr * wd)).to(torch.bfloat16)
    assert torch.equal(weight[selected], shrunk[selected])
    assert torch.equal(weight[~selected], before.view(-1)[~selected])


def test_clipping_goes_through_the_optimizer_and_a_missing_clip_is_reported():
    model = tiny_llama(layers=2)
    opt = make(model, update_ratio=0.2)
    model(**lm_batch(0)).loss.backward()
    assert float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)) == 0.0  # p.grad holds nothing
    norm = opt.clip_grad_norm_(1e-3)
    grads = [m.grad for m in opt.masters if m.grad is not None]
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 1e-2 and abs(float(clipped) - 1e-3) < 1e-6
    opt.step()
    model(**lm_batch(1)).loss.backward()
    with pytest.warns(UserWarning, match="clip with optimizer.clip_grad_norm_"):
        opt.step()



@pytest.mark.parametrize("mask_mode,keep_mask", [("adjacent", True), ("scatter", True), ("scatter", False)])
def test_resume_mid_period_is_bitwise_identical(mask_mode, keep_mask):
    def build(model, seed):
        opt = BlockOptimizerRatio([{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                                  list(model.named_parameters()), update_ratio=0.2, switch_every=3, lr=3e-3,
                                  mask_mode=mask_mode, keep_mask=keep_mask, verbose=0, seed=seed)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s))

    reference = tiny_llama(layers=2)
    start = clone_model(reference)
    opt, sched = build(reference, seed=7)
    train_steps(reference, opt, 8, scheduler=sched)
    first = clone_model(start)
    opt1, sched1 = build(first, seed=7)
    train_steps(first, opt1, 4, scheduler=sched1)
    assert opt1.step_in_period == 1  # mid-period
    saved = roundtrip({"model": first.state_dict(), "optimizer": opt1.state_dict(), "scheduler": sched1.state_dict()})
    resumed = tiny_llama(layers=2, seed=5)
    resumed.load_state_dict(saved["model"])
    opt2, sched2 = build(resumed, seed=99)  # other mask seeds: masks, offsets and seeds come from the state dict
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    train_steps(resumed, opt2, 4, first_step=4, scheduler=sched2)
    assert params_equal(resumed, reference)
    with pytest.raises(ValueError, match="not a BlockOptimizerRatio state dict"):
        opt2.load_state_dict(opt2._base.state_dict())


def test_bad_arguments_raise_one_clear_error():
    model = tiny_llama(layers=2)
    for kwargs, fragment in [({"update_ratio": 0}, r"update_ratio must be a number in \(0, 1\]"),
                             ({"update_ratio": 1.5}, r"update_ratio must be a number in \(0, 1\]"),
                             ({"mask_mode": "random"}, "mask_mode 'random' is not valid; choose one of adjacent"),
                             ({"switch_every": 0}, "switch_every must be an integer >= 1"),
                             ({"preserve_threshold": -1}, "preserve_threshold must be an integer >= 0"),
                             ({"param_update_ratios": {"mlp": 2.0}}, r"param_update_ratios\['mlp'\] must be")]:
        with pytest.raises(ValueError, match=fragment):
            make(model, **kwargs)
    with pytest.warns(UserWarning, match="too small to train any entry"):
        make(model, update_ratio=0.01, preserve_threshold=0)  # int(32 x 0.01) = 0 entries of a norm weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weights_loaded_after_building_the_optimizer_are_stepped_from_not_overwritten(dtype):
    pretrained = tiny_llama(dtype=dtype, seed=1).state_dict()
    model = tiny_llama(dtype=dtype, seed=0)
    opt = make(model, update_ratio=0.5, lr=1e-9)
    model.load_state_dict(pretrained)
    train(model, opt, 1)
    for name, p in model.named_parameters():
        assert torch.allclose(p.float(), pretrained[name].float(), atol=1e-6), name
