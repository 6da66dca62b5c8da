"""HF integration: a real tiny Trainer run; checkpointing that neither fails (Ledzy/BAdam#2) nor back-propagates
through the frozen layers below the active block."""
import dataclasses
import functools

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from badam import BlockOptimizer
from badam.hf import (BAdamCallback, create_badam_optimizer, decay_parameter_groups, enable_block_checkpointing,
                      find_block_optimizer)

from .tiny import VOCAB, clone_model, lm_batch, record_backward_reach, tiny_llama


def training_args(tmp_path, **kwargs):
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=1, disable_tqdm=True, **{checkpointing: True}, **kwargs)


def test_tiny_trainer_run_with_checkpointing_clipping_and_accumulation(tmp_path):
    from transformers import Trainer

    model = tiny_llama()
    start = clone_model(model)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (24, 12), generator=g).tolist()]
    optimizer = create_badam_optimizer(model, lr=1e-2, weight_decay=0.1, switch_block_every=2,
                                       switch_mode="ascending", verbose=0)
    callback = BAdamCallback()
    args = training_args(tmp_path, max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         max_grad_norm=0.05, lr_scheduler_type="cosine", warmup_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None), callbacks=[callback])
    trainer.train()

    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(h["loss"])) for h in steps)
    assert all(h["grad_norm"] > 0.05 for h in steps)  # the true fp32 norm, not Trainer's 0 over empty p.grad
    assert [h["active_block"] for h in steps] == [0, 0, 1, 1, 2, 2]  # the block each logged step trained
    assert find_block_optimizer(trainer.optimizer) is optimizer and optimizer.global_step == 6
    changed = {n.split(".")[2] for (n, p), q in zip(model.named_parameters(), start.parameters())
               if not torch.equal(p, q) and n.startswith("model.layers.")}
    assert changed == {"0", "1", "2"}
    assert torch.equal(model.model.embed_tokens.weight, start.model.embed_tokens.weight)
    checkpoint_funcs = [m._gradient_checkpointing_func for m in model.modules()
                        if getattr(m, "gradient_checkpointing", False) is True]
    assert checkpoint_funcs and all(f.keywords.get("use_reentrant") is False for f in checkpoint_funcs)
    assert not getattr(model, "_require_grads_hooks", None)  # no backward through the frozen layers below


def backward_reached_layers(model, use_reentrant=None, input_grads=False):
    """Indices of decoder layers whose output received a gradient in one backward pass."""
    reached, handles = record_backward_reach(model.model.layers)
    if use_reentrant is None:
        enable_block_checkpointing(model)
    else:
        model._set_gradient_checkpointing(True, functools.partial(checkpoint, use_reentrant=use_reentrant))
        if input_grads:
            model.enable_input_require_grads()
    model.train()
    model(**lm_batch(0)).loss.backward()
    for h in handles:
        h.remove()
    return reached


def fixed_block_2(model):
    return BlockOptimizer(torch.optim.AdamW(model.parameters()), list(model.named_parameters()),
                          switch_mode="fixed", start_block=2, verbose=0)


def test_block_checkpointing_stops_backward_at_the_active_block():
    model = tiny_llama()
    opt = fixed_block_2(model)
    assert backward_reached_layers(model) == {2, 3}  # layers 0 and 1 are below the active block: no backward
    assert all(p.grad is not None for g in opt.param_groups for p in g["params"])
    assert not getattr(model, "_require_grads_hooks", None)


def test_the_usual_input_grad_fix_backpropagates_through_frozen_layers():
    """What enable_input_require_grads (the common cure for reentrant checkpointing) costs: backward through every
    layer. Also shows the hooks above do detect backward in the lower layers."""
    model = tiny_llama()
    fixed_block_2(model)
    assert backward_reached_layers(model, use_reentrant=True, input_grads=True) == {0, 1, 2, 3}


def test_reentrant_checkpointing_with_frozen_inputs_fails_as_in_ledzy_badam_2():
    model = tiny_llama()
    fixed_block_2(model)
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        with pytest.raises(RuntimeError, match="does not require grad"):
            backward_reached_layers(model, use_reentrant=True)


def test_decay_groups_exclude_biases_and_norms():
    model = tiny_llama(layers=1)
    decay, no_decay = decay_parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_callback_requires_a_block_optimizer():
    model = tiny_llama(layers=1)
    with pytest.raises(TypeError, match="needs the Trainer's optimizer to be a badam BlockOptimizer"):
        BAdamCallback().on_train_begin(None, None, None, model=model, optimizer=torch.optim.SGD(model.parameters()))


@pytest.mark.parametrize("with_callback", [True, False])
def test_trainer_with_ratio_mode_clips_through_the_callback_or_warns(tmp_path, with_callback):
    from transformers import Trainer

    from badam.hf import create_badam_ratio_optimizer

    model = tiny_llama()
    start = clone_model(model)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (16, 12), generator=g).tolist()]
    optimizer = create_badam_ratio_optimizer(model, lr=1e-2, weight_decay=0.1, update_ratio=0.1, switch_every=2,
                                             verbose=0)
    args = training_args(tmp_path, max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         max_grad_norm=0.05)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                      callbacks=[BAdamCallback()] if with_callback else [])
    if with_callback:
        trainer.train()
    else:  # Trainer's clip over model.parameters() sees no p.grad: said loudly, not trained unclipped in silence
        with pytest.warns(UserWarning, match="clip with optimizer.clip_grad_norm_"):
            trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 4 and optimizer.global_step == 4 and optimizer.period == 2
    if with_callback:
        assert all(h["grad_norm"] > 0.05 for h in steps)  # the true norm of the selected entries' gradient
    up = model.model.layers[0].mlp.up_proj.weight
    fraction = float((up != start.model.layers[0].mlp.up_proj.weight).float().mean())
    assert 0.1 < fraction <= 0.2  # two mask periods of 10 % each


def test_the_other_optimizers_period_name_is_answered_with_the_right_one():
    from badam.hf import create_badam_ratio_optimizer

    model = tiny_llama(layers=2)
    with pytest.raises(TypeError, match=r"BlockOptimizer takes switch_block_every= \(steps per block\), not "
                                        r"switch_every="):
        create_badam_optimizer(model, lr=1e-5, switch_every=10)
    with pytest.raises(TypeError, match=r"BlockOptimizerRatio takes switch_every= \(steps per mask\), not "
                                        r"switch_block_every="):
        create_badam_ratio_optimizer(model, lr=1e-5, switch_block_every=10)
