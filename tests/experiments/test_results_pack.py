"""Packed metrics (metrics.jsonl.gz): the pack command (deterministic, idempotent, leaves live runs alone), every reader
of a run directory reading either form by one rule, and training unpacking a packed run before it appends."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from experiments import results_pack
from experiments.results import (MetricsWriter, find_runs, foreign_entries, read_metrics, truncate_metrics,
                                 unpack_metrics, write_metrics)
from experiments.rundir import RunDir, read_jsonl

RECORDS = [{"step": step, "loss": 2.0 / step, "t_step_ms": 10.0} for step in range(1, 6)]


def _lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _run(root: Path, name: str, *, status: str | None = "ok", metrics: bytes = _lines(RECORDS)) -> Path:
    run = root / "group" / name
    run.mkdir(parents=True)
    if status is not None:
        (run / "summary.json").write_text(json.dumps({"status": status, "method": "adam", "steps": 5}))
    (run / "metrics.jsonl").write_bytes(metrics)
    return run


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- reading -----------------------------------------------------------------------------------------------------
def test_a_packed_file_reads_like_the_plain_one_torn_last_line_included(tmp_path):
    torn = _lines(RECORDS) + b'{"step": 6, "lo'
    plain, packed = tmp_path / "m.jsonl", tmp_path / "m.jsonl.gz"
    plain.write_bytes(torn)
    packed.write_bytes(gzip.compress(torn))
    assert read_jsonl(packed) == read_jsonl(plain) == RECORDS
    with pytest.warns(UserWarning, match="m.jsonl.gz: ignoring the truncated last line"):
        read_jsonl(packed, warn_torn_last=True)
    packed.write_bytes(gzip.compress(b'{"step": 1\n' + _lines(RECORDS)))   # torn line before the last: corruption
    with pytest.raises(ValueError, match=r"m.jsonl.gz: line 1 is not valid JSON"):
        read_jsonl(packed)
    packed.write_bytes(gzip.compress(_lines(RECORDS))[:-12])               # a gzip stream cut short
    with pytest.raises(ValueError, match=r"m.jsonl.gz: not a complete gzip stream"):
        read_jsonl(packed)


def test_the_plain_file_wins_and_the_two_are_never_read_together(tmp_path):
    run = RunDir(tmp_path)
    assert run.metrics_to_read() == run.metrics and read_metrics(tmp_path) == [] and not run.has_metrics()
    run.packed_metrics.write_bytes(gzip.compress(_lines(RECORDS[:3])))
    assert run.metrics_to_read() == run.packed_metrics and read_metrics(tmp_path) == RECORDS[:3]
    run.metrics.write_bytes(_lines(RECORDS[3:]))
    assert run.metrics_to_read() == run.metrics and read_metrics(tmp_path) == RECORDS[3:]


def test_a_packed_run_is_found_and_counts_as_a_run_directory(tmp_path):
    run = _run(tmp_path, "r", status=None)
    results_pack.pack_run_metrics(run)
    assert find_runs(tmp_path) == [run] and foreign_entries(run) == []   # --overwrite may replace it


# --- packing -----------------------------------------------------------------------------------------------------
def test_pack_is_deterministic_idempotent_and_keeps_every_byte(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    for root in (first, second):
        _run(root, "done")
        _run(root, "oom", status="oom", metrics=_lines(RECORDS[:2]) + b'{"step": 3')  # torn: kept as it is
        _run(root, "live", status=None)
        _run(root, "resuming", status="interrupted")
    assert results_pack.main([str(first)]) == 0
    out = capsys.readouterr().out
    assert "packed 2 metrics file(s)" in out and "0 already packed, 2 left as they are" in out
    assert "live/metrics.jsonl (no summary.json: the run may still be training)" in out
    assert "resuming/metrics.jsonl (summary.json says interrupted" in out
    packed = _tree_bytes(first)
    assert gzip.decompress(packed["group/oom/metrics.jsonl.gz"]) == _lines(RECORDS[:2]) + b'{"step": 3'
    assert "group/done/metrics.jsonl" not in packed and "group/live/metrics.jsonl" in packed
    assert packed["group/done/metrics.jsonl.gz"][4:8] == b"\0\0\0\0"        # gzip mtime 0
    assert results_pack.main([str(first)]) == 0                               # again: nothing changes
    assert "packed 0 metrics file(s)" in capsys.readouterr().out and _tree_bytes(first) == packed
    results_pack.main([str(second)])                                          # elsewhere, later: the same bytes
    assert _tree_bytes(second) == packed


def test_a_run_that_trained_on_after_packing_is_packed_again_from_its_plain_file(tmp_path):
    run = _run(tmp_path, "r")
    results_pack.pack_tree(tmp_path)
    MetricsWriter(run).close()                     # a resume: unpacked, then appended to
    (run / "metrics.jsonl").write_bytes(_lines(RECORDS + [{"step": 6, "loss": 0.1}]))
    (run / "metrics.jsonl.gz").write_bytes(results_pack.gzip_bytes(_lines(RECORDS)))  # stale copy left beside it
    report = results_pack.pack_tree(tmp_path)
    assert len(report.packed) == 1 and not (run / "metrics.jsonl").exists()
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_dry_run_changes_nothing_and_a_bad_folder_is_one_line(tmp_path, capsys):
    _run(tmp_path, "r")
    before = _tree_bytes(tmp_path)
    assert results_pack.main([str(tmp_path), "--dry-run"]) == 0
    assert "would pack 1 metrics file(s)" in capsys.readouterr().out and _tree_bytes(tmp_path) == before
    assert results_pack.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope is not a folder" in err


def test_restore_brings_packed_metrics_that_read_and_take_new_lines_like_plain_ones(tmp_path):
    """Committed runs hold metrics.jsonl.gz (experiments.results_pack); a restored run reads the same records, and a
    SuperGLUE run's per-task harness runs come along packed too."""
    from tests.benchmarks.test_quality_session_scripts import PROFILE, _script
    from tests.benchmarks.test_quality_session_scripts import _run as committed_run

    restore_runs = _script("restore_runs")
    results, out = tmp_path / "results", tmp_path / "out"
    records = [{"step": step, "loss": 1.0 / step} for step in (1, 2, 3)]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (committed_run(results, "sweep_m", "x-adam-lr1e-05", "adam") / "metrics.jsonl").write_text(lines)
    task = results / "sweep_m" / "x-badam-sg" / "tasks" / "rte"
    task.mkdir(parents=True)
    (task / "summary.json").write_text(json.dumps({"status": "ok", "method": "badam"}))
    (task / "metrics.jsonl").write_text(lines)
    (results / "sweep_m" / "x-badam-sg" / "eval").mkdir()
    (results / "sweep_m" / "x-badam-sg" / "eval" / "superglue.json").write_text('{"tasks": {}}')
    assert len(results_pack.pack_tree(results).packed) == 2
    restored, _ = restore_runs.restore(PROFILE, results, out, question_ids=set(), groups=["sweep_m"])
    assert restored == ["sweep_m/x-adam-lr1e-05", "sweep_m/x-badam-sg"]
    run = out / "sweep_m" / "x-adam-lr1e-05"
    assert (run / "metrics.jsonl.gz").is_file() and read_metrics(run) == records
    assert read_metrics(out / "sweep_m" / "x-badam-sg" / "tasks" / "rte") == records
    with MetricsWriter(run) as writer:   # training on in the restored directory appends after the packed lines
        writer.write({"step": 4, "loss": 0.2})
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]


