"""benchmarks/time_protocol.py on a CPU with a tiny profile: configurations alternate over repeats in one process
after a warm-up, an incomplete repeat is run again whole, and protocol.md states every ratio with its band."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import time_protocol  # noqa: E402

TINY = ["model.source=random:tiny-llama", "model.dtype=fp32", "data.max_length=32", "data.max_samples=6",
        "data.eval_samples=0", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2", "train.eval_every=0",
        "train.timing_warmup_steps=1", "train.device=cpu", "train.epochs=1"]


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "tiny_protocol.yaml"
    path.write_text("description: tiny protocol test\noutput_dir: runs/unused\nruns:\n"
                    "  - config: small/smollm2_alpaca.yaml\n    group: paper_time_tiny\n    name: tiny\n"
                    "    methods: [badam, sgd]\n"
                    f"    overrides: [{', '.join(TINY)}]\n")
    return path


def run(profile, out, *extra):
    return time_protocol.main(["--profile", str(profile), "--groups", "paper_time_tiny", "--output-dir", str(out),
                               "--no-progress", *extra])


def test_alternating_repeats_and_the_protocol_report(profile, tmp_path, monkeypatch):
    order = []
    real = time_protocol.run_in_process

    def recording(item, state, progress):
        order.append((item.cfg.run_name, state))
        return real(item, state, progress=progress)

    monkeypatch.setattr(time_protocol, "run_in_process", recording)
    out = tmp_path / "results"
    assert run(profile, out, "--repeats", "2") == 0
    assert order == [("warmup", "new"), ("tiny-badam-rep1", "new"), ("tiny-sgd-rep1", "new"),
                     ("tiny-badam-rep2", "new"), ("tiny-sgd-rep2", "new")]
    group = out / "paper_time_tiny"
    doc = json.loads((group / "protocol.json").read_text())
    assert doc["reference"] == "tiny-badam"
    sgd = doc["configurations"]["tiny-sgd"]
    assert sgd["repeats"] == [1, 2] and sgd["ratio_to_reference"]["step"]["n"] == 2
    assert "| tiny-sgd | sgd | 2 |" in (group / "protocol.md").read_text()
    assert not any(p.name.startswith("warmup") for p in group.iterdir())  # the warm-up leaves nothing behind

    # repeat 2 loses a run: a continued session runs that whole repeat again, and only it
    (group / "tiny-sgd-rep2" / "summary.json").unlink()
    order.clear()
    assert run(profile, out, "--repeats", "2", "--no-warmup") == 0
    assert order == [("tiny-badam-rep2", "redo"), ("tiny-sgd-rep2", "redo")]


def test_deadline_stops_between_repeats_and_once_keeps_plain_names(profile, tmp_path):
    out = tmp_path / "results"
    assert run(profile, out, "--repeats", "3", "--no-warmup", "--launch-deadline", "0.001") == 3
    names = sorted(p.name for p in (out / "paper_time_tiny").iterdir() if p.is_dir())
    assert names == ["tiny-badam-rep1", "tiny-sgd-rep1"]  # repeat 1 always runs; repeat 2 would pass the deadline
    assert run(profile, out, "--once", "--no-warmup", "--methods", "sgd") == 0
    assert (out / "paper_time_tiny" / "tiny-sgd" / "summary.json").is_file()


def test_finished_repeats_of_other_settings_stop_the_call_in_one_line(profile, tmp_path, capsys, monkeypatch):
    """A continued session with another --set kept the finished repeats of the old settings and paired them with
    the new ones in one ratio; the summaries are left as they are."""
    out = tmp_path / "results"
    assert run(profile, out, "--repeats", "3", "--no-warmup", "--launch-deadline", "0.001") == 3
    kept = (out / "paper_time_tiny" / "tiny-badam-rep1" / "summary.json").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(time_protocol, "run_in_process", lambda *a, **k: pytest.fail("a run was started"))
    assert run(profile, out, "--repeats", "3", "--no-warmup", "--set", "data.max_length=48") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiny-badam-rep1 is a finished repeat of other settings (data.max_length: 32 -> 48)" \
        in err[0] and "use another --output-dir, or --fresh" in err[0]
    assert (out / "paper_time_tiny" / "tiny-badam-rep1" / "summary.json").read_bytes() == kept


def test_bad_requests(profile, tmp_path, capsys):
    with pytest.raises(SystemExit):
        time_protocol.parse_args(["--profile", "x", "--groups", "g", "--repeats", "0"])
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert run(profile, tmp_path, "--groups", "nope") == 2
    assert "unknown group(s) nope" in capsys.readouterr().err
    assert run(profile, tmp_path, "--methods", "lora") == 2
    assert "--methods names lora, which the groups do not run; they run badam, sgd" in capsys.readouterr().err
