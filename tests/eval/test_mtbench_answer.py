"""MT-bench answer generation on a tiny random Llama with a byte-level chat tokenizer (no downloads)."""
from __future__ import annotations

import json

import pytest
import torch

from eval.mtbench import answer as answer_module
from eval.mtbench.answer import answer_info_path, generate_answers
from eval.mtbench.data import MTBenchError, load_questions, read_jsonl
from eval.mtbench.generation import generate_chat_batch, render_chat

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Matmuls this small only lose to thread hand-offs, badly so when other test processes share the 2 cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # One token per byte: encodes any text without training a vocabulary.
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    net = LlamaForCausalLM(config).eval()
    net.generation_config.eos_token_id = tokenizer.eos_token_id
    net.generation_config.bos_token_id = None
    return net


@pytest.fixture(scope="module")
def questions():
    by_id = {q["question_id"]: q for q in load_questions()}
    return [by_id[81], by_id[111], by_id[131]]  # writing (T=0.7), math (0.0), extraction (0.0)


@pytest.fixture
def spy(monkeypatch):
    """Records every generate call the answer step makes (conversations and temperature), then runs it."""
    calls = []

    def recording(model, tokenizer, conversations, **kw):
        calls.append({"conversations": [list(c) for c in conversations], "temperature": kw["temperature"]})
        return generate_chat_batch(model, tokenizer, conversations, **kw)

    monkeypatch.setattr(answer_module, "generate_chat_batch", recording)
    return calls


def test_answers_in_fastchat_format_and_turn_two_sees_turn_one(model, tokenizer, questions, spy, tmp_path):
    path = tmp_path / "model_answer" / "tiny.jsonl"
    info = generate_answers(model, tokenizer, questions[1:], path, model_id="tiny", max_new_tokens=6,
                            temperature_mode="greedy", batch_size=2, progress=False)
    records = read_jsonl(path)
    assert [r["question_id"] for r in records] == [111, 131]
    for record, question in zip(records, questions[1:]):
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert record["model_id"] == "tiny" and isinstance(record["answer_id"], str) and record["answer_id"]
        assert len(record["choices"]) == 1 and record["choices"][0]["index"] == 0
        turns = record["choices"][0]["turns"]
        assert len(turns) == 2 and all(isinstance(t, str) for t in turns)
    # one batch of two questions: a turn-1 call and a turn-2 call whose conversations hold the turn-1 answers
    assert len(spy) == 2
    answers = {r["question_id"]: r["choices"][0]["turns"] for r in records}
    for conversation in spy[1]["conversations"]:
        qid = next(q["question_id"] for q in questions if q["turns"][0] == conversation[0]["content"])
        question = next(q for q in questions if q["question_id"] == qid)
        assert conversation == [{"role": "user", "content": question["turns"][0]},
                                {"role": "assistant", "content": answers[qid][0]},
                                {"role": "user", "content": question["turns"][1]}]
    assert info["questions_generated"] == 2 and info["new_tokens"] > 0
    assert json.loads(answer_info_path(path).read_text())["max_new_tokens"] == 6


def test_batched_greedy_equals_one_by_one(model, tokenizer, questions, tmp_path):
    kwargs = dict(model_id="tiny", max_new_tokens=6, temperature_mode="greedy", progress=False)
    generate_answers(model, tokenizer, questions, tmp_path / "batched.jsonl", batch_size=3, **kwargs)
    generate_answers(model, tokenizer, questions, tmp_path / "single.jsonl", batch_size=1, **kwargs)
    turns = [[r["choices"][0]["turns"] for r in read_jsonl(tmp_path / name)] for name in ("batched.jsonl",
                                                                                           "single.jsonl")]
    assert turns[0] == turns[1]  # left padding with an attention mask must not change greedy outputs


def test_rerun_skips_done_questions(model, tokenizer, questions, spy, tmp_path):
    path = tmp_path / "tiny.jsonl"
    kwargs = dict(model_id="tiny", max_new_tokens=4, temperature_mode="greedy", progress=False)
    generate_answers(model, tokenizer, questions[1:], path, **kwargs)
    first_ids = {r["question_id"]: r["answer_id"] for r in read_jsonl(path)}
    spy.clear()
    info = generate_answers(model, tokenizer, questions, path, **kwargs)
    assert info["questions_generated"] == 1 and info["questions_skipped_done"] == 2
    assert all(len(call["conversations"]) == 1 for call in spy)  # only question 81 was generated
    records = read_jsonl(path)
    assert [r["question_id"] for r in records] == [81, 111, 131]
    assert {r["question_id"]: r["answer_id"] for r in records if r["question_id"] != 81} == first_ids


