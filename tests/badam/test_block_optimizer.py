"""BlockOptimizer: which parameters change, bytes held, schedules, BSGD, accumulation, LR, clipping, errors."""
import math
import warnings

import pytest
import torch

from badam import BlockOptimizer

from .tiny import lm_batch, tiny_llama, train_steps


def make(model, K=2, base=None, **kwargs):
    base = base or torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    kwargs.setdefault("verbose", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp32 models warn about memory; tested separately
        return BlockOptimizer(base, list(model.named_parameters()), switch_block_every=K, **kwargs)


def trained_blocks(opt, model, steps):
    """The block trained at each step (read before the step) while training."""
    seen = []
    for s in range(steps):
        seen.append(opt.current_block)
        model(**lm_batch(s)).loss.backward()
        opt.step()
    return seen


def test_only_the_active_block_changes_each_step():
    model = tiny_llama()
    opt = make(model, K=2, switch_mode="ascending", include_embedding=True, include_lm_head=True)
    for s in range(2 * opt.num_blocks):
        active = set(opt.active_parameter_names)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(**lm_batch(s)).loss.backward()
        opt.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and changed <= active, (s, changed - active)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen.isdisjoint(set(opt.active_parameter_names))


@pytest.mark.parametrize("gradients,grad_bytes", [("param", 2), ("master", 4)])
def test_bytes_held_per_active_parameter_and_released_at_a_switch(gradients, grad_bytes):
    """bf16 model: 4 bytes of fp32 master and 8 of AdamW moments per active parameter; the gradient is the bf16 p.grad
    (2 bytes, "param" mode) or the fp32 master gradient (4 bytes, "master" mode)."""
    model = tiny_llama()
    opt = make(model, K=2, switch_mode="descending", gradients=gradients)
    for s in range(5):
        n_active = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
        model(**lm_batch(s)).loss.backward()
        before_step = opt.memory_bytes()
        assert before_step["masters"] == 4 * n_active and before_step["grads"] == grad_bytes * n_active
        # the base optimizer's state refers to the active block's masters only
        state_keys = {id(t) for t in opt.base_optimizer.state}
        assert state_keys <= {id(m) for m in opt.masters}
        was_block = opt.current_block
        opt.step()
        held = opt.memory_bytes()
        if opt.current_block == was_block:  # after a step inside a visit: masters + exp_avg + exp_avg_sq
            assert held["masters"] + held["optimizer_states"] == 12 * n_active
            assert held["grads"] == (2 * n_active if gradients == "param" else 0)  # p.grad stays until zero_grad
        else:  # right after a switch: fresh masters of the new block, no state, no gradients
            n_new = sum(p.numel() for p in model.parameters() if p.requires_grad)
            assert held == {"masters": 4 * n_new, "grads": 0, "optimizer_states": 0}
        opt.zero_grad()
    counted = sum(t.numel() * t.element_size() for t in opt.masters)
    assert counted == opt.memory_bytes()["masters"]


@pytest.mark.parametrize("mode,start,expected", [
    ("ascending", None, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 0]),
    ("ascending", 2, [2, 2, 2, 3, 3, 3, 0, 0, 0, 1, 1, 1, 2, 2]),
    ("descending", None, [3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0, 3, 3]),
    ("descending", 1, [1, 1, 1, 0, 0, 0, 3, 3, 3, 2, 2, 2, 1, 1]),
    ("fixed", 2, [2] * 14),
])
def test_exactly_k_steps_per_block_in_order(mode, start, expected):
    model = tiny_llama()
    opt = make(model, K=3, switch_mode=mode, start_block=start)
    assert trained_blocks(opt, model, 14) == expected


def test_random_mode_visits_each_block_k_times_per_epoch_and_reshuffles():
    model = tiny_llama(layers=4)
    events = []
    opt = make(model, K=2, switch_mode="random", seed=3, start_block=1, log_fn=events.append)
    seen = trained_blocks(opt, model, 2 * 4 * 4)
    visits = seen[::2]
    assert all(seen[2 * i] == seen[2 * i + 1] for i in range(len(visits)))  # K=2 steps per visit
    epochs = [visits[4 * e: 4 * e + 4] for e in range(4)]
    assert all(sorted(e) == [0, 1, 2, 3] for e in epochs)
    assert epochs[0][0] == 1  # start_block comes first
    assert len({tuple(e) for e in epochs[1:]}) > 1  # a fresh permutation each block-epoch
    orders = [e["order"] for e in events if e["event"] == "order"]
    assert orders[1:4] == epochs[1:4]  # every new order is reported
    # the same seed gives the same schedule
    twin = tiny_llama(layers=4)
    assert trained_blocks(make(twin, K=2, switch_mode="random", seed=3, start_block=1), twin, 32) == seen


