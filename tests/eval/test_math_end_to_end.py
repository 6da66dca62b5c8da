"""eval.math end to end with a tiny random Llama and the real SmolLM2 tokenizer: all six datasets, saved samples,
token counts, resume after an interruption, settings checks, left-padded batching, and the CLI's one-line errors
with their exit status (2: usage, 1: run failure)."""
from __future__ import annotations

import json
import statistics

import pytest

import eval.math.runner as runner
from eval.math import DATASETS, build_prompt, evaluate_math, evaluate_runs, load_items, select_subset
from eval.math.__main__ import main
from eval.generation import BatchOutput
from eval.math.generation import generate_greedy, prepare_tokenizer
from eval.math.scoring import score_output
from tests.eval.math_stubs import NoModel, tokenizer_stub
from experiments.models import load_model

MODEL_NAME = "random:tiny-llama"
FAST = {"limit": 5, "batch_size": 5, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model(MODEL_NAME, dtype="fp32", device="cpu")
    return model, tokenizer


def _scores(results):
    return {name: (d["accuracy_pct"], d["correct"], d["total"]) for name, d in results["datasets"].items()}


def _samples(out_dir, name):
    """Saved records without their timing (which differs when an item is generated again)."""
    records = [json.loads(line) for line in (out_dir / "math" / f"{name}.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "generation_s"} for record in records]


def test_all_datasets_end_to_end_then_resume(tiny, tmp_path):
    model, tokenizer = tiny
    results = evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, **FAST)
    saved = json.loads((tmp_path / "math.json").read_text())
    assert saved["datasets"] == results["datasets"] and list(saved["datasets"]) == list(DATASETS)
    assert saved["generated_now"] == 30 and saved["generation_s"] > 0 and saved["scoring"] == "mammoth"
    assert saved["paper_average_pct"] == pytest.approx(saved["average_accuracy_pct"])
    assert saved["new_tokens"] > 0 and saved["tokens_per_s"] > 0
    for name in DATASETS:
        entry = saved["datasets"][name]
        records = _samples(tmp_path, name)
        expected_items = select_subset(load_items(name), 5)
        assert [r["index"] for r in records] == [item.index for item in expected_items]
        for record, item in zip(records, expected_items):
            assert {"question", "prompt", "generation", "extracted", "gold", "correct"} <= set(record)
            assert record["gold"] == item.gold and record["prompt"] == build_prompt(item, "alpaca")
            verdict = score_output(item, record["generation"], "mammoth")
            assert record["correct"] == verdict["correct"] and record["extracted"] == verdict["extracted"]
            assert 1 <= record["new_tokens"] <= FAST["max_new_tokens"]
        assert entry["total"] == 5 and entry["correct"] == sum(r["correct"] for r in records)
        assert entry["accuracy_pct"] == pytest.approx(100 * entry["correct"] / 5)
        assert entry["new_tokens"] == sum(r["new_tokens"] for r in records)
        # generation_s is written rounded to 0.01 s: the rate must lie within what that rounding allows
        low, high = (entry["new_tokens"] / (entry["generation_s"] + d) for d in (0.005, -0.005))
        assert low * 0.999 <= entry["tokens_per_s"] <= (high * 1.001 if entry["generation_s"] > 0.005 else 1e12)
    assert saved["average_accuracy_pct"] == pytest.approx(
        statistics.fmean(d["accuracy_pct"] for d in saved["datasets"].values()))

    # A second run with the same settings generates nothing and leaves the samples as they were.
    before = {name: _samples(tmp_path, name) for name in DATASETS}
    again = evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, **FAST)
    assert again["generated_now"] == 0 and _scores(again) == _scores(results)
    assert all(entry["generated_now"] == 0 for entry in again["datasets"].values())
    assert {name: _samples(tmp_path, name) for name in DATASETS} == before

    # Interrupted run: two records lost, and the last line cut mid-record by a kill.
    path = tmp_path / "math" / "gsm8k.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    with pytest.warns(UserWarning, match="truncated last line"):
        resumed = evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, datasets=["gsm8k"],
                                **FAST)
    assert resumed["generated_now"] == 3
    assert _samples(tmp_path, "gsm8k") == before["gsm8k"]     # greedy: the regenerated items come out the same
    assert list(resumed["datasets"]) == list(DATASETS)        # the other datasets' results are kept in math.json


def test_resume_refuses_other_settings(tiny, tmp_path):
    model, tokenizer = tiny
    evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, datasets=["sat"], limit=2,
                  max_new_tokens=3)
    with pytest.raises(ValueError, match="--overwrite"):
        evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, datasets=["sat"], limit=2,
                      max_new_tokens=4)
    redone = evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, datasets=["sat"], limit=2,
                           max_new_tokens=4, overwrite=True)
    assert redone["generated_now"] == 2 and redone["settings"]["max_new_tokens"] == 4