def test_fastchat_temperatures_and_seeded_sampling(model, tokenizer, questions, spy, tmp_path):
    kwargs = dict(model_id="tiny", max_new_tokens=6, temperature_mode="fastchat", seed=3, progress=False)
    generate_answers(model, tokenizer, questions, tmp_path / "a.jsonl", **kwargs)
    temperatures = {conv[0]["content"]: call["temperature"] for call in spy for conv in call["conversations"]}
    assert temperatures[questions[0]["turns"][0]] == 0.7  # writing samples
    assert temperatures[questions[1]["turns"][0]] == temperatures[questions[2]["turns"][0]] == 0.0  # math, extraction
    generate_answers(model, tokenizer, questions, tmp_path / "b.jsonl", **kwargs)
    assert ([r["choices"] for r in read_jsonl(tmp_path / "a.jsonl")]
            == [r["choices"] for r in read_jsonl(tmp_path / "b.jsonl")])


def test_generation_stops_at_every_end_of_turn_token(model, tokenizer):
    conversation = [[{"role": "user", "content": "hi"}]]
    saved = model.lm_head.weight.detach().clone()
    try:
        with torch.no_grad():
            model.lm_head.weight.zero_()  # all logits equal: greedy picks token 0 at every step
        out = generate_chat_batch(model, tokenizer, conversation, max_new_tokens=5)
        assert out.new_tokens == [5] and out.texts == [tokenizer.decode([0] * 5).strip()]
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, 0]  # a second end-of-turn id
        out = generate_chat_batch(model, tokenizer, conversation, max_new_tokens=5)
        assert out.new_tokens == [1] and out.texts == [""]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)


def test_bad_options_and_missing_template(model, tokenizer, questions, tmp_path):
    with pytest.raises(MTBenchError, match="'fastchat'.*'greedy'"):
        generate_answers(model, tokenizer, questions, tmp_path / "x.jsonl", model_id="t", temperature_mode="hot")
    with pytest.raises(MTBenchError, match="max_new_tokens must be >= 1"):
        generate_answers(model, tokenizer, questions, tmp_path / "x.jsonl", model_id="t", max_new_tokens=0)
    assert not (tmp_path / "x.jsonl").exists()
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(MTBenchError, match="no chat template"):
            render_chat(tokenizer, [{"role": "user", "content": "hi"}])
    finally:
        tokenizer.chat_template = template


def test_cli_answer_for_a_run_directory(model, tokenizer, tmp_path, capsys):
    from eval.mtbench.__main__ import main

    run = tmp_path / "my_run"  # a training run directory as experiments/run.py leaves it, with the saved model
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text("run_name: my_run\n")
    assert main(["answer", "--model", str(run), "--end", "2", "--max-new-tokens", "3", "--temperature",
                 "greedy"]) == 0
    records = read_jsonl(run / "eval" / "mtbench" / "model_answer" / "my_run.jsonl")
    assert [r["question_id"] for r in records] == [81, 82] and records[0]["model_id"] == "my_run"
    assert json.loads((run / "eval" / "mtbench" / "model_answer" / "my_run.info.json").read_text())["dtype"] \
        == "torch.float32"

    capsys.readouterr()
    assert main(["answer", "--model", str(tmp_path / "no-such-model"), "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: could not load model")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "summary.json").write_text("{}")
    assert main(["answer", "--model", str(tmp_path / "empty_run")]) == 2
    assert "holds no saved model" in capsys.readouterr().err


def test_system_prompt_folded_into_user_turn_when_template_refuses_it(tokenizer):
    template = tokenizer.chat_template
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}"
                               "{% endif %}" + CHATML)
    try:
        text = render_chat(tokenizer, [{"role": "system", "content": "BE FAIR"}, {"role": "user", "content": "Q"}])
    finally:
        tokenizer.chat_template = template
    assert text == "<|im_start|>user\nBE FAIR\n\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_local_hf_judge_writes_judgments(model, tokenizer, questions, monkeypatch, tmp_path):
    from eval.mtbench import judge as judge_module
    from eval.mtbench.data import default_reference_file, load_answers
    from eval.mtbench.judge import LocalHFJudge, judge_answers

    seen = []

    def recording(model, tokenizer, conversations, **kw):
        seen.extend(conversations)
        return generate_chat_batch(model, tokenizer, conversations, **kw)

    monkeypatch.setattr(judge_module, "generate_chat_batch", recording)
    answers = {q["question_id"]: {"question_id": q["question_id"], "choices": [{"index": 0, "turns": ["a", "b"]}]}
               for q in questions[:2]}
    out = tmp_path / "tiny-judge_single.jsonl"
    stats = judge_answers({"toy": answers}, questions[:2], LocalHFJudge(model, tokenizer, name="tiny-judge",
                                                                       max_new_tokens=3, batch_size=4),
                          out, reference_answers=load_answers(default_reference_file()), progress=False)
    records = read_jsonl(out)
    assert stats["judged"] == 4 and len(records) == 4 and len(seen) == 4
    assert {tuple(r["judge"]) for r in records} == {("tiny-judge", "single-v1"), ("tiny-judge", "single-math-v1"),
                                                    ("tiny-judge", "single-v1-multi-turn"),
                                                    ("tiny-judge", "single-math-v1-multi-turn")}
    assert all(conv[0]["role"] == "system" and conv[1]["content"] == r["user_prompt"]
               for conv, r in zip(seen, records))
    assert all(isinstance(r["score"], (int, float)) for r in records)


