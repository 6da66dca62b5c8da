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


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        profile_step.parse_args(["--config", "x", "--out", "y", "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err
