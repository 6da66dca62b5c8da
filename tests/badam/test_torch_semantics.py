"""BlockOptimizer keeps torch.optim's contract: after backward the active block's p.grad holds the gradient, and step()
uses what p.grad holds then. Each idiom a drop-in optimizer must support is exercised the way users write it: torch's
clip_grad_norm_, accelerate's Accelerator.clip_grad_norm_, HF Trainer without BAdamCallback, Lightning's
gradient_clip_val, hand-assigned gradients, zero_grad in both forms; and what cannot be honoured warns."""
import math
import warnings

import pytest
import torch

from badam import BlockOptimizer

from .tiny import VOCAB, clone_model, lm_batch, tiny_llama

MAX_NORM = 1e-3


def sgd_block_optimizer(model, lr=1.0, weight_decay=0.0, K=100, block=1, **kwargs):
    """SGD inside: the update is lr x the gradient step() used, so clipping shows in the update's size (Adam's first
    step would hide it)."""
    base = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    return BlockOptimizer(base, list(model.named_parameters()), switch_block_every=K, switch_mode="fixed",
                          start_block=block, verbose=0, **kwargs)


def fp32_norm(tensors):
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])))


def active_grads(opt):
    return [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]


def master_update_norm(opt, run):
    """Norm of the change of the active block's fp32 masters made by `run()` (one optimizer step)."""
    before = [m.detach().clone() for m in opt.masters]
    run()
    return fp32_norm([m.detach() - b for m, b in zip(opt.masters, before)])


def test_torch_clip_grad_norm_over_model_parameters_returns_the_norm_and_clips_the_update():
    model = tiny_llama()
    opt = sgd_block_optimizer(model)
    model(**lm_batch(0)).loss.backward()
    true_norm = fp32_norm(active_grads(opt))
    assert true_norm > 10 * MAX_NORM
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    assert math.isclose(float(norm), true_norm, rel_tol=1e-2)  # torch reduces bf16 gradients in bf16
    assert math.isclose(master_update_norm(opt, opt.step), MAX_NORM, rel_tol=2e-2)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_accelerate_clip_grad_norm_acts_on_the_update(accumulate):
    from accelerate import Accelerator

    model = tiny_llama()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    model, opt = accelerator.prepare(model, sgd_block_optimizer(model))
    inner = opt.optimizer
    for s in range(accumulate):
        with accelerator.accumulate(model):
            accelerator.backward(model(**lm_batch(s)).loss / accumulate)
    true_norm = fp32_norm(active_grads(inner))
    norm = accelerator.clip_grad_norm_(model.parameters(), MAX_NORM)
    assert true_norm > 10 * MAX_NORM and math.isclose(float(norm), true_norm, rel_tol=1e-2)
    assert math.isclose(master_update_norm(inner, opt.step), MAX_NORM, rel_tol=2e-2)


def _trainer_run(tmp_path, max_grad_norm, callbacks=()):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from badam.hf import create_badam_optimizer

    class Probe(TrainerCallback):  # what step() is about to use: the (clipped) p.grad of the active block
        def __init__(self):
            self.norms = []

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.norms.append(fp32_norm(active_grads(optimizer)))

    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (16, 12), generator=g).tolist()]
    optimizer = create_badam_optimizer(model, lr=1.0, base_optimizer_cls=torch.optim.SGD, switch_block_every=2,
                                       switch_mode="ascending", verbose=0)
    probe = Probe()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=1, disable_tqdm=True, max_steps=3, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, max_grad_norm=max_grad_norm, lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                      callbacks=[probe, *callbacks])
    trainer.train()
    return [h["grad_norm"] for h in trainer.state.log_history if "loss" in h], probe.norms


@pytest.mark.parametrize("with_callback", [False, True])
def test_hf_trainer_clips_and_logs_the_true_norm_with_or_without_the_callback(tmp_path, with_callback):
    from badam.hf import BAdamCallback

    callbacks = [BAdamCallback()] if with_callback else []
    logged, seen = _trainer_run(tmp_path / "free", max_grad_norm=1e9, callbacks=callbacks)  # clips nothing
    assert len(logged) == 3 and all(n > 10 * MAX_NORM for n in logged)
    for got, want in zip(logged, seen):  # the logged norm is that of the gradients the step used
        assert math.isclose(got, want, rel_tol=1e-2)
    logged, seen = _trainer_run(tmp_path / "clipped", max_grad_norm=MAX_NORM, callbacks=callbacks)
    assert all(n > 10 * MAX_NORM for n in logged)  # the pre-clip norm, not 0
    assert all(math.isclose(n, MAX_NORM, rel_tol=2e-2) for n in seen)  # what step() used was clipped


def test_lightning_gradient_clip_val_acts_on_the_update():
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_llama()
            self.update_norms = []

        def training_step(self, batch, index):
            return self.model(**batch).loss

        def configure_optimizers(self):
            self.block_optimizer = sgd_block_optimizer(self.model)
            return self.block_optimizer

        def on_before_optimizer_step(self, optimizer):
            self.before = [m.detach().clone() for m in self.block_optimizer.masters]

        def on_train_batch_end(self, *args):  # after every micro-batch; an update happened when `before` is set
            before = self.__dict__.pop("before", None)
            if before is not None:
                self.update_norms.append(fp32_norm([m.detach() - b for m, b in zip(self.block_optimizer.masters,
                                                                                    before)]))

    module = Module()
    batches = [lm_batch(s) for s in range(4)]
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, gradient_clip_val=MAX_NORM, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about dataloader workers
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert module.block_optimizer.global_step == 2
    updates = module.update_norms
    assert len(updates) == 2 and all(math.isclose(n, MAX_NORM, rel_tol=2e-2) for n in updates)


