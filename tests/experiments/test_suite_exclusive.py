"""Exclusive runs of a profile (profile key `exclusive: true`, experiments/suite.py): each is alone on its GPU while it
runs, after the others, and records shared_device_runs 1. The scheduler is tested with FAKE children (a short Python
process that logs when it ran, on which device, with which BADAM_SHARED_DEVICE_RUNS, and writes a final summary), so
that no model is loaded; the profile side with a real profile file."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments import run_all, suite
from experiments.config import ConfigError

# Written into each fake child: timestamps around a short sleep, the device and the sharing it was told, a summary.
FAKE_CHILD = """
import json, os, sys, time
from pathlib import Path
run_dir, log = Path(sys.argv[1]), Path(sys.argv[2])
start = time.time()
time.sleep(0.3)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "summary.json").write_text(json.dumps({"status": "ok", "method": "fake"}))
with open(log, "a") as handle:
    handle.write(json.dumps({"run": run_dir.name, "start": start, "end": time.time(),
                             "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
                             "shared": os.environ["BADAM_SHARED_DEVICE_RUNS"]}) + "\\n")
"""


def _planned(root: Path, name: str, exclusive: bool) -> suite.PlannedRun:
    cfg = SimpleNamespace(output=SimpleNamespace(dir=str(root)), run_name=name, data=SimpleNamespace(format="alpaca"))
    return suite.PlannedRun("g", "fake", cfg, config="fake.yaml", exclusive=exclusive)


def _run_fake_suite(tmp_path, monkeypatch, planned, *, jobs: int, gpus: list[str]) -> list[dict]:
    log = tmp_path / "ran.jsonl"
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    monkeypatch.setattr(suite, "child_command",
                        lambda item, state: [sys.executable, str(script), str(item.run_dir), str(log)])
    outcomes = suite.run_parallel(planned, output_root=tmp_path,
                                  options=suite.ParallelOptions(jobs=jobs, gpus=gpus, log_dir=tmp_path / "logs"))
    assert [o.status for o in outcomes] == ["ok"] * len(planned)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_exclusive_runs_are_alone_on_their_gpu_and_come_after_the_others(tmp_path, monkeypatch):
    # listed first, so a scheduler that ignored the key would start them beside the others
    planned = [_planned(tmp_path / "out", f"solo{i}", True) for i in range(3)]
    planned += [_planned(tmp_path / "out", f"shared{i}", False) for i in range(4)]
    ran = {r["run"]: r for r in _run_fake_suite(tmp_path, monkeypatch, planned, jobs=4, gpus=["0", "1"])}
    assert len(ran) == 7
    solos = [r for name, r in ran.items() if name.startswith("solo")]
    for solo in solos:
        beside = [r for r in ran.values() if r is not solo and r["device"] == solo["device"]
                  and r["start"] < solo["end"] and solo["start"] < r["end"]]
        assert not beside, f"{solo['run']} shared GPU {solo['device']} with {[r['run'] for r in beside]}"
        assert solo["shared"] == "1"
    assert {r["shared"] for name, r in ran.items() if name.startswith("shared")} == {"2"}  # 4 jobs on 2 GPUs
    last_shared_start = max(r["start"] for name, r in ran.items() if name.startswith("shared"))
    assert all(solo["start"] > last_shared_start for solo in solos), "exclusive runs go after the others"
    assert {solo["device"] for solo in solos} == {"0", "1"}, "an idle GPU takes the next exclusive run"


def test_without_exclusive_runs_the_schedule_is_unchanged(tmp_path, monkeypatch):
    planned = [_planned(tmp_path / "out", f"shared{i}", False) for i in range(3)]
    ran = _run_fake_suite(tmp_path, monkeypatch, planned, jobs=3, gpus=["0"])
    assert {r["shared"] for r in ran} == {"3"} and {r["device"] for r in ran} == {"0"}
    latest_start = max(r["start"] for r in ran)
    assert all(r["end"] > latest_start for r in ran), "three jobs on one GPU run at the same time"


def test_an_exclusive_child_records_one_run_on_its_device(monkeypatch):
    from experiments.results import environment_info

    env = suite._child_env("1", jobs=10, devices=2, exclusive=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("BADAM_SHARED_DEVICE_RUNS", env["BADAM_SHARED_DEVICE_RUNS"])
    assert environment_info()["shared_device_runs"] == 1
    assert suite._child_env("1", jobs=10, devices=2)["BADAM_SHARED_DEVICE_RUNS"] == "5"


def _profile(tmp_path, **keys) -> str:
    path = tmp_path / "exclusive.yaml"
    path.write_text(json.dumps({"description": "test", "output_dir": str(tmp_path / "out"), "runs": [
        {"config": "small/smollm2_alpaca.yaml", "group": "g", "name": "t", "methods": ["adam"], **keys}]}))
    return str(path)


def test_the_profile_key_reaches_the_plan_and_bad_values_are_one_line(tmp_path):
    planned = run_all.plan_runs(run_all.load_profile(_profile(tmp_path, exclusive=True)), output_root=tmp_path)
    assert [p.exclusive for p in planned] == [True]
    planned = run_all.plan_runs(run_all.load_profile(_profile(tmp_path)), output_root=tmp_path)
    assert [p.exclusive for p in planned] == [False]
    with pytest.raises(ConfigError, match=r"group g: exclusive must be true or false, got 'yes'"):
        run_all.load_profile(_profile(tmp_path, exclusive="yes"))


def test_the_quality_profile_times_every_method_alone():
    profile = run_all.load_profile("quality-gpu")
    solo = [e for e in profile["runs"] if e["group"] == "time_solo_gemma3_270m"]
    assert len(solo) == 1 and solo[0]["exclusive"] is True
    assert set(solo[0]["methods"]) == {"adam", "badam", "lora", "lomo", "galore", "sgd", "bsgd",
                                       "lisa", "adam_mini", "muon", "blockllm"}   # the newer methods too (0f4fd68)
    assert {"train.stop_after_steps=40", "train.eval_every=0"} <= set(solo[0]["overrides"])
