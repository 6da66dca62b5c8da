"""benchmarks/multi_gpu.py: a real one-process run of the tiny setting, and the summary's scaling arithmetic."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import multi_gpu  # noqa: E402


def run_benchmark(out: Path, processes: int, *options: str) -> None:
    script = str(REPO / "benchmarks" / "multi_gpu.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), script,
           "--out", str(out), "--tiny", *options]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_tiny_run_writes_phases_profile_and_summary(tmp_path):
    out = tmp_path / "bench"
    run_benchmark(out, 1, "--profile-dir", str(out / "profile"))
    result = json.loads((out / "tiny-llama_badam_n1.json").read_text())
    assert result["fsdp_groups"] == "layers + root (embeddings and head in the root)"
    for step in result["per_rank"][0]["steps"]:
        phases = step["forward_ms"] + step["backward_ms"] + step["update_ms"]
        assert 0 < phases <= step["ms"] * 1.01  # the phases lie inside the timed step
    assert "FSDP" in (out / "profile" / "tiny-llama_badam_n1_profile.txt").read_text()
    row = "| tiny-llama | badam | layers + root (embeddings and head in the root) | 1 |"
    assert row in (out / "summary.md").read_text()


def _result(gpus, tokens_per_s, groups):
    return {"model": "m", "method": "badam", "gpus": gpus, "batch_per_gpu": 2, "seq_len": 8, "fsdp_groups": groups,
            "median_step_ms": 10.0, "median_forward_ms": 3.0, "median_backward_ms": 6.0, "median_update_ms": 1.0,
            "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / gpus, "peak_allocated_bytes_max": None,
            "predicted_bytes_per_gpu": None, "weights_bytes_per_rank": [None],
            "environment": {"command": "c", "world_size": gpus, "device": "d", "torch": "t", "cuda": None,
                            "nccl": None, "transformers": "x", "date": "now"}}


def test_scaling_compares_with_the_best_single_gpu_path(tmp_path):
    runs = {"a_n1": _result(1, 100.0, "A"), "a_n2": _result(2, 180.0, "A"), "b_n2": _result(2, 150.0, "B"),
            "c_n2": {**_result(2, 150.0, "C"), "batch_per_gpu": 8}}
    for name, r in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    table = multi_gpu.summary_markdown(tmp_path)
    assert "| m | badam | A | 2 | 2 x 8 | 10 | 3 / 6 / 1 | 180 | 90 | 0.90 |" in table
    assert "| m | badam | B | 2 | 2 x 8 | 10 | 3 / 6 / 1 | 150 | 75 | 0.75 |" in table  # A's 1-GPU run: any layout
    assert "| m | badam | C | 2 | 8 x 8 |" in table and "n/a (no 1-GPU run)" in table  # no 1-GPU run at batch 8
    # a ddp run's single-GPU phases, faster than 1-GPU FSDP2, become the baseline of every row
    ddp = {"model": "m", "method": "badam", "mode": "ddp", "gpus": 2, "batch_per_gpu": 2, "seq_len": 8,
           "reduce_dtype": "fp32", "rounds": 3, "single_tokens_per_s": {"median": 120.0, "min": 110.0, "max": 125.0},
           "ddp_tokens_per_s": {"median": 228.0, "min": 220.0, "max": 230.0},
           "scaling_per_round": {"median": 0.95, "min": 0.93, "max": 0.97}, "scaling_of_medians": 0.95,
           "ddp_median_forward_ms": 3.0, "ddp_median_backward_ms": 6.0, "ddp_median_update_ms": 1.0,
           "single_peak_allocated_bytes_max": None, "ddp_peak_allocated_bytes_max": None,
           "environment": _result(2, 1.0, "")["environment"]}
    (tmp_path / "m_badam_n2_ddp_fp32_vs1x3.json").write_text(json.dumps(ddp))
    table = multi_gpu.summary_markdown(tmp_path)
    assert "| m | badam | A | 2 | 2 x 8 | 10 | 3 / 6 / 1 | 180 | 90 | 0.75 |" in table
    assert ("| m | badam | 2 | 2 x 8 | fp32 | 3 | 120 [110-125] | 228 [220-230] | 0.950 [0.930-0.970] | 0.950 | "
            "3 / 6 / 1 | n/a / n/a |") in table


def test_result_names_carry_batch_and_layout():
    args = multi_gpu.parse_args(["--out", "x", "--batch-size", "8", "--separate-ends", "--keep-gathered"])
    assert multi_gpu.result_stem(args, 2) == "llama3-8b_badam_n2_b8_separate-ends_keep-gathered"
    assert multi_gpu.result_stem(multi_gpu.parse_args(["--out", "x"]), 1) == "llama3-8b_badam_n1"
    ddp = multi_gpu.parse_args(["--out", "x", "--mode", "ddp", "--compare-single", "5", "--reduce-dtype", "bf16"])
    assert multi_gpu.result_stem(ddp, 2) == "llama3-8b_badam_n2_ddp_bf16_vs1x5"
    kept = multi_gpu.parse_args(["--out", "x", "--keep-gathered-layers", "-1", "--tag", "r2"])
    assert multi_gpu.result_stem(kept, 2) == "llama3-8b_badam_n2_keepall_r2"
    for wrong in (["--mode", "ddp", "--separate-ends"], ["--compare-single", "3"], ["--keep-gathered-layers", "-2"],
                  ["--keep-gathered", "--keep-gathered-layers", "4"]):
        with pytest.raises(SystemExit):
            multi_gpu.parse_args(["--out", "x", *wrong])


def test_forward_prefetch_changes_timing_not_numbers(tmp_path):
    """2 gloo processes: layers gathered ahead (and kept gathered) give exactly the losses of the default layout."""
    run_benchmark(tmp_path, 2)
    run_benchmark(tmp_path, 2, "--forward-prefetch", "2", "--keep-gathered")
    plain = json.loads((tmp_path / "tiny-llama_badam_n2.json").read_text())
    ahead = json.loads((tmp_path / "tiny-llama_badam_n2_keep-gathered_prefetch2.json").read_text())
    assert ahead["fsdp_groups"].endswith("layers kept gathered after forward, forward prefetch 2")
    assert ahead["losses_rank0"] == plain["losses_rank0"] and len(plain["losses_rank0"]) == 4