def test_hand_assigned_zero_gradients_with_weight_decay_shrink_the_block_by_lr_times_wd():
    model = tiny_llama()
    start = clone_model(model)
    lr, wd = 0.1, 0.5
    opt = BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd), list(model.named_parameters()),
                         switch_mode="fixed", start_block=1, verbose=0)
    active = set(opt.active_parameter_names)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    for (name, p), q in zip(model.named_parameters(), start.parameters()):
        if name in active:  # AdamW with a zero gradient: only the decoupled decay w <- w (1 - lr wd)
            assert torch.equal(p, (q.float() * (1 - lr * wd)).to(torch.bfloat16)), name
        else:
            assert torch.equal(p, q), name


def test_hand_assigned_gradients_move_the_weights_and_zero_grad_behaves_as_torch():
    model = tiny_llama()
    opt = sgd_block_optimizer(model, lr=0.01)
    weight = model.model.layers[1].mlp.up_proj.weight
    master = opt.masters[opt.active_parameter_names.index("model.layers.1.mlp.up_proj.weight")]
    before = master.detach().clone()
    weight.grad = torch.ones_like(weight)  # no backward at all: a custom-autograd or gradient-surgery result
    opt.step()
    assert torch.equal(master, before - 0.01)
    assert weight.grad is not None  # step() leaves p.grad alone, as torch optimizers do
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model(**lm_batch(0)).loss.backward()
    single = weight.grad.clone()
    opt.zero_grad(set_to_none=False)
    zeros = weight.grad
    assert zeros is not None and not zeros.any()
    model(**lm_batch(0)).loss.backward()
    assert torch.equal(weight.grad, single)  # 0 + g
    n_active = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert opt.memory_bytes()["grads"] == 2 * n_active  # no fp32 sum was made for adding to zeros


def test_gradients_on_frozen_parameters_are_reported_not_silently_dropped():
    model = tiny_llama()
    opt = sgd_block_optimizer(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.warns(UserWarning, match=r"parameters outside the active block carry a gradient"):
        opt.step()


def test_a_low_precision_sum_formed_outside_autograd_is_reported():
    """FSDP2 adds each micro-batch's reduce-scattered gradient into p.grad itself and then calls the post-accumulate
    hooks (the tensor hook that would sum in fp32 never runs): simulated here the same way."""
    model = tiny_llama()
    sgd_block_optimizer(model)
    weight = model.model.layers[1].mlp.up_proj.weight
    model(**lm_batch(0)).loss.backward()
    weight.grad.add_(torch.ones_like(weight))
    with pytest.warns(UserWarning, match="sum was formed in bfloat16, not fp32; use gradients='master'"):
        for hook in weight._post_accumulate_grad_hooks.values():
            hook(weight)


@pytest.mark.parametrize("ratio", [False, True])
def test_add_param_group_after_construction_is_refused_not_silently_ignored(ratio):
    """torch would append the group, but no block holds its parameters: they would get gradients and never train."""
    from badam import BlockOptimizerRatio

    model = tiny_llama(layers=2)
    if ratio:
        opt = BlockOptimizerRatio(model.parameters(), list(model.named_parameters()), update_ratio=0.5, lr=1e-3,
                                  verbose=0)
    else:
        opt = sgd_block_optimizer(model)
    groups_before = len(opt.param_groups)
    extra = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="add_param_group: the trainable blocks are fixed"):
        opt.add_param_group({"params": [extra]})
    assert len(opt.param_groups) == groups_before


@pytest.mark.parametrize("per_tensor_update", [True, False])
def test_weights_loaded_after_the_optimizer_was_built_are_stepped_from_not_overwritten(per_tensor_update):
    """torch optimizers step from the weights as they are at step(): loading a checkpoint into the model after
    building the optimizer must not be undone by the active block's fp32 masters made from the old weights."""
    pretrained = tiny_llama(seed=1).state_dict()
    model = tiny_llama(seed=0)
    opt = sgd_block_optimizer(model, lr=1e-8, block=1, per_tensor_update=per_tensor_update)
    model.load_state_dict(pretrained)
    model(**lm_batch(0)).loss.backward()
    opt.step()
    loaded = pretrained["model.layers.1.mlp.up_proj.weight"].float()
    assert torch.allclose(model.model.layers[1].mlp.up_proj.weight.float(), loaded, atol=1e-6)


def test_a_rewrite_that_keeps_the_weights_keeps_the_fp32_masters():
    """A write that leaves each weight equal to its master's rounding (e.g. reloading the same checkpoint) must not
    cut the masters' extra fp32 bits."""
    model = tiny_llama()
    opt = sgd_block_optimizer(model, lr=1e-3, block=1)
    model(**lm_batch(0)).loss.backward()
    opt.step()
    opt.zero_grad()
    masters = [m.detach().clone() for m in opt.masters]
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters)  # they do hold bits below bf16
    model.load_state_dict(model.state_dict())
    model(**lm_batch(1)).loss.backward()
    assert not any(opt._masters.adopt_model_writes(i) for i in range(len(masters)))
    assert all(torch.equal(a, m) for a, m in zip(masters, opt.masters))