def test_active_modules_train_in_every_block():
    model = tiny_llama()
    opt = make(model, K=1, switch_mode="ascending", active_modules=["lm_head"])
    for s in range(4):
        assert "lm_head.weight" in opt.active_parameter_names
        before = model.lm_head.weight.detach().clone()
        model(**lm_batch(s)).loss.backward()
        opt.step()
        assert not torch.equal(model.lm_head.weight, before)
    assert opt.describe()["global_step"] == 4


def test_bsgd_step_is_plain_sgd_on_the_active_block():
    model = tiny_llama(dtype=torch.float32)
    lr = 0.1
    opt = make(model, K=5, base=torch.optim.SGD(model.parameters(), lr=lr), start_block=1, switch_mode="ascending")
    names = opt.active_parameter_names
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    loss = model(**lm_batch(0)).loss
    grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True)
    loss.backward()
    opt.step()
    for n, g in zip(names, grads):
        torch.testing.assert_close(params[n], before[n] - lr * g, rtol=0, atol=1e-7)


def test_gradient_accumulation_equals_the_large_batch_step_in_fp32():
    big = lm_batch(0, batch=4)
    halves = [{k: v[:2] for k, v in big.items()}, {k: v[2:] for k, v in big.items()}]
    results = []
    for micro in ([big], halves):
        model = tiny_llama(dtype=torch.float32)
        opt = make(model, K=3, start_block=2, switch_mode="ascending")
        for mb in micro:
            (model(**mb).loss / len(micro)).backward()
        results.append([m.grad.clone() for m in opt.masters])
        opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(results[0], results[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(results[1], results[3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def micro_batch_gradients(model, weight, micro_batches):
    """Each micro-batch's bf16 gradient of `weight` (autograd.grad leaves p.grad alone)."""
    grads = []
    for s in range(micro_batches):
        grads.append(torch.autograd.grad(model(**lm_batch(s)).loss, weight)[0])
    return grads


@pytest.mark.parametrize("gradients", ["param", "master"])
def test_bf16_micro_batches_accumulate_in_fp32(gradients):
    """Three micro-batches: the update uses their fp32 sum (SGD with lr 1 shows it exactly on the master), which a
    bf16 running sum would not equal; in "param" mode p.grad shows the rounding of that sum."""
    model = tiny_llama()
    opt = make(model, K=3, start_block=0, switch_mode="ascending", gradients=gradients,
               base=torch.optim.SGD(model.parameters(), lr=1.0))
    weight = model.model.layers[0].mlp.up_proj.weight
    grads = micro_batch_gradients(model, weight, 3)
    fp32_sum = sum(g.float() for g in grads)
    bf16_sum = grads[0] + grads[1] + grads[2]
    assert not torch.equal(bf16_sum.float(), fp32_sum)
    for s in range(3):
        model(**lm_batch(s)).loss.backward()
    if gradients == "param":
        assert torch.equal(weight.grad, fp32_sum.to(torch.bfloat16))
    else:
        assert weight.grad is None  # folded into the fp32 master at once
    master = opt.masters[opt.active_parameter_names.index("model.layers.0.mlp.up_proj.weight")]
    before = master.detach().clone()
    opt.step()
    assert torch.equal(master, before - fp32_sum)


def test_an_edit_after_accumulation_is_used_and_an_untouched_sum_keeps_fp32():
    """After two micro-batches p.grad is the bf16 rounding of the fp32 sum. Scaling it in place (as any clip does, even
    through .data) is seen and the edited p.grad is used; BlockOptimizer.clip_grad_norm_ scales the fp32 sum itself."""
    results = {}
    for how in ("torch", "data", "ours"):
        model = tiny_llama()
        opt = make(model, K=3, start_block=0, switch_mode="ascending",
                   base=torch.optim.SGD(model.parameters(), lr=1.0))
        weight = model.model.layers[0].mlp.up_proj.weight
        fp32_sum = sum(g.float() for g in micro_batch_gradients(model, weight, 2))
        for s in range(2):
            model(**lm_batch(s)).loss.backward()
        if how == "torch":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        elif how == "data":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.data.mul_(0.5)
        else:
            opt.clip_grad_norm_(1e-3)
        shown = weight.grad.clone()
        master = opt.masters[opt.active_parameter_names.index("model.layers.0.mlp.up_proj.weight")]
        before = master.detach().clone()
        opt.step()
        results[how] = (before, master.detach().clone(), shown, fp32_sum)
    before, after, shown, fp32_sum = results["data"]
    assert torch.equal(shown, fp32_sum.to(torch.bfloat16) * 0.5) and torch.equal(after, before - shown.float())
    before, after, shown, _ = results["torch"]
    assert torch.equal(after, before - shown.float())  # the clipped p.grad, whatever precision the clip had
    before, after, shown, _ = results["ours"]
    torch.testing.assert_close(before - after, shown.float(), rtol=1e-2, atol=1e-8)  # fp32 ulp of w: 4e-9
    assert not torch.equal(after, before - shown.float())  # the fp32 sum, scaled in fp32, not its bf16 rounding


def test_lr_scheduler_and_clipping_across_switches():
    model = tiny_llama()
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "lr": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "lr": 0.4}]
    opt = make(model, K=2, base=torch.optim.SGD(groups, lr=0.1), switch_mode="ascending")
    dicts = [id(g) for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    max_norm = 1e-3
    for s in range(5):
        model(**lm_batch(s)).loss.backward()
        norm = opt.clip_grad_norm_(max_norm)
        assert norm > max_norm  # the tiny max_norm really clips
        # between steps the groups list the active block's parameters, whose p.grad holds the (clipped) gradient
        active = [p for g in opt.param_groups for p in g["params"]]
        assert {id(p) for p in active} == {id(p) for p in model.parameters() if p.requires_grad}
        clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in active]))
        assert math.isclose(clipped.item(), max_norm, rel_tol=1e-2)  # bf16 gradients: 3 significant digits
        masters = dict(zip((id(p) for p in active), opt.masters))
        expected = [(masters[id(p)].detach().clone() - g["lr"] * p.grad.float())
                    for g in opt.param_groups for p in g["params"]]
        got = [masters[id(p)] for g in opt.param_groups for p in g["params"]]
        opt.step()
        if s % 2 == 0:  # within a visit the masters are the updated tensors (SGD: m - lr * clipped grad)
            for e, m in zip(expected, got):
                torch.testing.assert_close(m, e, rtol=0, atol=1e-7)
        opt.zero_grad()
        sched.step()
        assert [id(g) for g in opt.param_groups] == dicts  # same dicts across switches
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 / (s + 2), 0.4 / (s + 2)])
        assert opt.param_groups is opt.base_optimizer.param_groups


