"""benchmarks/fsdp2_host_cost.py: the plain path and FSDP2 on one gloo process, alternating, with their ratio."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_run_times_both_paths_and_profiles_fsdp2(tmp_path):
    """3 layers, 2 per FSDP2 unit (units of 2 and 1 layers and the root; the default layout is the harness's
    shard_model), and BAdam's frozen shards as a third path: every path timed in every round, FSDP2's hooks in the
    profile, and all end on the same model."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fsdp2_host_cost as bench

    cmd = [sys.executable, str(REPO / "benchmarks" / "fsdp2_host_cost.py"), "--out", str(tmp_path), "--layers", "3",
           "--steps", "2", "--rounds", "2", "--warmup", "1", "--profile", "--layers-per-unit", "2", "--frozen-shards"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "fsdp2_host_cost_l3_u2_frozen.json").read_text())
    assert len(r["rounds"]) == 2 and r["plain_ms"]["n"] == r["fsdp2_ms"]["n"] == 2
    for got in r["rounds"]:
        assert got["plain_ms"] > 0 and got["fsdp2_ms"] > 0
    ratios = [x["plain_ms"] / x["fsdp2_ms"] for x in r["rounds"]]
    assert r["plain_over_fsdp2"] == {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                     "n": 2}
    assert "_fsdp_param_group.py" in r["fsdp2_profile"]  # FSDP2's hooks ran: the model was sharded
    plain, fsdp2 = r["losses_after"]["plain"], r["losses_after"]["fsdp2"]
    assert abs(plain - fsdp2) <= 1e-6 * abs(plain)  # 5 BAdam steps each on one batch: the same model
    assert r["losses_after"]["frozen_shards"] == plain  # views of the same weights: bit for bit
    assert r["plain_over_frozen_shards"]["n"] == 2 and all(x["frozen_shards_ms"] > 0 for x in r["rounds"])
    assert r["layers_per_unit"] == 2 and "(2 per FSDP2 unit)" in done.stdout and "plain / FSDP2" in done.stdout
    assert bench.parse_args(["--out", "x"]).layers_per_unit == 1


def test_bad_arguments_are_one_line():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fsdp2_host_cost.py"), "--out", "x",
                           "--width", "30"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "--width a multiple of 8" in done.stderr
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fsdp2_host_cost.py"), "--out", "x",
                           "--layers-per-unit", "0"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "--layers-per-unit must be >= 1; got 0" in done.stderr
