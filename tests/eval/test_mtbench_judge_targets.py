"""eval.mtbench.runs.answered_run_dirs: which run directories the GPU session's judge phase grades."""
from __future__ import annotations

import json

from eval.mtbench.runs import answered_run_dirs, main

QUESTIONS = [{"question_id": qid, "category": "writing", "turns": ["a", "b"]} for qid in (81, 82, 83)]


def _answers(run_dir, model_id, question_ids):
    folder = run_dir / "eval" / "mtbench" / "model_answer"
    folder.mkdir(parents=True)
    records = [{"question_id": qid, "answer_id": str(qid), "model_id": model_id,
                "choices": [{"index": 0, "turns": ["x", "y"]}]} for qid in question_ids]
    (folder / f"{model_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_complete_answer_sets_are_judged_incomplete_ones_wait(tmp_path, capsys, monkeypatch):
    group = tmp_path / "paper_mtbench_m"
    _answers(group / "m-adam-s0", "m-adam-s0", [81, 82, 83])
    _answers(group / "m-base", "m-base", [83, 81, 82])                     # the base model's directory counts too
    _answers(group / "m-badam-s0", "m-badam-s0", [81, 82])                 # answering cut off
    (group / "m-lora-s1" / "eval").mkdir(parents=True)                     # trained, no answers
    (group / "lr_selection.json").write_text("{}")                         # a file beside the runs
    _answers(tmp_path / "lr_sweep_m" / "m-adam-lr1e-05", "x", [81, 82, 83])  # another group
    complete, incomplete = answered_run_dirs(tmp_path, "paper_mtbench_*", QUESTIONS)
    assert complete == [group / "m-adam-s0", group / "m-base"]
    assert incomplete == [group / "m-badam-s0"]
    assert answered_run_dirs(tmp_path / "missing", "paper_mtbench_*", QUESTIONS) == ([], [])

    import eval.mtbench.data as data
    monkeypatch.setattr(data, "load_questions", lambda *a, **k: QUESTIONS)
    assert main([str(tmp_path), "paper_mtbench_*"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(group / "m-adam-s0"), str(group / "m-base")]
    assert "not judged: " + str(group / "m-badam-s0") in err
    assert main([]) == 2
