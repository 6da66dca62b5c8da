"""benchmarks/zero1_update.py: the replicated and the sharded (ZeRO-1) update of one layer on two gloo processes give
the same weights bit for bit with half the states per rank, and a layer that does not split evenly is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import zero1_update  # noqa: E402


def test_two_ranks_update_alike_with_half_the_states_each(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           str(REPO / "benchmarks" / "zero1_update.py"), "--out", str(tmp_path), "--tiny", "--repeats", "2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "zero1_tiny-llama_n2.json").read_text())
    assert r["same_weights_every_rank"] and r["gpus"] == 2 and r["weights_dtype"] == "bfloat16"
    assert r["weights_moved"] > 0.5  # the equality is not that of untouched weights
    assert r["replicated"]["state_bytes_per_rank"] == 12 * r["layer_params"]
    assert r["sharded"]["state_bytes_per_rank"] * 2 == r["replicated"]["state_bytes_per_rank"]
    for name in zero1_update.VARIANTS:
        assert r[name]["update_ms"]["n"] == 2 and r[name]["update_ms"]["min"] > 0
        assert all(len(rank["times_ms"][name]) == 2 for rank in r["per_rank"])
    assert "| sharded |" in done.stdout and "Same weights bit for bit on every rank: yes" in done.stdout


def test_a_layer_that_does_not_split_evenly_is_one_line():
    params = [torch.zeros(5, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.bfloat16)]
    with pytest.raises(SystemExit, match=r"tensors of shape \(5,\) do not split into 2 equal pieces"):
        zero1_update.ShardedUpdate(params, lr=1e-3, weight_decay=0.0, rank=0, world=2)