# --- writing after packing ---------------------------------------------------------------------------------------
def test_appending_truncating_and_replacing_a_packed_run_keep_its_history(tmp_path):
    run = _run(tmp_path, "r")
    results_pack.pack_run_metrics(run)
    with MetricsWriter(run) as writer:
        writer.write({"step": 6, "loss": 0.5})
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6] and not (run / "metrics.jsonl.gz").exists()
    results_pack.pack_run_metrics(run)
    truncate_metrics(run, 3)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3] and not (run / "metrics.jsonl.gz").exists()
    results_pack.pack_run_metrics(run)
    write_metrics(run, RECORDS[:1])
    assert read_metrics(run) == RECORDS[:1] and not (run / "metrics.jsonl.gz").exists()
    assert not unpack_metrics(run)                  # nothing packed: nothing to do


def test_resuming_a_run_whose_metrics_were_packed_keeps_the_old_lines(tmp_path):
    pytest.importorskip("torch")
    from experiments.loop import TrainConfig, train
    from experiments.results import read_summary
    from tests.experiments.test_loop import PlainAdamW, shuffled_batches, tiny_model

    batches_fn = shuffled_batches(n_examples=6, batch=2)
    run = tmp_path / "run"
    first = train(tiny_model(), PlainAdamW(lr=1e-3), batches_fn,
                  TrainConfig(max_steps=4, save_every=2, stop_after_steps=2), run, seed=0, progress=False)
    assert first["status"] == "ok" and [r["step"] for r in read_metrics(run)] == [1, 2]
    old = read_metrics(run)
    results_pack.pack_run_metrics(run)
    second = train(tiny_model(), PlainAdamW(lr=1e-3), batches_fn, TrainConfig(max_steps=4, resume_from=str(run)),
                   run, seed=0, progress=False)
    assert second["status"] == "ok", second["error"]
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[:2] == old
    assert read_summary(run)["steps"] == 4 and not (run / "metrics.jsonl.gz").exists()
