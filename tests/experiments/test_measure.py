"""Timing and memory measurement: the Table 2 split adds up to the peak, activations are counted from what autograd
keeps, out-of-memory is recorded and does not stop the next run."""
from __future__ import annotations

import time

import pytest
import torch

from baselines.base import Method
from baselines.registry import get_method_class
from experiments.config import TrainConfig
from experiments.loop import train
from experiments.measure import SPLIT_KEYS, MemoryProbe, StepTimer, is_oom
from experiments.results import read_metrics, read_summary

from test_loop import VOCAB, tiny_model  # noqa: E402  (one tiny-model recipe for the loop and measurement tests)


def batch_of(batch=2, length=32, seed=1) -> dict:
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


class PlainAdamW(Method):
    name = "plain_adamw"

    def build_optimizer(self, model):
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr)


class OOMAtStep(PlainAdamW):
    """Raises the exception CUDA's allocator raises, at a chosen step, while holding an extra tensor."""

    name = "oom_at_step"

    def __init__(self, fail_at: int, **kwargs):
        super().__init__(**kwargs)
        self.fail_at, self.calls = fail_at, 0

    def step(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        super().step()


@pytest.mark.parametrize("batch,length,peak_at", [(2, 32, "after_backward"), (8, 128, "after_forward")])
def test_memory_split_adds_up_to_the_peak(tmp_path, batch, length, peak_at):
    summary = train(tiny_model(), get_method_class("adam")(lr=1e-3), lambda e: [batch_of(batch, length)],
                    TrainConfig(max_steps=3), tmp_path, seed=0, progress=False, autocast_dtype=torch.bfloat16)
    assert summary["status"] == "ok"
    memory = summary["memory"]
    split = memory["split_bytes"]
    assert set(split) == set(SPLIT_KEYS)
    assert sum(split.values()) == memory["peak_allocated_bytes"]
    assert memory["device"] == "cpu" and memory["peak_reserved_bytes"] is None and "cpu" in memory["split_note"]
    model_bytes = sum(p.numel() * p.element_size() for p in tiny_model().parameters())
    assert split["parameters"] == model_bytes
    # adam keeps fp32 masters (4 B) + two fp32 moments (8 B) per bf16 parameter (2 B): 6x the bf16 weights
    assert split["optimizer_states"] == 6 * model_bytes
    # small batch: the peak is after backward (fp32 gradients held, activations freed); large batch: after forward
    assert memory["split_point"] == peak_at
    assert (split["activations"] > 0) == (peak_at == "after_forward")
    assert split["gradients"] > 0 if peak_at == "after_backward" else split["gradients"] == 0
    assert memory["activations_max_bytes"] >= split["activations"] and memory["activations_max_bytes"] > 0
    assert max(r["mem_peak_allocated_bytes"] for r in read_metrics(tmp_path)) == memory["peak_allocated_bytes"]


def test_activations_grow_with_the_batch_and_exclude_parameters():
    model = tiny_model(torch.float32)
    probe = MemoryProbe(torch.device("cpu"))
    method = PlainAdamW(lr=1e-3)
    method.build_optimizer(model)
    measured = {}
    for batch_size in (2, 4):
        probe.begin_step()
        with probe.forward_context():
            loss = model(**batch_of(batch=batch_size)).loss
        probe.sample("after_forward", model, method)
        measured[batch_size] = probe._step_best["parts"]["activations"]
        loss.backward()
        model.zero_grad(set_to_none=True)
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert 1.8 < measured[4] / measured[2] < 2.2
    assert measured[2] < param_bytes * 10  # weights saved for backward are not counted again as activations
    # the logits alone (batch × length × vocab fp32) are saved for the loss: a floor the count must reach
    assert measured[2] >= 2 * 32 * VOCAB * 4


def test_simulated_oom_is_recorded_and_the_next_run_goes_on(tmp_path):
    summary = train(tiny_model(), OOMAtStep(fail_at=2, lr=1e-3), lambda e: [batch_of()], TrainConfig(max_steps=4),
                    tmp_path / "oom", seed=0, progress=False)
    assert summary["status"] == "oom" and summary["error_kind"] == "oom"
    assert "20.00 GiB" in summary["error"]
    held = summary["memory"]["held_at_oom_bytes"]
    assert held > 0 and f"{held} bytes held" in summary["error"]
    assert summary["steps"] == 1 and read_summary(tmp_path / "oom")["status"] == "oom"
    assert (tmp_path / "oom" / "error.txt").read_text().count("OutOfMemoryError") >= 1

    after = train(tiny_model(), PlainAdamW(lr=1e-3), lambda e: [batch_of()], TrainConfig(max_steps=2),
                  tmp_path / "next", seed=0, progress=False)
    assert after["status"] == "ok" and after["steps"] == 2


def test_other_exceptions_become_error_status(tmp_path):
    class Broken(PlainAdamW):
        name = "broken"

        def step(self):
            raise ValueError("bad update")

    summary = train(tiny_model(), Broken(lr=1e-3), lambda e: [batch_of()], TrainConfig(max_steps=2), tmp_path,
                    seed=0, progress=False)
    assert summary["status"] == "error" and summary["error"] == "ValueError: bad update"
    assert summary["error_kind"] == "exception"


def test_is_oom_recognises_the_allocator_messages():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_step_timer_adds_phases_over_micro_batches():
    timer = StepTimer(torch.device("cpu"))
    timer.start_step()
    for _ in range(2):
        with timer.phase("forward"):
            time.sleep(0.01)
    with timer.phase("update"):
        time.sleep(0.005)
    times = timer.end_step()
    assert times["forward"] >= 20.0 and times["update"] >= 5.0 and times["backward"] == 0.0
    assert times["step"] >= times["forward"] + times["update"]


def test_memory_tracking_can_be_turned_off(tmp_path):
    summary = train(tiny_model(), PlainAdamW(lr=1e-3), lambda e: [batch_of()],
                    TrainConfig(max_steps=2, track_memory=False), tmp_path, seed=0, progress=False)
    assert summary["status"] == "ok" and summary["memory"]["split_bytes"] is None
    assert "turned off" in summary["memory"]["split_note"]
