"""benchmarks/checkpoint_host_cost.py: the three checkpointing policies stepping in turn, their ratios to non-reentrant
checkpointing, the same losses, and each policy's checkpoint function in force."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_run_times_the_three_policies(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "checkpoint_host_cost.py"), "--out", str(tmp_path),
           "--layers", "3", "--steps", "2", "--rounds", "2", "--warmup", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "checkpoint_host_cost_l3.json").read_text())
    assert r["checkpoint_function"] == {"non-reentrant": "checkpoint(use_reentrant=False)",
                                        "block": "block_checkpoint()",
                                        "block-reentrant": "block_checkpoint(reentrant=True)"}
    assert len(r["rounds"]) == 2 and all(row[p]["step_ms"] >= row[p]["forward_ms"] > 0
                                         for row in r["rounds"] for p in r["checkpoint_function"])
    ratios = [row["block-reentrant"]["step_ms"] / row["non-reentrant"]["step_ms"] for row in r["rounds"]]
    assert r["over_non_reentrant"]["block-reentrant"]["step_ms"] == {
        "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": 2}
    assert len(set(r["last_loss"].values())) == 1  # same weights, data and arithmetic under every policy
    assert "block-reentrant: step" in done.stdout


def test_bad_arguments_are_one_line():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "checkpoint_host_cost.py"), "--out", "x",
                           "--compile-layers", "tvm"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "invalid choice: 'tvm'" in done.stderr
