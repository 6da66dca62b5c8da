"""Tasks as data: the built-in six are task files, a new dataset is evaluated from a task file with no code change,
outputs made elsewhere are scored with `python -m eval.math score`, bad task and predictions files fail in one line,
and the paper's average covers its six datasets by name whatever else was evaluated (math.json and plots)."""
from __future__ import annotations

import gzip
import json
import re

import pytest

import eval.math.runner as runner
from eval.generation import BatchOutput
from eval.math import (DATASETS, PAPER_DATASETS, MathDataError, MathTaskError, builtin_names, builtin_task,
                       evaluate_math, load_items, load_task_file, resolve_tasks, score_predictions, select_subset)
from eval.math.__main__ import main
from eval.math.prompts import build_prompt
from plots.runs import PAPER_MATH_DATASETS, Run
from tests.eval.math_stubs import NoModel, tokenizer_stub

SVAMP = [  # SVAMP-style records: the question is split over two fields
    {"ID": "a", "Body": "Jack had 8 pens and Mary had 5.", "Question": "How many pens in all?", "Answer": 13.0},
    {"ID": "b", "Body": "A box holds 12 eggs.", "Question": "How many eggs do 3 boxes hold?", "Answer": 36.0},
    {"ID": "c", "Body": "Tom ran 2.5 km on Monday.", "Question": "How far did he run in 2 days?", "Answer": 5.0},
]


@pytest.fixture()
def svamp_task(tmp_path):
    data = tmp_path / "data" / "svamp.jsonl.gz"
    data.parent.mkdir()
    with gzip.open(data, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(record) + "\n" for record in SVAMP)
    task = tmp_path / "svamp.yaml"
    task.write_text('name: svamp\npath: data/svamp.jsonl.gz\nquestion: "{Body} {Question}"\nanswer: Answer\n'
                    'answer_type: number\nmeta: [ID]\n')
    return task


def test_builtin_six_are_task_files():
    assert builtin_names()[:6] == DATASETS == PAPER_DATASETS
    for name in DATASETS:
        task = builtin_task(name)
        assert task.name == name and task.source.endswith(f"tasks/{name}.yaml") and task.path.is_file()
    assert builtin_task("gsm8k").triggers[-1] == "####" and builtin_task("math").gold == "last_boxed"
    assert [task.name for task in resolve_tasks()] == list(PAPER_DATASETS)
    # plots' copy of the six names (plots never imports eval.math: it would load torch)
    assert PAPER_MATH_DATASETS == tuple("sat_math" if n == "sat" else n for n in PAPER_DATASETS)


def test_a_new_dataset_from_a_task_file(svamp_task):
    task = load_task_file(svamp_task)
    items = load_items(task)
    assert [item.question for item in items][0] == "Jack had 8 pens and Mary had 5. How many pens in all?"
    assert [item.gold for item in items] == ["13", "36", "5"] and items[0].meta == {"ID": "a"}
    assert "### Instruction:\nJack had 8 pens" in build_prompt(items[0], "alpaca")


def test_choice_tasks_from_a_mapping_and_an_index(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([
        {"q": "2 + 2?", "opts": {"A": "3", "B": "4"}, "gold": "(B)"},
        {"q": "3 + 3?", "opts": ["6", "7", "8"], "gold": 0}]))
    (tmp_path / "t.yaml").write_text("name: tiny\npath: q.json\nquestion: '{q}'\nanswer: gold\n"
                                     "answer_type: choice\nchoices: opts\n")
    items = load_items(load_task_file(tmp_path / "t.yaml"))
    assert [item.gold for item in items] == ["B", "A"] and items[1].choices == {"A": "6", "B": "7", "C": "8"}
    assert items[0].question == "2 + 2?\nAnswer Choices: (A) 3 (B) 4" and items[0].scan_letters == "ABCDEFGHIJ"


@pytest.mark.parametrize("text, message", [
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\n", "missing key(s) answer_type"),
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\nanswer_type: float\n", "not one of number, choice, math"),
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\nanswer_type: choice\n", "needs 'choices'"),
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\nanswer_type: number\ncolour: red\n", "unknown key(s) colour"),
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\nanswer_type: number\ngold: first\n", "after:<marker>"),
    ("name: x\npath: q.json\nquestion: 'no fields'\nanswer: a\nanswer_type: number\n", "must name record fields"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("name: [unclosed\n", "t.yaml: invalid YAML at line 2, column 1"),
    ("name: x\npath: q.json\nquestion: '{Body {Question}'\nanswer: a\nanswer_type: number\n",
     "question '{Body {Question}' is not a format string (unexpected '{' in field name)"),  # was a bare ValueError
    # a misspelt key was reported as the key it should have been missing, without naming the typo
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\nanswr_type: number\n",
     "unknown key(s) answr_type (answr_type: did you mean answer_type?)"),
    # a scalar where a list belongs was a TypeError traceback ('int' object is not iterable)
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\nanswer_type: number\ntriggers: 5\n",
     "triggers must be a list of non-empty strings, got 5"),
    ("name: x\npath: q.json\nquestion: '{q}'\nanswer: a\nanswer_type: number\nmeta: 3\n",
     "meta must be a list of field names, got 3"),
])
def test_bad_task_files(tmp_path, text, message):
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(MathTaskError, match=re.escape(message)):
        load_task_file(tmp_path / "t.yaml")


