"""eval/common.py (shared by the evaluators, written with eval.math): output folders and crash-safe JSONL files."""
from __future__ import annotations

import json

import pytest

from eval.common import (append_jsonl, is_run_dir, read_jsonl, resolve_output_dir, source_slug, write_json_atomic,
                         write_jsonl_atomic)
from experiments.paths import REPO_ROOT


def test_output_folder_follows_the_run(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    assert not is_run_dir(run)
    (run / "summary.json").write_text("{}")
    assert is_run_dir(run) and resolve_output_dir(str(run)) == run / "eval"
    assert resolve_output_dir(str(run), out=tmp_path / "x") == tmp_path / "x"
    assert resolve_output_dir("HuggingFaceTB/SmolLM2") == REPO_ROOT / "runs" / "eval" / "HuggingFaceTB__SmolLM2"
    assert source_slug("random:tiny-llama") == "random__tiny-llama"


def test_jsonl_survives_a_kill_mid_record(tmp_path):
    path = tmp_path / "s.jsonl"
    append_jsonl(path, [{"i": 0}, {"i": 1}])
    path.write_text(path.read_text() + '{"i": 2, "gen')            # a kill while writing record 2
    with pytest.warns(UserWarning, match="truncated last line"):
        assert read_jsonl(path) == [{"i": 0}, {"i": 1}]
    append_jsonl(path, [{"i": 2}])                                   # the torn record is dropped, not glued onto
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
    path.write_text('{"i": 0}\nnot json\n{"i": 2}\n')                 # damage inside the file is an error
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_atomic_writes_leave_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    write_jsonl_atomic(tmp_path / "r.jsonl", [{"b": 2}])
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert read_jsonl(tmp_path / "r.jsonl") == [{"b": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.jsonl"]