def test_generations_are_routed_to_their_items(monkeypatch, tmp_path):
    """With an oracle in place of the model every item scores in both modes: prompts sorted by length for batching
    still get their own answers back, for every dataset's gold format."""
    gold_by_prompt = {build_prompt(item, "alpaca"): item.gold
                      for name in DATASETS for item in select_subset(load_items(name), 7)}
    tokenizer = tokenizer_stub()

    def oracle(model, tok, encoded, options):
        texts = [f"Some reasoning with 3 numbers 4.\nThe answer is {gold_by_prompt[tok.texts[ids[0]]]}."
                 for ids in encoded]
        return texts, BatchOutput([[1, 2]] * len(encoded), [2] * len(encoded), 0.01)

    monkeypatch.setattr(runner, "generate_encoded", oracle)
    for scoring in ("mammoth", "strict"):
        results = evaluate_math(NoModel(), tokenizer, out_dir=tmp_path, model_name="oracle", limit=7, batch_size=3,
                                scoring=scoring)
        assert {name: entry["accuracy_pct"] for name, entry in results["datasets"].items()} == \
            {n: 100.0 for n in DATASETS}
        assert results["paper_average_pct"] == 100.0 and results["scoring"] == scoring
    assert (tmp_path / "math.json").is_file() and (tmp_path / "math_strict.json").is_file()


def test_left_padded_batch_matches_single_prompts(tiny):
    model, tokenizer = tiny
    tok = prepare_tokenizer(tokenizer)
    prompts = ["### Instruction:\nWhat is 2 + 3?\n\n### Response:",
               "### Instruction:\nA farmer has 12 cows and buys 7 more. How many cows?\n\n### Response:",
               "Q: 1 + 1?\nA:"]
    assert len({len(tok(p)["input_ids"]) for p in prompts}) == 3       # really different lengths: padding happens
    batched = generate_greedy(model, tok, prompts, max_new_tokens=5)
    single = [generate_greedy(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single and all(text for text in batched)


def test_chat_prompt_style(tiny, tmp_path):
    model, tokenizer = tiny
    item = load_items("aqua")[0]
    prompt = build_prompt(item, "chat", tokenizer)
    assert "<|im_start|>user\n" + item.question in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "The answer is (X)" in prompt
    results = evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, datasets=["aqua"], limit=2,
                            max_new_tokens=3, prompt_style="chat")
    assert results["settings"]["prompt_style"] == "chat" and results["datasets"]["aqua"]["total"] == 2


def test_cli_on_a_run_directory(tiny, tmp_path, capsys):
    """A run directory: the model saved under <run>/model is loaded for real, results land in <run>/eval."""
    model, tokenizer = tiny
    run = tmp_path / "run"
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "summary.json").write_text("{}")
    assert main(["--model", str(run), "--datasets", "sat,numglue", "--limit", "2", "--batch-size", "2",
                 "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr().out
    assert "sat" in printed and "numglue" in printed and "average" in printed
    saved = json.loads((run / "eval" / "math.json").read_text())
    assert list(saved["datasets"]) == ["numglue", "sat"] and saved["environment"]["device"] == "cpu"
    assert saved["settings"]["model"] == str(run) and (run / "eval" / "math" / "sat.jsonl").is_file()
    # experiments/run_all.py's hook: the profile's options (datasets, limit, ...) go through to evaluate_source
    note = evaluate_runs([run], datasets="gsm8k", limit=2, batch_size=2, max_new_tokens=3)
    assert note.startswith("; math run: ") and "over gsm8k" in note
    assert list(json.loads((run / "eval" / "math.json").read_text())["datasets"]) == ["gsm8k", "numglue", "sat"]


def test_cli_errors_are_one_line(monkeypatch, tmp_path, capsys):
    def error_line():
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and "\n" not in error
        return error

    assert main(["--model", str(tmp_path / "no_such_model"), "--datasets", "sat", "--out", str(tmp_path)]) == 1
    assert error_line().startswith("error: cannot load model")
    (tmp_path / "config.yaml").write_text("{}")                      # a run directory without a saved model
    assert main(["--model", str(tmp_path), "--datasets", "sat"]) == 1
    assert "has no saved model" in error_line()
    assert main(["--model", MODEL_NAME, "--threads", "0"]) == 2
    assert "--threads must be >= 1" in error_line()
    assert main(["--model", MODEL_NAME, "--datasets", "sat,svamp"]) == 2
    assert "valid choices: gsm8k, math, aqua, numglue, sat, mmlu_math" in error_line()
    assert main(["--model", MODEL_NAME, "--scoring", "lenient"]) == 2
    assert "invalid choice: 'lenient'" in error_line()
    assert main(["--model", MODEL_NAME, "--compile"]) == 2
    assert "compile needs the static cache" in error_line()
    assert main(["--model", MODEL_NAME, "--task-file", str(tmp_path / "none.yaml")]) == 2
    assert "task file not found" in error_line()
    monkeypatch.setenv("BADAM_SHARED", str(tmp_path))
    assert main(["--model", MODEL_NAME, "--datasets", "gsm8k", "--out", str(tmp_path)]) == 1
    assert "data file not found" in error_line()


def test_a_cut_short_results_file_is_named_and_left_as_it_is(tiny, tmp_path):
    """A math.json cut short (a full disk, a hand edit) was a bare JSONDecodeError; read as empty it would also drop
    the datasets of earlier calls from the merged file. Now one MathDataError naming it, the file untouched."""
    from eval.math.readers import MathDataError

    model, tokenizer = tiny
    options = {**FAST, "datasets": ["gsm8k"]}
    evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, **options)
    text = (tmp_path / "math.json").read_text()
    (tmp_path / "math.json").write_text(text[: len(text) // 2])
    with pytest.raises(MathDataError, match=r"math.json is not valid JSON \(.*a half-written file\?\); move it away"):
        evaluate_math(model, tokenizer, out_dir=tmp_path, model_name=MODEL_NAME, **options)
    assert (tmp_path / "math.json").read_text() == text[: len(text) // 2]