def test_transformers_cosine_schedule_drives_the_groups():
    from transformers import get_cosine_schedule_with_warmup

    model = tiny_llama()
    opt = make(model, K=1, switch_mode="ascending")
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6)
    lrs = []
    for s in range(6):
        lrs.append(opt.base_optimizer.param_groups[0]["lr"])
        model(**lm_batch(s)).loss.backward()
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-2) and lrs[1] == pytest.approx(5e-3)
    assert lrs[3] < lrs[2] and lrs[5] < lrs[4]


def test_parameter_without_gradient_is_skipped():
    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4).to(torch.bfloat16) for _ in range(2))
            self.layers[0].unused = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x.float().pow(2).mean()

    model = Stack()
    opt = make(model, K=2, switch_mode="ascending")
    weight_before = model.layers[0].weight.detach().clone()
    model(torch.ones(3, 4, dtype=torch.bfloat16)).backward()
    opt.step()
    assert torch.equal(model.layers[0].unused, torch.ones(4, dtype=torch.bfloat16))
    assert not torch.equal(model.layers[0].weight, weight_before)


def test_zero_grad_drops_fp32_gradients():
    model = tiny_llama()
    opt = make(model, K=2)
    model(**lm_batch(0)).loss.backward()
    assert opt.memory_bytes()["grads"] > 0
    opt.zero_grad()
    assert opt.memory_bytes()["grads"] == 0


def test_describe_is_json_serialisable():
    import json

    model = tiny_llama()
    opt = make(model, K=2, switch_mode="descending")
    train_steps(model, opt, 3)
    info = json.loads(json.dumps(opt.describe()))
    assert info["active_block"] == 2 and info["step_in_block"] == 1 and info["num_blocks"] == 4
    assert info["active_block_prefixes"] == ["model.layers.2."]


def test_bad_arguments_raise_one_clear_error():
    model = tiny_llama(layers=2)
    with pytest.raises(ValueError, match="switch_mode 'cyclic' is not valid; choose one of random, ascending"):
        make(model, switch_mode="cyclic")
    for bad_k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="switch_block_every must be an integer >= 1"):
            make(model, K=bad_k)
    with pytest.raises(ValueError, match="prefix 'model.layers.9.' matches no parameter name"):
        make(model, block_prefix_list=[["model.layers.0."], ["model.layers.9."]])
    with pytest.raises(ValueError, match="partition is empty"):
        make(model, block_prefix_list=[])
    with pytest.raises(ValueError, match=r"start_block must be an integer in \[0, 1\]"):
        make(model, start_block=2)
    with pytest.raises(ValueError, match="'fixed' trains one block: pass start_block"):
        make(model, switch_mode="fixed")
    with pytest.raises(ValueError, match="active_modules prefix 'head' matches no parameter"):
        make(model, active_modules=["head"])
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        BlockOptimizer(object(), list(model.named_parameters()))
    partial = torch.optim.AdamW(list(model.parameters())[:3])
    with pytest.raises(ValueError, match="not in base_optimizer's param_groups"):
        make(model, base=partial)
    with pytest.raises(ValueError, match="gradients='fp32' is not valid; choose one of param, master"):
        make(model, gradients="fp32")


