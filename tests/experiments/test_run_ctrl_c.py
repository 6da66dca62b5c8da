"""Ctrl-C in a single run (python -m experiments.run): one line on stderr saying where the run is and how to go on,
exit code 130, no traceback; what was written stays whole (metrics.jsonl lines, the checkpoint) and summary.json says
"interrupted" (never the "ok" of a run being resumed). A real SIGINT to a CLI process, then the stop at a chosen
point in-process (KeyboardInterrupt raised where the signal would land)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.signals import default_sigint

from experiments import checkpoint, loop
from experiments import run as run_cli
from experiments.results import read_summary

REPO = Path(__file__).resolve().parents[2]
TINY = ["--config", "small/smollm2_alpaca.yaml", "model.source=random:tiny-llama", "method.name=adam",
        "train.grad_accum=1", "train.batch_size=2", "data.max_samples=4", "data.eval_samples=0",
        "data.max_length=32", "train.timing_warmup_steps=0", "--no-progress"]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def steps_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str) -> int:
    """experiments.run.main; a KeyboardInterrupt escaping it (the defect) fails the test instead of ending pytest."""
    try:
        return run_cli.main(list(args))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped experiments.run.main (a traceback for the user)")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_ctrl_c_ends_a_run_in_one_line_and_the_line_says_how_to_resume(tmp_path):
    """SIGINT to the process group (what Ctrl-C in a terminal sends) in the middle of a run that checkpoints every 2
    steps: exit 130, the last stderr line names the run directory and the resume override, summary.json says
    interrupted at the step metrics.jsonl reached; the suggested resume then finishes the run without a gap."""
    run_dir = tmp_path / "smollm2_alpaca-adam"
    command = [sys.executable, "-m", "experiments.run", *TINY, f"output.dir={tmp_path}", "train.max_steps=400",
               "train.save_every=2"]
    child = subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            metrics = run_dir / "metrics.jsonl"
            if (run_dir / "checkpoint.pt").is_file() and metrics.is_file() and metrics.read_text().count("\n") >= 3:
                break
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGINT)
        stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stdout == "", stderr[-2000:]
    summary = read_summary(run_dir)
    steps = steps_of(run_dir)
    assert summary["status"] == "interrupted" and summary["error_kind"] == "interrupted"
    assert summary["steps"] == len(steps) >= 3 and steps == list(range(1, len(steps) + 1))
    saved = checkpoint.saved_step(str(run_dir))
    assert saved in (steps[-1] - steps[-1] % 2, steps[-1] - steps[-1] % 2 - 2)   # every 2 steps (one may be cut)
    line = last_line(stderr)
    assert line == (f"stopped by Ctrl-C after step {len(steps)} of 400: {run_dir} (summary.json: interrupted); resume "
                    f"from its checkpoint (step {saved}): the same command with train.resume_from={run_dir}"), line
    assert summary["error"].startswith(f"stopped by Ctrl-C after step {len(steps)} of 400; resume from its checkpoint")
    assert not list(tmp_path.glob("*-2"))
    override = re.search(r"train\.resume_from=\S+", line).group(0)
    assert cli(*TINY, f"output.dir={tmp_path}", "train.max_steps=400", "train.save_every=2", override,
                         f"train.stop_after_steps={saved + 1}") == 0
    assert steps_of(run_dir) == list(range(1, saved + 2)) and read_summary(run_dir)["status"] == "ok"


def _ctrl_c_before_step(monkeypatch, stop_at: int) -> None:
    """KeyboardInterrupt where a SIGINT would land while step `stop_at` trains."""
    real_step = loop._train_step

    def step(model, method, micro_batches, cfg, position, *args):
        if position.step + 1 == stop_at:
            raise KeyboardInterrupt
        return real_step(model, method, micro_batches, cfg, position, *args)

    monkeypatch.setattr(loop, "_train_step", step)


def test_ctrl_c_in_a_resumed_run_replaces_its_ok_summary_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    """A finished run (ok, 2 steps, checkpoint) resumed to 4 steps and stopped by Ctrl-C in step 4: its summary no
    longer says ok (the config now asks for 4 steps), metrics.jsonl holds steps 1-3, the checkpoint of step 2 is the
    one that was there; no traceback, exit 130, one line."""
    args = [*TINY, f"output.dir={tmp_path}", "train.save_every=2"]
    run_dir = tmp_path / "smollm2_alpaca-adam"
    assert cli(*args, "train.max_steps=2") == 0
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    _ctrl_c_before_step(monkeypatch, 4)
    assert cli(*args, "train.max_steps=4", f"train.resume_from={run_dir}") == 130
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert last_line(captured.err) == (
        f"stopped by Ctrl-C after step 3 of 4: {run_dir} (summary.json: interrupted); resume from its checkpoint "
        f"(step 2): the same command with train.resume_from={run_dir}")
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["steps"] == 3 and steps_of(run_dir) == [1, 2, 3]
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint


def test_ctrl_c_without_a_checkpoint_says_to_start_over(tmp_path, capsys, monkeypatch):
    _ctrl_c_before_step(monkeypatch, 2)
    assert cli(*TINY, f"output.dir={tmp_path}", "train.max_steps=3") == 130
    run_dir = tmp_path / "smollm2_alpaca-adam"
    assert last_line(capsys.readouterr().err) == (
        f"stopped by Ctrl-C after step 1 of 3: {run_dir} (summary.json: interrupted); no checkpoint to resume from "
        "(train.save_every=0): run the command again to start over")
    assert read_summary(run_dir)["status"] == "interrupted" and steps_of(run_dir) == [1]


def test_ctrl_c_while_loading_writes_nothing_and_leaves_an_old_run_as_it_was(tmp_path, capsys, monkeypatch):
    def interrupted_load(*_args):
        raise KeyboardInterrupt

    assert cli(*TINY, f"output.dir={tmp_path}", "train.max_steps=1") == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(run_cli, "_load_everything", interrupted_load)
    assert cli(*TINY, f"output.dir={tmp_path}", "train.max_steps=1") == 130   # a new run: "-2"
    assert last_line(capsys.readouterr().err) == ("stopped by Ctrl-C while loading, before training started: nothing "
                                                  "was written; run the same command to start again")
    assert snapshot(tmp_path) == before and not (tmp_path / "smollm2_alpaca-adam-2").exists()
    assert cli(*TINY, f"output.dir={tmp_path}", "train.max_steps=1", "--overwrite") == 130
    assert last_line(capsys.readouterr().err) == (f"stopped by Ctrl-C while loading, before training started: "
                                                  f"{tmp_path / 'smollm2_alpaca-adam'} was left as it was")
    assert snapshot(tmp_path) == before


def test_ctrl_c_while_the_libraries_import_is_one_line_too():
    """experiments.run and run_all install this handler before importing torch (seconds): a Ctrl-C then exits 130
    with one line; their main() hands SIGINT back to KeyboardInterrupt."""
    code = ("import os, signal, time\n"
            "from experiments.process_env import ctrl_c_raises, quiet_ctrl_c_while_starting\n"
            "quiet_ctrl_c_while_starting()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          preexec_fn=default_sigint)
    assert done.returncode == 130 and done.stderr.strip() == "stopped by Ctrl-C while starting: nothing was written"
    from experiments.process_env import ctrl_c_raises, quiet_ctrl_c_while_starting

    before = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a script (a test worker may differ)
    try:
        quiet_ctrl_c_while_starting()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ctrl_c_raises()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
