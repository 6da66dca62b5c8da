"""MT-bench aggregation: hand-made judgments with known averages, cross-checked against FastChat's show_result."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics

import pytest

from eval.mtbench.__main__ import main
from eval.mtbench.aggregate import summarize_single
from eval.mtbench.data import MTBenchError, load_questions

CATEGORY = {81: "writing", 91: "roleplay", 111: "math"}
# (model, question, turn) -> score; -1 is FastChat's "no rating found" and must be dropped
SCORES = {("alpha", 81, 1): 8, ("alpha", 81, 2): 6, ("alpha", 91, 1): 7, ("alpha", 91, 2): -1,
          ("alpha", 111, 1): 3, ("alpha", 111, 2): 2,
          ("beta", 81, 1): 10, ("beta", 81, 2): 9, ("beta", 91, 1): -1, ("beta", 91, 2): 5,
          ("beta", 111, 1): 4.5, ("beta", 111, 2): 4}
# Worked out by hand. "overall" is the mean of all kept scores, not the mean of the two turn means
# (alpha: 26/5 = 5.2, whereas (6 + 4)/2 would be 5.0).
EXPECTED = {"alpha": {"turn1": 6.0, "turn2": 4.0, "overall": 5.2, "n_unparseable": 1,
                      "categories": {"math": 2.5, "roleplay": 7.0, "writing": 7.0}},
            "beta": {"turn1": 7.25, "turn2": 6.0, "overall": 6.5, "n_unparseable": 1,
                     "categories": {"math": 4.25, "roleplay": 5.0, "writing": 9.5}}}


def _prompt_name(qid: int, turn: int) -> str:
    base = "single-math-v1" if CATEGORY[qid] == "math" else "single-v1"
    return base + ("-multi-turn" if turn == 2 else "")


def _write_judgments(path, judge="gpt-4", scores=SCORES):
    with open(path, "w") as handle:
        for (model, qid, turn), score in scores.items():
            handle.write(json.dumps({"question_id": qid, "model": model, "judge": [judge, _prompt_name(qid, turn)],
                                     "user_prompt": "...", "judgment": f"[[{score}]]", "score": score, "turn": turn,
                                     "tstamp": 1.0}) + "\n")
    return path


@pytest.fixture
def judgment_file(tmp_path):
    return _write_judgments(tmp_path / "gpt-4_single.jsonl")


def _check(models: dict) -> None:
    assert list(models) == ["beta", "alpha"]  # ranked by overall score
    for name, want in EXPECTED.items():
        got = models[name]
        for key in ("turn1", "turn2", "overall"):
            assert got[key] == pytest.approx(want[key]), (name, key)
        assert got["n_unparseable"] == want["n_unparseable"]
        assert got["categories"] == pytest.approx(want["categories"])


def test_known_averages(judgment_file):
    summary = summarize_single(judgment_file, load_questions())
    assert summary["judge"] == "gpt-4"
    _check(summary["models"])
    assert summary["models"]["alpha"]["n_turn1"] == 3 and summary["models"]["alpha"]["n_turn2"] == 2


def test_standard_error_of_the_overall_score(judgment_file):
    """overall_se = sample std (n - 1) of the scored per-turn ratings / sqrt(n_scored), worked out by hand:
    alpha keeps 8, 6, 7, 3, 2 (mean 5.2, squared deviations sum 26.8, variance 6.7)."""
    models = summarize_single(judgment_file)["models"]
    assert models["alpha"]["n_scored"] == 5 and models["beta"]["n_scored"] == 5
    assert models["alpha"]["overall_se"] == pytest.approx(math.sqrt(6.7 / 5))
    beta = [10, 9, 5, 4.5, 4]
    assert models["beta"]["overall_se"] == pytest.approx(statistics.stdev(beta) / math.sqrt(5))
    one = {("gamma", 81, 1): 7, ("gamma", 81, 2): -1}
    single = summarize_single(_write_judgments(judgment_file.parent / "one.jsonl", scores=one))["models"]["gamma"]
    assert single["n_scored"] == 1 and single["overall_se"] is None   # no spread from one rating


def _parse_show_result(text: str) -> dict[str, dict[str, float]]:
    """{section title: {model: score}} from FastChat's printed DataFrames."""
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("##########"):
            current = line.strip("# ").strip()
            sections[current] = {}
        elif current and line.split() and line.split()[0] in EXPECTED:
            sections[current][line.split()[0]] = float(line.split()[-1])
    return sections


