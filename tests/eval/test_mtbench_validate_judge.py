"""python -m eval.mtbench validate-judge with a stand-in judge model (no weights): it goes through the real local-judge
path (DeferredJudge -> LocalHFJudge -> generate_chat_batch, the only function replaced) and reads ratings the test
chose per reference model from the answers it wrote, so every correlation below is known in advance."""
from __future__ import annotations

import gzip
import json
import re
import statistics

import pytest

from eval.mtbench import answer as answer_module
from eval.mtbench import judge as judge_module
from eval.mtbench.__main__ import main
from eval.mtbench.data import default_data_dir, load_answers, read_jsonl
from eval.mtbench.generation import BatchOutput
from eval.mtbench.validation import (REFERENCE_SCORES_FILE, build_validation, format_markdown,
                                     load_reference_scores)

JUDGE = "fake-judge"
QUESTION_IDS = (81, 111, 131)   # writing, math (graded against the reference answer), extraction
# this judge's rating of every answer of each model: vicuna and alpaca swapped against GPT-4's order
RATINGS = {"gpt-4": 9, "gpt-3.5-turbo": 8, "vicuna-7b-v1.3": 5, "alpaca-13b": 6, "llama-13b": 2}
PUBLISHED = {"gpt-4": 8.99, "gpt-3.5-turbo": 7.94, "vicuna-7b-v1.3": 6.00, "alpaca-13b": 4.53, "llama-13b": 2.61}


class FakeJudgeModel:
    """What LocalHFJudge needs of a model; the replies come from the replaced generate_chat_batch."""

    def eval(self):
        return self


@pytest.fixture
def answers_dir(tmp_path):
    """Answer files of the five reference models whose text names the model, so the stand-in judge knows whose
    answer it grades."""
    folder = tmp_path / "model_answer"
    folder.mkdir()
    for model in RATINGS:
        (folder / f"{model}.jsonl").write_text("".join(json.dumps(
            {"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model,
             "choices": [{"index": 0, "turns": [f"ANSWER-OF<{model}> turn 1", f"ANSWER-OF<{model}> turn 2"]}]}) + "\n"
            for qid in QUESTION_IDS))
    return folder


@pytest.fixture
def fake_judge(monkeypatch):
    """Counts model loads and judged conversations; llama-13b's turn-2 judgments give no rating; `stop_after`
    conversations, when set, interrupt the run as a timeout would."""
    state = {"loads": 0, "judged": 0, "stop_after": None}

    def load(source, **kwargs):
        state["loads"] += 1
        return FakeJudgeModel(), object()

    def generate(model, tokenizer, conversations, **kwargs):
        if state["stop_after"] is not None and state["judged"] >= state["stop_after"]:
            raise KeyboardInterrupt("stopped, as by timeout")
        texts = []
        for conversation in conversations:
            prompt = conversation[-1]["content"]
            model_name = re.search(r"ANSWER-OF<([^>]+)>", prompt).group(1)
            multi_turn = "turn 2" in prompt
            texts.append("The answer rambles on." if model_name == "llama-13b" and multi_turn
                         else f"Fair. Rating: [[{RATINGS[model_name]}]]")
        state["judged"] += len(conversations)
        return BatchOutput(texts, [5] * len(texts))

    monkeypatch.setattr(answer_module, "load_model_for_answers", load)
    monkeypatch.setattr(judge_module, "generate_chat_batch", generate)
    return state


def _validate(out, answers_dir, *extra):
    return main(["validate-judge", "--local-judge", JUDGE, "--out", str(out), "--answers-dir", str(answers_dir),
                 "--question-ids", *map(str, QUESTION_IDS), "--batch-size", "4", "--max-tokens", "8", *extra])


def test_published_scores_are_data_with_a_source_each_and_the_shared_answers_match_them():
    reference = load_reference_scores()
    assert {m: e["score"] for m, e in reference["models"].items()} == PUBLISHED
    assert all(reference["models"][m]["source"] in reference["sources"] for m in PUBLISHED)
    assert reference["label"] == "published, GPT-4 judge" and REFERENCE_SCORES_FILE.suffix == ".json"
    for model in PUBLISHED:   # the official answer files validate-judge reads by default: 80 questions, 2 turns
        answers = load_answers(default_data_dir() / "model_answer" / f"{model}.jsonl")
        assert len(answers) == 80 and all(len(a["choices"][0]["turns"]) == 2 for a in answers.values())


