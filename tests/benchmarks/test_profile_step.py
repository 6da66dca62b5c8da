"""benchmarks/profile_step.py on a CPU: a LOMO run of a tiny Llama is profiled through the harness's loop, and the
summary counts LOMO's passes and per-parameter hooks and prices its parameter scan."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import profile_step  # noqa: E402

TINY = ["model.source=random:tiny-llama", "data.max_length=32", "data.max_samples=12", "data.eval_samples=0",
        "train.batch_size=2", "train.grad_accum=1", "train.device=cpu", "train.timing_warmup_steps=1"]


def test_lomo_profile_counts_passes_and_hooks(tmp_path):
    pytest.importorskip("lomo_optim")
    sets = [arg for item in [*TINY, "method.name=lomo", "train.max_grad_norm=1.0"] for arg in ("--set", item)]
    assert profile_step.main(["--config", "small/smollm2_alpaca.yaml", "--out", str(tmp_path), "--steps", "2",
                              "--no-progress", *sets]) == 0
    doc = json.loads((tmp_path / "where_time_goes_lomo.json").read_text())
    phases = doc["phases"]
    assert phases["lomo norm pass"]["calls"] == 2 and phases["lomo update pass"]["calls"] == 2  # 2 profiled steps
    # every parameter's hook plus the closing call, in each of the two backward passes: 2 x (21 + 1) per step
    assert phases["lomo hook"]["calls"] == 2 * 2 * 22
    assert doc["lomo_scan_ms"] > 0 and doc["compute"]["model_tflops_per_s"] > 0
    text = (tmp_path / "where_time_goes_lomo.md").read_text()
    assert "| lomo hook |" in text and "one scan takes" in text
    assert (tmp_path / "profile_lomo.txt").is_file() and (tmp_path / "run" / "summary.json").is_file()
    # the summary's step is timed without the profiler on the very batches it recorded (W=1, S=2: steps 4-5 and 7-8)
    reference, recorded = doc["unprofiled"], doc["profiled"]
    assert reference["steps"] == [4, 5] and recorded["steps"] == [7, 8]
    assert reference["tokens_per_step"] == recorded["tokens_per_step"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 + 3 * 2 + 2
    assert reference["step"] == pytest.approx(sum(r["t_step_ms"] for r in records[3:5]) / 2)
    assert "step without the profiler" in text and "(not profiled)" not in text


class FakeProfiler:
    def __init__(self):
        self.step_num = 0  # as torch.profiler: 0 during the first step, +1 per step() call

    def step(self):
        self.step_num += 1


def test_replayed_batches_time_and_record_the_same_batches_under_the_schedule():
    """Through the loop's own BatchStream (grad_accum 2, 7 micro-batches per epoch: a remainder dropped at each
    epoch's end): the unprofiled reference pass and the recorded pass hold exactly the kept steps' batches, and
    torch's schedule (as profile_step builds it) records the latter and not the former."""
    import torch

    from experiments.batch_stream import BatchStream
    from experiments.checkpoint import Position

    warmup, steps, accum = 2, 3, 2
    plan = profile_step.step_plan(warmup, steps)
    profiler = FakeProfiler()
    batches_fn = profile_step.replayed_batches(lambda epoch: iter([(epoch, i) for i in range(7)]), profiler, accum,
                                               fresh_steps=warmup, kept_steps=steps)
    stream = BatchStream(batches_fn, accum, Position())
    taken, actions = {}, {}
    schedule = torch.profiler.schedule(wait=plan["profiler_wait"], warmup=1, active=steps, repeat=1)
    for step in range(1, plan["max_steps"] + 1):
        taken[step] = tuple(stream.next_step())
        assert profiler.step_num == step - 1
        actions[step] = schedule(profiler.step_num)
    kept = [taken[s] for s in range(warmup + 1, warmup + steps + 1)]
    assert len(set(kept)) == steps and all(len(group) == accum for group in kept)
    assert sorted(taken[s] for s in plan["reference"]) == sorted(kept)
    assert sorted(taken[s] for s in plan["recorded"]) == sorted(kept)
    Action = torch.profiler.ProfilerAction
    assert all(actions[s] == Action.NONE for s in plan["reference"])
    assert actions[plan["profiler_wait"] + 1] == Action.WARMUP
    assert all(actions[s] in (Action.RECORD, Action.RECORD_AND_SAVE) for s in plan["recorded"])
    assert actions[plan["recorded"][-1]] == Action.RECORD_AND_SAVE


def test_pass_figures_need_every_step():
    records = [{"step": s, "t_forward_ms": 1.0, "t_backward_ms": 2.0, "t_update_ms": 0.5, "t_step_ms": 4.0 + s,
                "tokens": 100} for s in range(1, 6)]
    figures = profile_step.pass_figures(records, range(2, 4), None)
    assert figures["step"] == 6.5 and figures["tokens_per_step"] == 100 and figures["steps"] == [2, 3]
    assert profile_step.pass_figures(records, range(5, 7), None) is None


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        profile_step.parse_args(["--config", "x", "--out", "y", "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err