def test_matches_fastchat_show_result(judgment_file):
    from fastchat.llm_judge.show_result import display_result_single

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        display_result_single(argparse.Namespace(input_file=str(judgment_file), bench_name="mt_bench",
                                                 judge_model="gpt-4", model_list=None))
    fastchat = _parse_show_result(buffer.getvalue())
    ours = summarize_single(judgment_file)["models"]
    for title, key in (("First turn", "turn1"), ("Second turn", "turn2"), ("Average", "overall")):
        assert set(fastchat[title]) == {"alpha", "beta"}
        for model, score in fastchat[title].items():
            assert ours[model][key] == pytest.approx(score, abs=1e-6), (title, model)


def test_filters_and_errors(tmp_path, judgment_file):
    only_beta = summarize_single(judgment_file, models=["beta"])["models"]
    assert list(only_beta) == ["beta"] and "categories" not in only_beta["beta"]
    with pytest.raises(MTBenchError, match=r"models \['gamma'\] not in the judgments"):
        summarize_single(judgment_file, models=["gamma"])

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(judgment_file.read_text()
                     + _write_judgments(tmp_path / "other.jsonl", judge="local-judge").read_text())
    with pytest.raises(MTBenchError, match=r"several judges \['gpt-4', 'local-judge'\]"):
        summarize_single(mixed)
    _check(summarize_single(mixed, load_questions(), judge_model="gpt-4")["models"])
    with pytest.raises(MTBenchError, match="judge 'nobody' not in the judgments"):
        summarize_single(mixed, judge_model="nobody")
    with pytest.raises(MTBenchError, match="judgment file not found"):
        summarize_single(tmp_path / "absent.jsonl")


def test_cli_show_prints_and_writes_json(judgment_file, tmp_path, capsys):
    output = tmp_path / "scores.json"
    assert main(["show", "--judgment", str(judgment_file), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    sections = _parse_show_result(printed)
    assert sections["Average"] == pytest.approx({"beta": 6.5, "alpha": 5.2})
    assert sections["Second turn"] == pytest.approx({"beta": 6.0, "alpha": 4.0})
    assert "Per category" in printed
    _check(json.loads(output.read_text())["models"])


def test_cli_missing_file_is_one_line(tmp_path, capsys):
    assert main(["show", "--judgment", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "judgment file not found" in err[0]


@pytest.mark.parametrize("field, value, expected", [
    ("score", "eight", "invalid score, e.g. question 81 (model 'alpha', turn 1): 'eight'"),
    ("score", None, "invalid score"),
    ("score", True, "invalid score"),
    ("turn", 3, "invalid turn"),
    ("judge", "gpt-4", "invalid judge"),
])
def test_cli_show_with_a_bad_record_is_one_line(tmp_path, capsys, field, value, expected):
    path = _write_judgments(tmp_path / "judgments.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0][field] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["show", "--judgment", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and str(path) in err[0], err


def test_cli_show_with_a_torn_middle_line_is_one_line(tmp_path, capsys):
    path = _write_judgments(tmp_path / "judgments.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:20]
    path.write_text("\n".join(lines) + "\n")
    assert main(["show", "--judgment", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt" in err[0] and "line 3" in err[0]


def test_integer_only_scores_are_numbers(tmp_path):
    scores = {k: int(v) for k, v in SCORES.items() if float(v).is_integer()}
    summary = summarize_single(_write_judgments(tmp_path / "ints.jsonl", scores=scores))
    assert summary["models"]["alpha"]["turn1"] == pytest.approx(6.0)