def test_validation_resumes_and_measures_the_agreement(tmp_path, answers_dir, fake_judge, capsys):
    out = tmp_path / "validation"
    fake_judge["stop_after"] = 12     # three batches of 4 of the 30 items, then "killed"
    with pytest.raises(KeyboardInterrupt):
        _validate(out, answers_dir)
    judgment_file = out / "model_judgment" / f"{JUDGE}_single.jsonl"
    assert len(read_jsonl(judgment_file)) == 12 and not (out / "judge_validation.json").exists()

    fake_judge["stop_after"] = None
    assert _validate(out, answers_dir) == 0
    assert fake_judge["judged"] == 30 and fake_judge["loads"] == 2   # only the 18 left were judged
    records = read_jsonl(judgment_file)
    assert len(records) == 30 and len({(r["model"], r["question_id"], r["turn"]) for r in records}) == 30
    assert {tuple(r["judge"]) for r in records if r["question_id"] == 111} == {
        (JUDGE, "single-math-v1"), (JUDGE, "single-math-v1-multi-turn")}   # the reference-answer prompts

    doc = json.loads((out / "judge_validation.json").read_text())
    rows = {row["model"]: row for row in doc["models"]}
    assert rows["gpt-4"]["score"] == 9 and rows["gpt-4"]["rated"] == 6 and rows["gpt-4"]["unrated_share"] == 0
    assert rows["llama-13b"]["rated"] == 3 and rows["llama-13b"]["judged"] == 6
    assert rows["llama-13b"]["unrated_share"] == 0.5 and doc["unrated_share"] == pytest.approx(3 / 30)
    assert rows["alpaca-13b"]["published"]["score"] == 4.53
    assert rows["alpaca-13b"]["published"]["label"] == "published, GPT-4 judge"
    assert "lmsys.org/blog/2023-06-22-leaderboard" in rows["alpaca-13b"]["published"]["source"]
    agree = doc["agreement"]
    # one pair of ten swapped: tau = (9 - 1) / 10; rho = 1 - 6 * (1 + 1) / (5 * 24)
    assert agree["kendall_tau"] == pytest.approx(0.8) and agree["spearman_rho"] == pytest.approx(0.9)
    ours, published = zip(*((RATINGS[m], PUBLISHED[m]) for m in sorted(PUBLISHED)))
    assert agree["pearson_r"] == pytest.approx(statistics.correlation(ours, published))
    assert agree["kendall_p"] == pytest.approx(2 * 5 / 120)   # exact: 5 of the 120 orders have <= 1 swap, per side
    assert agree["swapped_pairs"] == [["vicuna-7b-v1.3", "alpaca-13b"]] and doc["same_order"] is False
    assert doc["complete"] and doc["questions"] == 3 and doc["settings"]["local_judge"] == JUDGE

    markdown = (out / "judge_validation.md").read_text()
    assert (f"**Verdict: {JUDGE} orders the 5 reference models as GPT-4 did: no (Kendall tau=0.80, Spearman "
            "rho=0.90, 9 of 10 pairs in GPT-4's order; swapped or tied: vicuna-7b-v1.3 / alpaca-13b).**") in markdown
    assert "| llama-13b | 2.00 ± 0.00 | 3 of 6 | 50% | 2.61 (LLaMA-13B) |" in markdown
    assert f"{JUDGE} orders the 5 reference models as GPT-4 did: no" in capsys.readouterr().out

    # a third call finds everything judged: the judge is never loaded, the validation is written again
    (out / "judge_validation.json").unlink()
    assert _validate(out, answers_dir) == 0
    assert fake_judge["loads"] == 2 and fake_judge["judged"] == 30
    assert json.loads((out / "judge_validation.json").read_text())["agreement"] == agree


