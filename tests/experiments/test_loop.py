"""The shared training loop with the registry's methods on a tiny random Llama (CPU, seconds)."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import statistics

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.base import Method
from baselines.registry import get_method_class, method_names
from experiments.config import TrainConfig
from experiments.batch_stream import BatchStream
from experiments.loop import Position, train
from experiments.results import read_metrics, read_summary
from experiments.schedule import lr_multiplier, warmup_steps_for

VOCAB = 256




def tiny_model(dtype=torch.bfloat16, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).to(dtype)


def fixed_batch(batch=2, length=32, seed=1) -> dict:
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def shuffled_batches(n_examples=10, batch=2, length=16, seed=3):
    """A deterministic epoch-dependent order, as experiments.data.make_batches gives (seeded by epoch)."""
    data = torch.randint(0, VOCAB, (n_examples, length), generator=torch.Generator().manual_seed(seed))

    def batches_fn(epoch):
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(1000 + epoch))
        return [{"input_ids": data[order[i:i + batch]], "labels": data[order[i:i + batch]]}
                for i in range(0, n_examples, batch)]

    return batches_fn


class PlainAdamW(Method):
    """A minimal full-parameter method defined here, independent of the registry."""

    name = "plain_adamw"

    def build_optimizer(self, model):
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.lr,
                                           weight_decay=self.weight_decay)


# Learning rates that make 3 steps visibly lower the loss of a random model on one batch.
LRS = {"sgd": 1.0, "bsgd": 1.0, "lomo": 1.0, "adalomo": 1e-2}
OPTIONS = {"badam": {"switch_block_every": 1}, "bsgd": {"switch_block_every": 1},
           "badam_official": {"switch_block_every": 1}, "lora": {"rank": 4},
           "galore": {"rank": 8, "update_proj_gap": 2}, "galore_8bit": {"rank": 8, "update_proj_gap": 2},
           "galore_layerwise": {"rank": 8, "update_proj_gap": 2}, "apollo": {"rank": 8, "update_proj_gap": 2},
           "q_galore": {"rank": 8}, "blockllm": {"sparsity": 0.5}, "lisa": {"n_layers": 1}}
NO_CLIPPING = {"galore_layerwise"}  # updates inside backward: a global-norm clip cannot exist
CUDA_ONLY = {"adalomo", "galore_8bit", "q_galore"}
OPTIONAL_PACKAGES = {"apollo": "apollo_torch", "q_galore": "q_galore_torch"}  # extras, not default dependencies


def make_method(name: str, **extra):
    cls = get_method_class(name)
    options = cls.Options(**{**OPTIONS.get(name, {}), **extra})
    return cls(options, lr=LRS.get(name, 5e-3), weight_decay=0.0)


@pytest.mark.parametrize("name", method_names())
def test_every_method_lowers_the_loss_in_three_steps(name, tmp_path):
    batch = fixed_batch()
    cfg = TrainConfig(max_steps=3, lr_schedule="constant", max_grad_norm=None if name in NO_CLIPPING else 1.0)
    summary = train(tiny_model(), make_method(name), lambda epoch: [batch], cfg, tmp_path, seed=0, progress=False,
                    eval_batches_fn=lambda: [batch], autocast_dtype=torch.bfloat16)
    if name in OPTIONAL_PACKAGES and importlib.util.find_spec(OPTIONAL_PACKAGES[name]) is None:
        assert summary["error_kind"] == "unsupported" and "pip install" in summary["error"]
        return
    if name in CUDA_ONLY:  # the test model lives on the CPU
        # recorded as unsupported with the reason, not a crash and not a fake result
        assert summary["status"] == "error" and summary["error_kind"] == "unsupported"
        assert "CUDA" in summary["error"] and summary["steps"] == 0
        return
    assert summary["status"] == "ok", summary["error"]
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    first_loss, final_eval = records[0]["loss"], records[-1]["eval_loss"]
    assert final_eval < first_loss - 1e-3, f"{name}: loss {first_loss:.4f} -> {final_eval:.4f}"
    assert summary["final_eval_loss"] == final_eval
    assert all(math.isfinite(r["loss"]) for r in records)


def _forward_inputs(model) -> list:
    """Record every input_ids tensor the embedding sees (works through peft wrappers, which call .forward)."""
    seen = []
    model.get_input_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen


@pytest.mark.parametrize("grad_accum,names", [(2, ["adam", "badam", "lora"]), (1, ["adam", "lomo"])])
def test_every_method_sees_identical_batches(tmp_path, grad_accum, names):
    batches_fn = shuffled_batches()  # 5 micro-batches per epoch: 7 steps of 2 cross two epoch boundaries
    seen = {}
    for name in names:
        model = tiny_model()
        seen[name] = _forward_inputs(model)
        summary = train(model, make_method(name), batches_fn, TrainConfig(max_steps=7, grad_accum=grad_accum),
                        tmp_path / name, seed=0, progress=False)
        assert summary["status"] == "ok", summary["error"]
    reference = seen[names[0]]
    assert len(reference) == 7 * grad_accum
    for name in names[1:]:
        assert len(seen[name]) == len(reference)
        assert all(torch.equal(a, b) for a, b in zip(seen[name], reference)), f"{name} saw other batches"


def test_batch_stream_drops_epoch_remainders_and_resumes_mid_epoch():
    batches_fn = lambda epoch: [f"e{epoch}b{i}" for i in range(5)]  # noqa: E731
    stream = BatchStream(batches_fn, 2, Position())
    steps = [stream.next_step() for _ in range(4)]
    assert steps == [["e0b0", "e0b1"], ["e0b2", "e0b3"], ["e1b0", "e1b1"], ["e1b2", "e1b3"]]
    resumed = BatchStream(batches_fn, 2, Position(step=3, epoch=1, micro=2))
    assert resumed.next_step() == ["e1b2", "e1b3"]
    with pytest.raises(RuntimeError, match="fewer than train.grad_accum=8"):
        BatchStream(batches_fn, 8, Position()).next_step()


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """Two micro-batches of 1 with grad_accum=2 give the update of one batch of 2 (equal lengths, no padding)."""
    batch = fixed_batch(batch=2, length=16, seed=5)
    halves = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(2)]
    results = []
    for tag, fn, accum in (("full", lambda e: [batch], 1), ("accum", lambda e: halves, 2)):
        model = tiny_model(torch.float32)
        summary = train(model, PlainAdamW(lr=1e-3), fn, TrainConfig(max_steps=1, grad_accum=accum, max_grad_norm=None),
                        tmp_path / tag, seed=0, progress=False)
        assert summary["status"] == "ok", summary["error"]
        results.append((model, read_metrics(tmp_path / tag)[0]))
    (full, rec_full), (accum, rec_accum) = results
    assert rec_accum["loss"] == pytest.approx(rec_full["loss"], rel=1e-5)
    assert rec_accum["grad_norm"] == pytest.approx(rec_full["grad_norm"], rel=1e-4)
    # Adam's first step is lr * g / (|g| + eps): where |g| is near eps (1e-8) the summation order of the two
    # micro-batches moves the update by up to a few percent of lr, so the absolute tolerance is 1% of lr (1e-3).
    for a, b in zip(full.parameters(), accum.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_schedule_is_passed_to_the_method_and_logged(tmp_path):
    cfg = TrainConfig(max_steps=8, lr_schedule="cosine", warmup_steps=2)
    summary = train(tiny_model(torch.float32), PlainAdamW(lr=1e-3), lambda e: [fixed_batch()], cfg, tmp_path,
                    seed=0, progress=False)
    assert summary["status"] == "ok"
    lrs = [r["lr"] for r in read_metrics(tmp_path)]
    expected = [1e-3 * lr_multiplier(s, 8, "cosine", 2) for s in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-3)


@pytest.mark.parametrize("schedule,hf_name", [("cosine", "cosine"), ("linear", "linear"),
                                              ("constant", "constant_with_warmup")])
def test_schedule_matches_transformers(schedule, hf_name):
    from transformers import get_scheduler

    total, warmup = 20, warmup_steps_for(20, warmup_ratio=0.15)
    assert warmup == 3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(hf_name, opt, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_multiplier(step, total, schedule, warmup), abs=1e-12)
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="valid schedules"):
        lr_multiplier(0, 10, "step")


def test_step_time_is_forward_plus_backward_plus_update(tmp_path):
    summary = train(tiny_model(), make_method("adam"), lambda e: [fixed_batch(4, 64)], TrainConfig(max_steps=6),
                    tmp_path, seed=0, progress=False, autocast_dtype=torch.bfloat16)
    assert summary["status"] == "ok"
    ratios = []
    for r in read_metrics(tmp_path):
        parts = r["t_forward_ms"] + r["t_backward_ms"] + r["t_update_ms"]
        assert 0 < parts <= r["t_step_ms"] + 1e-6
        assert r["t_forward_ms"] > 0 and r["t_backward_ms"] > 0 and r["t_update_ms"] > 0
        ratios.append(parts / r["t_step_ms"])
    # the remainder is bookkeeping (memory probe, moving the batch, zero_grad): small next to the work
    assert statistics.median(ratios) > 0.8, ratios
    assert summary["timing_ms"]["warmup_steps_excluded"] == 2
    assert summary["tokens_per_s"] > 0 and summary["total_tokens"] == 6 * 4 * 64


def test_fused_update_reports_zero_update_time_and_refuses_accumulation(tmp_path):
    summary = train(tiny_model(), make_method("lomo"), lambda e: [fixed_batch()], TrainConfig(max_steps=2),
                    tmp_path / "ok", seed=0, progress=False)
    assert summary["status"] == "ok"
    assert all(r["t_update_ms"] == 0.0 and r["update_fused"] for r in read_metrics(tmp_path / "ok"))
    assert "fused" in summary["method_info"]["update_note"]

    refused = train(tiny_model(), make_method("lomo"), lambda e: [fixed_batch()] * 4,
                    TrainConfig(max_steps=2, grad_accum=2), tmp_path / "accum", seed=0, progress=False)
    assert refused["status"] == "error" and refused["error_kind"] == "setup"
    assert "grad_accum=2" in refused["error"] and "batch_size" in refused["error"]
    assert refused["steps"] == 0 and read_metrics(tmp_path / "accum") == []


def test_a_method_that_cannot_clip_is_refused_as_a_setup_error_before_training(tmp_path):
    """galore_layerwise updates inside backward: clipping is an unsupported setup (error_kind "setup", one line
    naming the setting), refused by the loop from the class's supports_clipping before anything is built."""
    method = make_method("galore_layerwise")
    assert not method.supports_clipping
    refused = train(tiny_model(), method, lambda e: [fixed_batch()], TrainConfig(max_steps=2, max_grad_norm=1.0),
                    tmp_path / "clip", seed=0, progress=False)
    assert refused["status"] == "error" and refused["error_kind"] == "setup"
    assert "max_grad_norm=1.0" in refused["error"] and "null" in refused["error"]
    assert refused["steps"] == 0 and read_metrics(tmp_path / "clip") == []
    # the method's own check raises the same (single) UnsupportedSetupError class
    from baselines.errors import UnsupportedSetupError
    from experiments import loop

    assert loop.UnsupportedSetupError is UnsupportedSetupError
    assert loop.error_kind_of(UnsupportedSetupError("x")) == "setup"


