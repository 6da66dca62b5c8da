"""Run directories: atomic writes, the torn-line-tolerant metrics reader, run-dir naming and summary figures."""
from __future__ import annotations

import json
import os

import pytest

from experiments import results
from experiments.results import (MetricsWriter, RunDirExistsError, atomic_write_json, prepare_run_dir, read_metrics,
                                 read_summary, summarize_metrics, truncate_metrics, write_summary)


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"status": "ok", "n": 1})

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_json(target, {"status": "ok", "n": 2})
    assert json.loads(target.read_text()) == {"status": "ok", "n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"], "the temporary file must be removed"


def test_atomic_write_never_exposes_a_partial_file(tmp_path, monkeypatch):
    """While the new content is written the visible file still has the old content."""
    target = tmp_path / "config.yaml"
    results.atomic_write_text(target, "old\n")
    real_fdopen = os.fdopen
    seen_during_write = []

    class Spy:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def write(self, data):
            self.handle.write(data[:3])
            self.handle.flush()
            seen_during_write.append(target.read_text())
            self.handle.write(data[3:])

        def flush(self):
            self.handle.flush()

        def fileno(self):
            return self.handle.fileno()

    monkeypatch.setattr(results.os, "fdopen", lambda fd, mode: Spy(real_fdopen(fd, mode)))
    results.atomic_write_text(target, "new content\n")
    assert seen_during_write == ["old\n"]
    assert target.read_text() == "new content\n"


def test_read_metrics_tolerates_a_torn_last_line_only(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write({"step": 1, "loss": 2.0})
        writer.write({"step": 2, "loss": 1.5})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "lo')  # a crash in the middle of a line
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(tmp_path)


def test_jsonl_lines_cut_inside_a_character_or_not_objects_are_named(tmp_path):
    """A writer killed inside a multi-byte character (MT-bench answers are written with ensure_ascii=False) made the
    whole file unreadable (UnicodeDecodeError, no file named); a line holding a list or a number was returned as a
    record and failed later ("cannot convert dictionary update sequence")."""
    from experiments.rundir import read_jsonl

    path = tmp_path / "answers.jsonl"
    whole = '{"text": "caf\u00e9 ok"}\n'.encode()
    path.write_bytes(whole + '{"text": "caf\u00e9'.encode()[:-1])   # torn between the two bytes of the é
    assert read_jsonl(path) == [{"text": "caf\u00e9 ok"}]
    path.write_bytes(whole + b'{"text": "caf\xe9"}\n' + whole)       # a latin-1 line in the middle: corruption
    with pytest.raises(ValueError, match=f"^{path}: line 2 is not valid UTF-8 text"):
        read_jsonl(path)
    path.write_bytes(whole + b"[1, 2]\n" + whole)
    with pytest.raises(ValueError, match=f"^{path}: line 2 holds a JSON list, not an object$"):
        read_jsonl(path)


def test_truncate_metrics_keeps_steps_up_to_checkpoint(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.write({"step": step, "loss": float(step)})
    truncate_metrics(tmp_path, 3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_prepare_run_dir_never_overwrites_silently(tmp_path):
    first = prepare_run_dir(tmp_path, "run")
    (first / "summary.json").write_text("{}")
    second = prepare_run_dir(tmp_path, "run")
    assert second.name == "run-2" and (first / "summary.json").exists()
    (second / "metrics.jsonl").write_text("")
    assert prepare_run_dir(tmp_path, "run").name == "run-3"
    with pytest.raises(RunDirExistsError, match="--overwrite"):
        prepare_run_dir(tmp_path, "run", on_exists="refuse")
    again = prepare_run_dir(tmp_path, "run", overwrite=True)
    assert again == first and not (first / "summary.json").exists()
    (first / "checkpoint.pt").write_text("x")
    assert prepare_run_dir(tmp_path, "run", resume=True) == first and (first / "checkpoint.pt").exists()


def test_summarize_metrics_excludes_warmup_from_medians():
    records = [{"step": i, "loss": 10.0 - i, "t_step_ms": 1000.0 if i <= 2 else 10.0 + i, "t_forward_ms": 1.0,
                "t_backward_ms": 2.0, "t_update_ms": 3.0, "tokens": 100, "tokens_per_s": 5.0} for i in range(1, 6)]
    records[-1]["eval_loss"] = 4.5
    out = summarize_metrics(records, warmup_steps=2)
    assert out["timing_ms"]["step"] == 14.0  # median of 13, 14, 15
    assert out["timing_ms"]["warmup_steps_excluded"] == 2
    assert out["final_loss"] == 5.0 and out["steps"] == 5 and out["final_eval_loss"] == 4.5
    assert out["mean_loss_last_10"] == pytest.approx(7.0)
    assert out["total_tokens"] == 500
    # too few steps to exclude warm-up: every step counts, and the summary says none were excluded
    short = summarize_metrics(records[:2], warmup_steps=2)
    assert short["timing_ms"]["step"] == 1000.0 and short["timing_ms"]["warmup_steps_excluded"] == 0


def test_write_summary_rejects_unknown_status(tmp_path):
    with pytest.raises(ValueError, match="ok"):
        write_summary(tmp_path, {"status": "fine"})
    write_summary(tmp_path, {"status": "oom", "error": "x"})
    assert read_summary(tmp_path)["status"] == "oom"
    assert read_summary(tmp_path / "missing") is None


def test_environment_info_names_versions_and_commit():
    env = results.environment_info("cpu")
    assert env["device_name"].startswith("CPU")
    for key in ("torch", "transformers", "peft", "python", "git_commit", "command", "hostname", "date"):
        assert key in env
    assert env["torch"] and env["transformers"]


def test_environment_info_takes_the_launchers_commit(monkeypatch):
    monkeypatch.setattr(results, "_git", lambda *args: None)  # a tree copied without .git
    monkeypatch.setenv("BADAM_SOURCE_COMMIT", "abc123")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env = results.environment_info("cpu")
    assert env["git_commit"] == "abc123" and env["git_dirty"] is None and env["git_commit_local"] is None
    monkeypatch.setattr(results, "_git", lambda *args: "0ld" if args[0] == "rev-parse" else " M file")  # stale .git
    env = results.environment_info("cpu")
    assert env["git_commit"] == "abc123" and env["git_commit_local"] == "0ld" and env["git_dirty_local"] is True
    assert env["cuda_alloc_conf"] == "expandable_segments:True"


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    """mkstemp creates 0600 files: summary.json, tables and report.md were unreadable to everyone but the writer."""
    import os
    import stat

    from experiments.results import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
        (tmp_path / "kept.json").write_text("{}")
        (tmp_path / "kept.json").chmod(0o640)
        atomic_write_text(tmp_path / "kept.json", "{}")  # replacing a file keeps its mode
        assert stat.S_IMODE((tmp_path / "kept.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
