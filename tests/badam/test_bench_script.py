"""benchmarks/badam_vs_official.py on CPU: its workers measure what they claim (tiny Llama, in-process), the earlier
badam/ loads beside ours, and the summary states each ratio against its target."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import badam_bench_worker as bench_worker  # noqa: E402
import badam_vs_official as bench  # noqa: E402


def run_worker(tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    args = bench.parse_args(["--tiny", "--out", str(tmp_path), "--worker", name, "--worker-result", str(out),
                             "--steady-steps", "2", "--accum-steps", "1", "--ratio-steps", "1", "--seq-len", "8",
                             *extra])
    bench_worker.worker(args)
    return json.loads(out.read_text())


def test_block_worker_holds_bf16_gradients_and_fp32_sums_as_designed(tmp_path):
    result = run_worker(tmp_path, "ours")
    assert set(result["phases"]) == {"k1_epoch", "k100_steady", "k100_accum2"}
    hidden, inter, kv = 64, 128, 32  # TINY: q, o 64x64; k, v 32x64; gate, up, down 64x128; two norms of 64
    layer = 2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * inter + 2 * hidden
    steady, accum = result["phases"]["k100_steady"]["memory"], result["phases"]["k100_accum2"]["memory"]
    assert steady["held_after_backward_bytes"] == (4 + 8 + 2) * layer  # master, moments, bf16 p.grad
    assert accum["held_after_backward_bytes"] == (4 + 8 + 2 + 4) * layer  # + the fp32 sum of two micro-batches
    assert result["phases"]["k1_epoch"]["switch_ms"]["count"] == 4 + 2  # a switch after every step


def test_ratio_worker_and_summary(tmp_path):
    ours = run_worker(tmp_path, "ours_ratio")
    memory = ours["phases"]["ratio_steady"]["memory"]
    assert 0 < memory["held_after_step_bytes"] < memory["held_after_backward_bytes"]  # gradients gone after step
    theirs = {"optimizer": "official_ratio", "phases": {"ratio_steady": json.loads(json.dumps(
        ours["phases"]["ratio_steady"]))}}
    theirs["phases"]["ratio_steady"]["memory"]["optimizer_bytes"] *= 2
    meta = {"date": "d", "device": "cpu", "torch": "t", "transformers": "x", "command": "c", "model": "m",
            "batch_size": 2, "seq_len": 8, "before_rev": "r", "update_ratio": 0.1}
    table = bench.markdown({"ours_ratio": ours, "official_ratio": theirs, "official": {"error": "worker exited"}},
                           meta)
    assert "| ratio_steady | n/a | 0.500 |" in table and "memory: yes" in table
    assert "| k1_epoch | official | error: worker exited |" in table


def test_before_loads_an_earlier_badam_beside_ours(tmp_path):
    shutil.copytree(REPO / "badam", tmp_path / "badam", ignore=shutil.ignore_patterns("__pycache__"))
    module = bench_worker.load_badam_at(str(tmp_path), module_name="badam_before_test")
    import badam

    assert module.BlockOptimizer is not badam.BlockOptimizer and module.__name__ == "badam_before_test"
    with pytest.raises(RuntimeError, match="no badam/__init__.py"):
        bench_worker.load_badam_at(str(tmp_path / "badam"), module_name="badam_before_missing")


def test_bad_arguments_name_the_valid_choices(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", "x", "--optimizers", "ours,theirs"])
    assert "valid choices are ours, before, official, ours_ratio, official_ratio" in capsys.readouterr().err