def test_epochs_mode_plans_steps_from_the_data_and_records_eval_loss(tmp_path):
    batches_fn = shuffled_batches(n_examples=8, batch=2)  # 4 micro-batches per epoch
    cfg = TrainConfig(epochs=2, grad_accum=2, eval_every=2)
    summary = train(tiny_model(torch.float32), PlainAdamW(lr=1e-3), batches_fn, cfg, tmp_path, seed=0,
                    progress=False, eval_batches_fn=lambda: batches_fn(0)[:2])
    assert summary["status"] == "ok" and summary["steps"] == 4 and summary["planned_steps"] == 4
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 0, 1, 1]
    assert [("eval_loss" in r) for r in records] == [False, True, False, True]


# --- checkpoint and resume -----------------------------------------------------------------------------------
RESUME_METHODS = {"adam": lambda: make_method("adam"),
                  "badam": lambda: make_method("badam", switch_block_every=2, switch_mode="random"),
                  "lora": lambda: make_method("lora", dropout=0.1),  # dropout: exercises the RNG state
                  "plain_adamw": lambda: PlainAdamW(lr=5e-3)}


@pytest.mark.parametrize("name", list(RESUME_METHODS))
def test_resume_equals_an_uninterrupted_run(name, tmp_path):
    batches_fn = shuffled_batches(n_examples=6, batch=2)  # 3 micro-batches per epoch: the cut falls mid-epoch
    cfg = dict(max_steps=6, grad_accum=2, lr_schedule="cosine", warmup_steps=1)

    whole = tiny_model()
    train(whole, RESUME_METHODS[name](), batches_fn, TrainConfig(**cfg), tmp_path / "whole", seed=0, progress=False)

    first = train(tiny_model(), RESUME_METHODS[name](), batches_fn,
                  TrainConfig(**cfg, save_every=3, stop_after_steps=3), tmp_path / "cut", seed=0, progress=False)
    assert first["status"] == "ok" and first["steps"] == 3 and first["stopped_early"]
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()

    resumed_model = tiny_model(seed=123)  # different start weights: everything must come from the checkpoint
    second = train(resumed_model, RESUME_METHODS[name](), batches_fn,
                   TrainConfig(**cfg, resume_from=str(tmp_path / "cut")), tmp_path / "cut", seed=99, progress=False)
    assert second["status"] == "ok", second["error"]

    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    if name == "badam":
        assert [r["active_block"] for r in a] == [r["active_block"] for r in b]
    for (pname, pa), pb in zip(whole.named_parameters(), resumed_model.parameters()):
        assert torch.equal(pa, pb), f"{name}: parameter {pname} differs after resume"
    assert read_summary(tmp_path / "cut")["steps"] == 6


def test_resume_into_a_new_directory_carries_the_history(tmp_path):
    batches_fn = shuffled_batches(n_examples=6, batch=2)
    train(tiny_model(), PlainAdamW(lr=1e-3), batches_fn, TrainConfig(max_steps=4, save_every=2, stop_after_steps=2),
          tmp_path / "a", seed=0, progress=False)
    summary = train(tiny_model(), PlainAdamW(lr=1e-3), batches_fn,
                    TrainConfig(max_steps=4, resume_from=str(tmp_path / "a" / "checkpoint.pt")), tmp_path / "b",
                    seed=0, progress=False)
    assert summary["status"] == "ok" and [r["step"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3, 4]
    missing = train(tiny_model(), PlainAdamW(lr=1e-3), batches_fn, TrainConfig(max_steps=4, resume_from=str(tmp_path)),
                    tmp_path / "c", seed=0, progress=False)
    assert missing["status"] == "error" and "no checkpoint" in missing["error"]


def test_train_config_fields_are_the_loop_inputs():
    # the loop reads these names; renaming one would silently drop a setting from every config
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"grad_accum", "max_grad_norm", "resume_from", "save_every", "stop_after_steps", "eval_every"} <= names