def test_records_that_do_not_fit_the_task(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"Body": "x", "Answer": 1}) + "\n")
    (tmp_path / "t.yaml").write_text("name: x\npath: q.jsonl\nquestion: '{Body} {Question}'\nanswer: Answer\n"
                                     "answer_type: number\n")
    with pytest.raises(MathTaskError, match="item 0: question names field 'Question'.*its fields: Body, Answer"):
        load_items(load_task_file(tmp_path / "t.yaml"))
    with pytest.raises(MathTaskError, match="two tasks are named 'x'"):
        resolve_tasks(None, [tmp_path / "t.yaml", tmp_path / "t.yaml"])


def test_an_empty_data_file_is_an_error_not_zero_percent(tmp_path):
    (tmp_path / "q.jsonl").write_text("\n")
    (tmp_path / "t.yaml").write_text("name: x\npath: q.jsonl\nquestion: '{Body}'\nanswer: Answer\nanswer_type: number\n")
    with pytest.raises(MathDataError, match=r"math dataset 'x': .*q.jsonl holds no items \(the file is empty\)"):
        load_items(load_task_file(tmp_path / "t.yaml"))


def _oracle(gold_by_prompt):
    def generate(model, tok, encoded, options):
        texts = [f"Adding up.\nThe answer is {gold_by_prompt[tok.texts[ids[0]]]}." for ids in encoded]
        return texts, BatchOutput([[1, 2, 3]] * len(encoded), [3] * len(encoded), 0.01)
    return generate


def test_paper_average_covers_the_six_by_name(monkeypatch, tmp_path, svamp_task):
    tasks = resolve_tasks(DATASETS, [svamp_task])
    gold = {build_prompt(item, "alpaca"): item.gold for task in tasks for item in select_subset(load_items(task), 2)}
    svamp_prompts = {build_prompt(item, "alpaca") for item in load_items(tasks[-1])}
    gold.update({prompt: "999" for prompt in svamp_prompts})              # every SVAMP answer wrong
    monkeypatch.setattr(runner, "generate_encoded", _oracle(gold))
    results = evaluate_math(NoModel(), tokenizer_stub(), out_dir=tmp_path / "eval", model_name="oracle",
                            tasks=[task for task in tasks], limit=2)
    assert list(results["datasets"]) == list(DATASETS) + ["svamp"] and results["datasets"]["svamp"]["correct"] == 0
    assert results["paper_average_pct"] == 100.0 and results["average_accuracy_pct"] == pytest.approx(600 / 7)
    # plots read the same file: the paper's average is over the six, the extra dataset is listed beside it
    (tmp_path / "summary.json").write_text("{}")
    scores = Run(tmp_path, "g", {}).math_scores()
    assert scores["average"] == 100.0 and scores["svamp"] == 0.0 and scores["sat_math"] == 100.0
    # one of the six missing: no paper average, in math.json and in plots
    doc = json.loads((tmp_path / "eval" / "math.json").read_text())
    del doc["datasets"]["numglue"]
    (tmp_path / "eval" / "math.json").write_text(json.dumps(doc))
    assert "average" not in Run(tmp_path, "g", {}).math_scores()
    assert runner.paper_average({"gsm8k": 50.0, "svamp": 10.0}) is None