def test_committed_gzipped_judgments_are_restored_and_not_judged_again(tmp_path, answers_dir, fake_judge, capsys):
    """results/ keeps a large judgment file as <name>.jsonl.gz: rerunning validate-judge or show on that folder
    restores it in place and judges nothing again."""
    out = tmp_path / "validation"
    assert _validate(out, answers_dir) == 0 and fake_judge["judged"] == 30
    judgment_file = out / "model_judgment" / f"{JUDGE}_single.jsonl"
    original = judgment_file.read_bytes()
    with gzip.open(judgment_file.with_name(judgment_file.name + ".gz"), "wb") as fh:
        fh.write(original)
    judgment_file.unlink()
    (out / "judge_validation.json").unlink()
    assert _validate(out, answers_dir) == 0
    assert fake_judge["judged"] == 30 and fake_judge["loads"] == 1        # nothing judged a second time
    assert judgment_file.read_bytes() == original and json.loads((out / "judge_validation.json").read_text())
    judgment_file.unlink()
    capsys.readouterr()
    for name in (judgment_file, judgment_file.with_name(judgment_file.name + ".gz")):   # either name; read-only
        assert main(["show", "--judgment", str(name)]) == 0 and "llama-13b" in capsys.readouterr().out
    assert not judgment_file.exists()                                                    # show unpacks nothing there
    assert main(["show", "--judgment", str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _scores(overall: dict[str, float | None], unrated: int = 0) -> dict:
    return {"judge": JUDGE, "models": {m: {"overall": v, "overall_se": 0.2, "n_scored": 0 if v is None else 160,
                                           "n_unparseable": 160 if v is None else unrated} for m, v in overall.items()}}


def _doc(overall: dict[str, float | None], tmp_path, unrated: int = 0) -> dict:
    files = {}
    for model in PUBLISHED:
        files[model] = tmp_path / f"{model}.jsonl"
        files[model].write_text("{}\n")
    return build_validation(_scores(overall, unrated), load_reference_scores(), answer_files=files, questions=80,
                            turns=(1, 2))


def test_the_verdict_says_yes_only_for_gpt4s_order_and_cannot_tell_without_ratings(tmp_path):
    same = _doc({"gpt-4": 7.0, "gpt-3.5-turbo": 6.9, "vicuna-7b-v1.3": 5.0, "alpaca-13b": 4.0, "llama-13b": 1.0},
                tmp_path, unrated=40)
    assert same["verdict"].startswith("orders the 5 reference models as GPT-4 did: yes (Kendall tau=1.00, "
                                      "Spearman rho=1.00, 10 of 10 pairs in GPT-4's order)")
    assert same["same_order"] is True and same["unrated_share"] == pytest.approx(40 / 200)
    assert "| gpt-4 | 7.00 ± 0.20 | 160 of 200 | 20% | 8.99 (GPT-4) |" in format_markdown(same)
    tied = _doc({**{m: 5.0 for m in PUBLISHED}}, tmp_path)
    assert tied["verdict"].endswith("no (it gave every rated model the same score)") and not tied["same_order"]
    unrated = _doc({"gpt-4": 8.0, "gpt-3.5-turbo": 7.0, "vicuna-7b-v1.3": None, "alpaca-13b": None,
                    "llama-13b": None}, tmp_path)
    assert unrated["verdict"] == ("orders the 5 reference models as GPT-4 did: cannot tell (only 2 of 5 got a "
                                  "rating)")
    assert unrated["same_order"] is None and "| vicuna-7b-v1.3 | no rating | 0 of 160 | 100% |" in \
        format_markdown(unrated)


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, answers_dir, capsys):
    out = tmp_path / "validation"
    assert _validate(out, answers_dir, "--local-judge", "no-such-judge") == 2   # the real loader refuses it
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]   # beside the progress bar
    assert len(errors) == 1 and "model source 'no-such-judge' not found" in errors[0]
    assert "an alias in [" in errors[0] and "qwen2.5-coder-1.5b-instruct" in errors[0]
    assert not (out / "model_judgment" / "no-such-judge_single.jsonl").exists()
    (answers_dir / "llama-13b.jsonl").unlink()
    assert _validate(out, answers_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: MT-bench answer file of reference model 'llama-13b' not found: "
                   f"{answers_dir / 'llama-13b.jsonl'}"]
    broken = tmp_path / "scores.json"
    broken.write_text(json.dumps({"sources": {}, "models": {"a": {"score": "high"}}}))
    assert _validate(out, answers_dir, "--reference-scores", str(broken)) == 2
    assert "must list at least 3 models" in capsys.readouterr().err


def test_without_scipy_the_agreement_says_the_judgments_are_kept(monkeypatch):
    import sys

    from eval.mtbench.data import MTBenchError
    from eval.mtbench.validation import agreement

    monkeypatch.setitem(sys.modules, "scipy", None)   # as on a GPU machine without it: import fails
    with pytest.raises(MTBenchError, match=r"needs scipy .*the judgments are saved: run the same command"):
        agreement(dict(RATINGS), PUBLISHED)


def test_a_second_judge_or_another_question_selection_keeps_what_is_there(tmp_path, answers_dir, fake_judge, capsys):
    """Another judge's call into the same --out replaced the first judge's judge_validation.json; a call on a subset
    of the questions already judged counted every judgment of the file (questions 1, judged 6: 'not complete')."""
    out = tmp_path / "validation"
    assert _validate(out, answers_dir) == 0
    first = (out / "judge_validation.json").read_bytes()
    loads = fake_judge["loads"]
    capsys.readouterr()
    assert _validate(out, answers_dir, "--judge-model", "other-judge") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is the validation of judge '{JUDGE}', which this call for 'other-judge' would " \
                              "replace; give each judge its own --out" in err[0]
    assert (out / "judge_validation.json").read_bytes() == first and fake_judge["loads"] == loads
    assert not (out / "model_judgment" / "other-judge_single.jsonl").exists()
    assert main(["validate-judge", "--local-judge", JUDGE, "--out", str(out), "--answers-dir", str(answers_dir),
                 "--question-ids", "81", "--turns", "1"]) == 0
    doc = json.loads((out / "judge_validation.json").read_text())
    assert fake_judge["loads"] == loads and doc["complete"] and doc["questions"] == 1 and doc["turns"] == [1]
    assert {row["model"]: (row["judged"], row["rated"]) for row in doc["models"]} == {m: (1, 1) for m in RATINGS}
