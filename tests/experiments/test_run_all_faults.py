"""FAULT INJECTION: run_all is killed (SIGKILL, no chance to clean up) in the middle of a suite and run again.

Written against run_all's rerun contract (experiments/suite.py): a rerun with the same output directory skips runs that
finished, resumes runs that left a checkpoint (into their own directory) and redoes the rest. Checked: every run ends
ok with exactly the planned steps, each step recorded once, no `-2` directory, and no file of a run that had finished
before the kill changes in any byte or its modification time. A second fault, a kill between a run's last checkpoint
and its summary (simulated by removing the summary), is finished by the next rerun without training again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from experiments import run_all
from experiments.results import read_summary
from tests.signals import default_sigint

REPO = Path(__file__).resolve().parents[2]
METHODS = ("adam", "sgd")
STEPS = 4
TINY = ["model.source=random:tiny-llama", "data.max_length=32", "data.max_samples=8", "data.eval_samples=0",
        "train.batch_size=2", "train.grad_accum=1", "train.timing_warmup_steps=0", f"train.max_steps={STEPS}",
        "train.save_every=1"]


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*"))
            if p.is_file()}


def steps_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_killed_suite_reruns_every_run_exactly_once_and_changes_no_finished_file(tmp_path, capsys):
    profile = tmp_path / "faults.yaml"
    out = tmp_path / "out"
    profile.write_text(yaml.safe_dump({"description": "fault injection", "output_dir": str(out), "runs": [
        {"config": "small/smollm2_alpaca.yaml", "group": "g", "name": "t", "methods": list(METHODS),
         "overrides": TINY}]}))
    args = ["--profile", str(profile), "--no-progress", "--no-eval", "--no-plots"]
    runs = {m: out / "g" / f"t-{m}" for m in METHODS}

    # 1. kill the whole process group once the second run is half-way (its metrics have 2 of 4 steps)
    child = subprocess.Popen([sys.executable, "-m", "experiments.run_all", *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            metrics = runs["sgd"] / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the suite ended before the fault could be injected"
    finished = {m: d for m, d in runs.items() if (read_summary(d) or {}).get("status") == "ok"}
    assert list(finished) == ["adam"]
    before = {m: snapshot(d) for m, d in finished.items()}

    # 2. rerun: the finished run is skipped untouched, the killed one resumed from its checkpoint
    assert run_all.main(args) == 0, capsys.readouterr()
    for method, run_dir in runs.items():
        summary = read_summary(run_dir)
        assert summary["status"] == "ok" and summary["steps"] == STEPS, (method, summary.get("error"))
        assert steps_of(run_dir) == list(range(1, STEPS + 1)), method
    for method, files in before.items():
        assert snapshot(runs[method]) == files, f"{method} finished before the kill but was changed"
    assert sorted(p.name for p in (out / "g").iterdir()) == [f"t-{m}" for m in sorted(METHODS)]

    # 3. a kill after a run's last checkpoint but before its summary: the rerun writes the summary, trains nothing
    metrics_before = (runs["sgd"] / "metrics.jsonl").read_bytes()
    checkpoint_before = snapshot(runs["sgd"])["checkpoint.pt"]
    (runs["sgd"] / "summary.json").unlink()
    adam_files = snapshot(runs["adam"])
    assert run_all.main(args) == 0
    summary = read_summary(runs["sgd"])
    assert summary["status"] == "ok" and summary["steps"] == STEPS
    assert (runs["sgd"] / "metrics.jsonl").read_bytes() == metrics_before
    assert snapshot(runs["sgd"])["checkpoint.pt"] == checkpoint_before, "no step may run again"
    assert summary["memory"]["peak_allocated_bytes"] > 0
    assert snapshot(runs["adam"]) == adam_files


def test_ctrl_c_ends_the_suite_in_one_line_and_the_rerun_redoes_the_stopped_run(tmp_path):
    """Ctrl-C (SIGINT to the foreground process group) in the middle of a run: no traceback, exit code 130, and the
    same command then redoes the stopped run (it left no checkpoint) into the same directory."""
    profile = tmp_path / "ctrl_c.yaml"
    out = tmp_path / "out"
    no_checkpoints = [o for o in TINY if not o.startswith(("train.save_every", "train.max_steps"))]
    profile.write_text(yaml.safe_dump({"description": "Ctrl-C", "output_dir": str(out), "runs": [
        {"config": "small/smollm2_alpaca.yaml", "group": "g", "name": "t", "methods": ["sgd"],
         "overrides": [*no_checkpoints, "train.max_steps=400"]}]}))
    args = ["--profile", str(profile), "--no-progress", "--no-eval", "--no-plots"]
    metrics = out / "g" / "t-sgd" / "metrics.jsonl"
    child = subprocess.Popen([sys.executable, "-m", "experiments.run_all", *args], cwd=REPO, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if metrics.is_file() and metrics.read_text().count("\n") >= 1:
                break
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGINT)
        stderr = child.communicate(timeout=120)[1]
    assert child.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == ("stopped by Ctrl-C: finished runs are kept; rerun the same command to "
                                               "continue")
    assert run_all.main([*args, "--set", "train.max_steps=2"]) == 0
    assert read_summary(out / "g" / "t-sgd")["steps"] == 2 and sorted(p.name for p in (out / "g").iterdir()) == ["t-sgd"]


def test_a_cut_short_summary_is_named_in_one_line_left_untouched_and_the_others_go_on(tmp_path, capsys):
    """A summary.json that is not JSON (a disk filled up, a hand edit) was a JSONDecodeError traceback that ended the
    whole suite; now the rerun names the file, leaves the directory as it is (it may hold a finished run), goes on
    with the other runs and exits 1."""
    profile = tmp_path / "broken.yaml"
    out = tmp_path / "out"
    tiny = [o for o in TINY if not o.startswith(("train.max_steps", "train.save_every"))] + ["train.max_steps=1"]
    profile.write_text(yaml.safe_dump({"description": "broken summary", "output_dir": str(out), "runs": [
        {"config": "small/smollm2_alpaca.yaml", "group": "g", "name": "t", "methods": list(METHODS),
         "overrides": tiny}]}))
    args = ["--profile", str(profile), "--no-progress", "--no-eval", "--no-plots"]
    assert run_all.main(args) == 0
    runs = {m: out / "g" / f"t-{m}" for m in METHODS}
    text = (runs["adam"] / "summary.json").read_text()
    (runs["adam"] / "summary.json").write_text(text[: len(text) // 2])
    before = {m: snapshot(d) for m, d in runs.items()}
    capsys.readouterr()
    assert run_all.main(args) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {runs['adam'] / 'summary.json'}: not valid JSON (")
    assert f"left as it is: delete {runs['adam']} (or rerun with --fresh) to train it again" in errors[0]
    assert "Traceback" not in captured.err and "finished earlier" in captured.out
    assert {m: snapshot(d) for m, d in runs.items()} == before   # nothing retrained, nothing replaced