def test_fp32_model_warns_about_lost_memory_savings_unless_fp32_is_intended():
    """A plain loop whose model ended up in fp32 is told (and how to go on); full_precision_ok=True (the harness, whose
    configs name the storage dtype: the CPU profiles store fp32) says it is intended: no warning; bf16: none."""
    model = tiny_llama(dtype=torch.float32, layers=2)
    with pytest.warns(UserWarning, match="memory savings are lost.*pass full_precision_ok=True if fp32 weights are "
                                         "intended"):
        BlockOptimizer(torch.optim.AdamW(model.parameters()), list(model.named_parameters()), verbose=0)
    bf16 = tiny_llama(layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockOptimizer(torch.optim.AdamW(bf16.parameters()), list(bf16.named_parameters()), verbose=0)
        fp32 = tiny_llama(dtype=torch.float32, layers=2)
        BlockOptimizer(torch.optim.AdamW(fp32.parameters()), list(fp32.named_parameters()), verbose=0,
                       full_precision_ok=True)


def test_verbose_prints_switches(capsys):
    model = tiny_llama(layers=2)
    opt = make(model, K=1, switch_mode="ascending", verbose=1)
    train_steps(model, opt, 1)
    out = capsys.readouterr().out
    assert "step 0: block 0 ['model.layers.0.']" in out and "step 1: block 1 ['model.layers.1.']" in out


@pytest.mark.parametrize("gradients", ["param", "master"])
def test_per_tensor_update_equals_whole_block_update_with_one_fp32_gradient_at_a_time(gradients):
    def run(per_tensor, probe=None):
        model = tiny_llama()
        groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0, "lr": 3e-2}]
        base = torch.optim.AdamW(groups, lr=1e-2, foreach=True)  # foreach: the block-wide temporaries case
        opt = make(model, K=2, base=base, switch_mode="ascending", per_tensor_update=per_tensor, gradients=gradients)
        if probe is not None:
            base.register_step_pre_hook(lambda *_: probe.append(
                (sum(m.grad is not None for m in opt.masters), [m.numel() for g in base.param_groups
                                                                for m in g["params"]])))
        train_steps(model, opt, 4)
        return model

    probe = []
    assert all(torch.equal(a, b) for a, b in zip(run(True, probe).parameters(), run(False).parameters()))
    first_step = probe[:9]  # a Llama layer has 9 tensors: one base step each, smallest first
    assert [len(sizes) for _, sizes in first_step] == [1] * 9
    sizes = [s[0] for _, s in first_step]
    assert sizes == sorted(sizes)
    with_grad = [n for n, _ in first_step]
    if gradients == "param":  # each fp32 gradient is made right before its update and dropped after it
        assert with_grad == [1] * 9
    else:  # the fp32 gradients of backward are dropped one by one as the update proceeds
        assert with_grad == list(range(9, 0, -1))


def test_a_replacement_optimizer_receives_the_gradients():
    model = tiny_llama()
    make(model, K=5, start_block=1, switch_mode="ascending", gradients="master")  # dropped without release()
    with pytest.warns(UserWarning, match="takes it over"):
        opt = BlockOptimizer(torch.optim.AdamW(model.parameters()), list(model.named_parameters()),
                             switch_block_every=5, start_block=1, switch_mode="ascending", verbose=0,
                             gradients="master")
    model(**lm_batch(0)).loss.backward()
    assert all(m.grad is not None for m in opt.masters)
    opt.release()
    assert opt.memory_bytes() == {"masters": 0, "grads": 0, "optimizer_states": 0}
    assert not any(p.requires_grad for p in model.parameters())


def test_lora_mode_trains_only_adapters_of_the_active_block():
    class Adapted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = torch.nn.Linear(4, 4).to(torch.bfloat16)
            self.lora_A = torch.nn.Linear(4, 2, bias=False)
            self.lora_B = torch.nn.Linear(2, 4, bias=False)

        def forward(self, x):
            return self.base(x) + self.lora_B(self.lora_A(x.float())).to(x.dtype)

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(Adapted() for _ in range(3))
    opt = make(model, K=1, switch_mode="ascending")
    assert opt.lora_mode and opt.active_parameter_names == ["layers.0.lora_A.weight", "layers.0.lora_B.weight"]
    assert not model.layers[0].base.weight.requires_grad
