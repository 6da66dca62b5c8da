"""benchmarks/math_generation.py runs on a CPU at tiny size and writes its figures; it refuses an output folder that
already holds samples (a resumed run would not be timed)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from experiments.paths import REPO_ROOT


def _benchmark():
    spec = importlib.util.spec_from_file_location("math_generation", REPO_ROOT / "benchmarks" / "math_generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_on_cpu_and_reports_per_dataset(tmp_path, capsys):
    bench = _benchmark()
    argv = ["--model", "random:tiny-llama", "--out", str(tmp_path), "--device", "cpu", "--datasets", "sat,numglue",
            "--limit", "3", "--batch-size", "2", "--max-new-tokens", "3", "--threads", "1"]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "math_generation.json").read_text())
    assert report["items"] == 6 and report["settings"]["datasets"] == ["sat", "numglue"]
    for name in ("sat", "numglue"):
        entry = report["datasets"][name]
        assert entry["items"] == 3 and 3 <= entry["new_tokens"] <= 9 and entry["tokens_per_s"] > 0
        assert entry["batch_tokens_per_s"]["batches"] == 2                   # 3 items in batches of 2
    assert report["target"]["met"] is False and report["environment"]["device_name"].startswith("CPU")
    assert (tmp_path / "eval" / "math.json").is_file() and "| sat | 3 |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit):                                          # samples there: refused
        bench.parse_args(argv)
    assert "already holds samples" in capsys.readouterr().err
