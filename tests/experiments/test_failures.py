"""How runs end when something goes wrong: divergence is status "diverged" at its step, every allocation failure is
"oom" with the bytes held, JSON on disk is strict (no bare NaN / Infinity), atomic writes fsync file and directory."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from experiments import results
from experiments.checkpoint import save_checkpoint
from experiments.config import TrainConfig
from experiments.loop import Position, train
from experiments.measure import is_oom
from experiments.results import json_safe, read_metrics, read_summary

from test_loop import PlainAdamW, fixed_batch, tiny_model  # noqa: E402  (the loop tests' tiny-model recipe)


def strict_load(text: str):
    """json.loads that refuses NaN / Infinity, as JavaScript's JSON.parse and most other parsers do."""
    def refuse(constant):
        raise ValueError(f"bare {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


class PoisonAtStep(PlainAdamW):
    """An optimizer step that writes `value` into one weight at a chosen update: the next forward is non-finite."""

    name = "poison"

    def __init__(self, at: int, value: float, **kwargs):
        super().__init__(**kwargs)
        self.at, self.value, self.calls = at, value, 0

    def step(self):
        super().step()
        self.calls += 1
        if self.calls == self.at:
            with torch.no_grad():
                next(self.model_params).view(-1)[0] = self.value

    def build_optimizer(self, model):
        super().build_optimizer(model)
        self.model_params = iter(list(model.parameters())[1:])


class InfiniteNorm(PlainAdamW):
    name = "inf_norm"

    def clip_and_norm(self, max_norm):
        super().clip_and_norm(max_norm)
        return float("inf")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_ends_the_run_as_diverged_at_its_step(tmp_path, value):
    cfg = TrainConfig(max_steps=6, save_every=1, lr_schedule="constant")
    summary = train(tiny_model(torch.float32), PoisonAtStep(at=2, value=value, lr=1e-3), lambda e: [fixed_batch()],
                    cfg, tmp_path, seed=0, progress=False, save_model_dir=tmp_path / "model")
    assert summary["status"] == "diverged" and summary["error_kind"] == "diverged"
    assert summary["diverged_at_step"] == 3 and summary["steps"] == 3 and "diverged at step 3" in summary["error"]
    assert summary["final_loss"] is None and summary["nonfinite"]["final_loss"] == "nan"
    # the last checkpoint is the last good state; no model of the diverged state is written
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "model").exists() and not (tmp_path / "error.txt").exists()
    # every file is strict JSON; the diverged record says what was not finite
    on_disk = strict_load((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk == summary
    lines = [strict_load(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert lines[2]["loss"] is None and lines[2]["nonfinite"]["loss"] == "nan"
    assert lines[1]["loss"] is not None and "nonfinite" not in lines[1]


def test_a_non_finite_gradient_norm_is_divergence_too(tmp_path):
    summary = train(tiny_model(), InfiniteNorm(lr=1e-3), lambda e: [fixed_batch()], TrainConfig(max_steps=3),
                    tmp_path, seed=0, progress=False)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 1
    assert summary["diverged_values"] == {"grad_norm": "inf"} and math.isfinite(summary["final_loss"])
    record = read_metrics(tmp_path)[0]
    assert record["grad_norm"] is None and record["nonfinite"] == {"grad_norm": "inf"}


def test_json_safe_replaces_non_finite_values_and_names_them():
    data = {"a": float("nan"), "b": {"c": [1.0, float("-inf")]}, "d": "NaN", "e": 2}
    clean = json_safe(data)
    assert clean == {"a": None, "b": {"c": [1.0, None]}, "d": "NaN", "e": 2,
                     "nonfinite": {"a": "nan", "b.c.1": "-inf"}}
    assert strict_load(results.dumps_strict(data)) == clean
    with pytest.raises(ValueError):
        json.dumps({"x": float("nan")}, allow_nan=False)  # what dumps_strict relies on if a value slipped through


class FailsWith(PlainAdamW):
    name = "fails_with"

    def __init__(self, exc: BaseException, **kwargs):
        super().__init__(**kwargs)
        self.exc = exc

    def step(self):
        raise self.exc


@pytest.mark.parametrize("exc", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    OSError(12, "Cannot allocate memory"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_every_allocation_failure_is_oom_with_the_bytes_held(tmp_path, exc):
    summary = train(tiny_model(), FailsWith(exc, lr=1e-3), lambda e: [fixed_batch()], TrainConfig(max_steps=2),
                    tmp_path, seed=0, progress=False)
    assert summary["status"] == "oom" and summary["error_kind"] == "oom"
    held = summary["memory"]["held_at_oom_bytes"]
    assert held > 1_000_000 and f"out of memory ({held} bytes held" in summary["error"]  # a process holds megabytes


def test_is_oom_sees_wrapped_allocation_failures_and_nothing_else():
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise RuntimeError("while loading the shards") from inner
    except RuntimeError as outer:
        assert is_oom(outer)
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("bad value"))
    assert not is_oom(OSError(2, "No such file or directory"))


def test_oom_while_loading_the_model_is_recorded_with_the_bytes_held(tmp_path, monkeypatch, capsys):
    import experiments.models as models
    from experiments import run as run_cli

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(models, "load_model", out_of_memory)
    code = run_cli.main(["--config", "small/smollm2_alpaca.yaml", "model.source=random:tiny-llama",
                         f"output.dir={tmp_path}", "--no-progress"])
    summary = read_summary(tmp_path / "smollm2_alpaca-badam")
    assert code == 1 and summary["status"] == "oom" and summary["memory"]["held_at_oom_bytes"] > 0
    assert "bytes held" in capsys.readouterr().err


def test_atomic_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    results.atomic_write_json(tmp_path / "summary.json", {"status": "ok"})
    assert any(p.startswith(str(tmp_path / ".summary.json.")) for p in synced), synced  # the data, before the rename
    assert synced[-1] == str(tmp_path), "the directory is synced after the rename"
    synced.clear()
    model, method = tiny_model(), PlainAdamW(lr=1e-3)
    method.build_optimizer(model)
    save_checkpoint(tmp_path / "checkpoint.pt", model, method, Position(step=1), 2)
    assert synced == [str(tmp_path / ".checkpoint.pt.tmp"), str(tmp_path)]