def test_a_tokenizer_without_chat_template_is_prompted_in_the_training_format(tokenizer):
    """A base model fine-tuned by the suite learned the plain template: MT-bench asks it in that format, earlier
    turns included exactly as tokenize_records renders a conversation with history."""
    from eval.mtbench.generation import prompt_ids
    from experiments.templates import conversation_segments

    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        messages = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"}]
        ids = prompt_ids(tokenizer, messages)
        segments = conversation_segments(tokenizer, (None, [("Q1", "A1"), ("Q2", "A2")]), template="plain")
        expected = [t for seg, _ in segments[:-1] for t in seg]
        assert ids == expected
        assert "### Instruction:\nQ2\n\n### Response:\n" in tokenizer.decode(ids)
        with pytest.raises(MTBenchError, match="alternate user and assistant"):
            prompt_ids(tokenizer, [{"role": "assistant", "content": "A"}])
    finally:
        tokenizer.chat_template = template


def test_evaluate_runs_answers_saved_runs_and_the_base_model(model, tokenizer, tmp_path):
    """The evaluator protocol: runs without a saved model are skipped; base=True answers with the starting model in a
    <group>/<stem>-base run whose summary says method "base" (the tables' untuned row)."""
    from eval.mtbench import evaluate_runs

    base_folder = tmp_path / "base_model"
    model.save_pretrained(base_folder)
    tokenizer.save_pretrained(base_folder)
    group = tmp_path / "paper_mtbench_tiny"
    saved, unsaved = group / "tiny-adam-s0", group / "tiny-adam-s1"
    model.save_pretrained(saved / "model")
    tokenizer.save_pretrained(saved / "model")
    for run, name in ((saved, "tiny-adam-s0"), (unsaved, "tiny-adam-s1")):
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text(json.dumps({"status": "ok", "run_name": name, "method": "adam",
                                                       "model": str(base_folder), "config": {"model": {}}}))
    note = evaluate_runs([saved, unsaved], base=True, end=1, max_new_tokens=2, temperature="greedy")
    assert note == "; answered 1 run(s) and 1 base model(s)"
    assert read_jsonl(saved / "eval" / "mtbench" / "model_answer" / "tiny-adam-s0.jsonl")
    assert not (unsaved / "eval").exists()
    base_run = group / "tiny-base"
    summary = json.loads((base_run / "summary.json").read_text())
    assert summary["method"] == "base" and summary["status"] == "ok" and summary["steps"] == 0
    assert summary["model"] == str(base_folder) and summary["note"].startswith("untuned base model")
    assert read_jsonl(base_run / "eval" / "mtbench" / "model_answer" / "tiny-base.jsonl")


def test_cli_local_judge_grades_several_run_directories_loading_the_judge_once(model, tokenizer, tmp_path,
                                                                                monkeypatch, capsys):
    from eval.mtbench.__main__ import main

    loads = []
    monkeypatch.setattr(answer_module, "load_model_for_answers",
                        lambda source, **kw: loads.append(source) or (model, tokenizer))
    runs = [tmp_path / "g" / "m-adam-s0", tmp_path / "g" / "m-base"]
    for run in runs:
        folder = run / "eval" / "mtbench" / "model_answer"
        folder.mkdir(parents=True)
        (folder / f"{run.name}.jsonl").write_text(json.dumps(
            {"question_id": 81, "answer_id": "a", "model_id": run.name,
             "choices": [{"index": 0, "turns": ["a", "b"]}]}) + "\n")
    judge = ["judge", "--local-judge", "qwen2.5-coder-1.5b-instruct", "--question-ids", "81", "--turns", "1",
             "--max-tokens", "3", "--batch-size", "8"]
    assert main([*judge, "--run-dir", *map(str, runs), str(tmp_path / "g" / "no-answers")]) == 2
    assert loads == [] and "no answer files in" in capsys.readouterr().err   # checked before the judge loads
    assert main([*judge, "--run-dir", *map(str, runs)]) == 0
    assert loads == ["qwen2.5-coder-1.5b-instruct"]
    for run in runs:
        out = run / "eval" / "mtbench"
        scores = json.loads((out / "scores_qwen2.5-coder-1.5b-instruct.json").read_text())
        assert scores["judge"] == "qwen2.5-coder-1.5b-instruct" and list(scores["models"]) == [run.name]
        # relative to the scores file: the run directory can move (judged on a GPU machine, copied into results/)
        assert scores["judgment_file"] == "model_judgment/qwen2.5-coder-1.5b-instruct_single.jsonl"
        records = read_jsonl(out / "model_judgment" / "qwen2.5-coder-1.5b-instruct_single.jsonl")
        assert [(r["model"], r["judge"][0]) for r in records] == [(run.name, "qwen2.5-coder-1.5b-instruct")]
    assert main([*judge, "--run-dir", *map(str, runs), "--answers", "x.jsonl"]) == 2
    assert "give one --run-dir with it" in capsys.readouterr().err