def test_cli_evaluates_a_task_file_with_a_real_model(tmp_path, svamp_task, capsys):
    assert main(["--model", "random:tiny-llama", "--task-file", str(svamp_task), "--limit", "2", "--batch-size", "2",
                 "--max-new-tokens", "3", "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "svamp" in printed and "tok/s" in printed and "paper's six" not in printed
    saved = json.loads((tmp_path / "out" / "math.json").read_text())
    assert list(saved["datasets"]) == ["svamp"] and saved["paper_average_pct"] is None
    assert saved["datasets"]["svamp"]["total"] == 2 and saved["datasets"]["svamp"]["new_tokens"] > 0


# --- score: outputs made elsewhere -------------------------------------------------------------------------------------
def _write_predictions(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_score_outputs_made_elsewhere(tmp_path, svamp_task, capsys):
    gsm8k = load_items("gsm8k")
    predictions = _write_predictions(tmp_path / "p.jsonl", [
        {"idx": 0, "output": f"So she makes $18.\nThe answer is {gsm8k[0].gold}.", "model": "vllm"},
        {"idx": 5, "output": "I do not know."},
        {"idx": 1319 - 1, "output": f"#### {gsm8k[-1].gold}"}])
    assert main(["score", "--datasets", "gsm8k", "--predictions", str(predictions),
                 "--out", str(tmp_path / "r.json")]) == 0
    assert "66.67%" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["task"] == "gsm8k" and result["scoring"] == "mammoth" and result["total"] == 3
    assert result["missing"] == 1316 and result["accuracy_pct"] == pytest.approx(200 / 3)
    assert [s["idx"] for s in result["samples"]] == [0, 5, 1318]
    assert result["samples"][0] == {"idx": 0, "extracted": "18", "gold": "18", "correct": True}
    # a task file, strict scoring; the same numbers through the Python API
    _write_predictions(tmp_path / "s.jsonl", [{"idx": 2, "output": "The answer is 5.0 km"},
                                              {"idx": 0, "output": "The answer is \u221213"}])
    assert main(["score", "--task-file", str(svamp_task), "--predictions", str(tmp_path / "s.jsonl"),
                 "--out", str(tmp_path / "s.json"), "--scoring", "strict"]) == 0
    strict = json.loads((tmp_path / "s.json").read_text())
    assert [s["correct"] for s in strict["samples"]] == [False, True] and strict["accuracy_pct"] == 50.0
    again = score_predictions(load_task_file(svamp_task), tmp_path / "s.jsonl", scoring="mammoth")
    assert [s["correct"] for s in again["samples"]] == [True, True]      # MAmmoTH reads the unicode minus as no sign


@pytest.mark.parametrize("lines, message", [
    (['{"idx": 0, "output": "x"}', "{not json"], "line 2: not valid JSON"),
    (['{"idx": 0}'], "line 1: each line needs an object with 'idx' and 'output'"),
    (['{"idx": 999999, "output": "x"}'], "idx 999999 is not an item position 0..1318"),
    (['{"idx": "3", "output": "x"}'], "idx '3' is not an item position"),
    (['{"idx": 3, "output": 7}'], "output must be a string"),
    (['{"idx": 3, "output": "a"}', '{"idx": 3, "output": "b"}'], "line 2: idx 3 appears twice"),
    ([""], "holds no predictions"),
])
def test_bad_predictions_fail_in_one_line(tmp_path, capsys, lines, message):
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["score", "--datasets", "gsm8k", "--predictions", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
    assert not (tmp_path / "r.json").exists()


def test_predictions_that_are_not_utf8_are_named_with_their_line_and_keep_the_old_result(tmp_path, capsys):
    good = _write_predictions(tmp_path / "good.jsonl", [{"idx": 0, "output": "The answer is 18."}])
    assert main(["score", "--datasets", "gsm8k", "--predictions", str(good), "--out", str(tmp_path / "r.json")]) == 0
    before = (tmp_path / "r.json").read_bytes()
    capsys.readouterr()
    (tmp_path / "p.jsonl").write_bytes(b'{"idx": 0, "output": "18"}\n{"idx": 1, "output": "caf\xe9"}\n')  # latin-1
    assert main(["score", "--datasets", "gsm8k", "--predictions", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err.strip()   # was "'utf-8' codec can't decode byte 0xe9 ..." without the file
    assert error == f"error: {tmp_path / 'p.jsonl'}, line 2: not UTF-8 text (byte 0xe9); valid: UTF-8 JSON Lines"
    assert (tmp_path / "r.json").read_bytes() == before


def test_a_missing_data_file_of_ones_own_task_names_the_task_file_not_the_shared_folder(tmp_path):
    (tmp_path / "t.yaml").write_text("name: x\npath: nope.jsonl\nquestion: '{q}'\nanswer: a\nanswer_type: number\n")
    with pytest.raises(MathDataError) as caught:
        load_items(load_task_file(tmp_path / "t.yaml"))
    assert str(caught.value) == (f"math dataset 'x': data file not found: {tmp_path / 'nope.jsonl'} "
                                 f"(the path key of {tmp_path / 't.yaml'})")   # was: "set BADAM_SHARED ..."


def test_score_usage_errors(tmp_path, capsys, svamp_task):
    predictions = _write_predictions(tmp_path / "p.jsonl", [{"idx": 0, "output": "The answer is 13."}])
    cases = [
        (["--predictions", str(predictions), "--out", str(tmp_path / "r.json")], "exactly one dataset"),
        (["--datasets", "gsm8k,math", "--predictions", str(predictions), "--out", "r.json"], "exactly one dataset"),
        (["--datasets", "gsm8k", "--task-file", str(svamp_task), "--predictions", str(predictions), "--out", "r.json"],
         "exactly one dataset"),
        (["--datasets", "gsm8k", "--predictions", str(tmp_path / "none.jsonl"), "--out", "r.json"],
         "predictions file not found"),
        (["--datasets", "gsm8k", "--predictions", str(predictions), "--out", str(predictions)],
         "must not be the predictions file"),
        (["--datasets", "gsm8k", "--predictions", str(predictions)], "the following arguments are required: --out"),
    ]
    for argv, message in cases:
        assert main(["score", *argv]) == 2, argv
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, (argv, error)
    assert json.loads(predictions.read_text()) == {"idx": 0, "output": "The answer is 13."}   # untouched
