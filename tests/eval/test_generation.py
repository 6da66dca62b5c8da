"""The evaluators' shared generation path (eval/generation.py): static cache equals dynamic, stop strings checked on the
running rows every few steps, token counts and row ends, the generation config per sampling mode, and MT-bench's
FastChat sampling option (the model's own top_k / top_p)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GenerationConfig

from eval import generation
from eval.generation import StopOnStrings, check_generation_options, generate_batch
from eval.math.generation import generate_greedy, prepare_tokenizer
from eval.mtbench.generation import generate_chat_batch
from experiments.models import load_model

PROMPTS = ["### Instruction:\nWhat is 2 + 3?\n\n### Response:",
           "A farmer has 12 cows and buys 7 more. How many cows are there now?", "Q: 1 + 1?\nA:"]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("random:tiny-llama", dtype="fp32", device="cpu")
    return model, tokenizer


def test_static_cache_gives_the_dynamic_cache_result(tiny):
    model, tokenizer = tiny
    tok = prepare_tokenizer(tokenizer)
    dynamic = generate_greedy(model, tok, PROMPTS, max_new_tokens=6)
    static = generate_greedy(model, tok, PROMPTS, max_new_tokens=6, cache="static")   # prompts padded to 256
    assert static == dynamic and all(dynamic)
    encoded = [tok(p)["input_ids"] for p in PROMPTS]
    filled = generate_batch(model, tok, encoded[:2], max_new_tokens=6, cache="static", pad_rows_to=5)
    assert len(filled.token_ids) == 2 and tok.batch_decode(filled.token_ids, skip_special_tokens=True) == dynamic[:2]


def test_options_are_checked():
    check_generation_options("static", True, "model")
    for args, message in ((("paged", False), "valid choices: dynamic, static"),
                          (("dynamic", True), "compile needs the static cache"),
                          (("dynamic", False, "nucleus"), "valid choices: pure, model")):
        with pytest.raises(ValueError, match=message):
            check_generation_options(*args)


class _CharTokenizer:
    """Token i decodes to chr(ord('a') + i); 9 is '#' so that "##" can be a stop string."""
    pad_token_id, eos_token_id = 0, 1

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join("#" if t == 9 else chr(ord("a") + t) for t in row) for row in rows]


def test_stop_strings_are_checked_every_few_steps_on_running_rows():
    stopper = StopOnStrings(_CharTokenizer(), prompt_length=2, stop_strings=("##",), every=2)
    prompt = [[5, 5], [5, 5]]
    assert stopper(torch.tensor([p + [9] for p in prompt])).tolist() == [False, False]           # step 1: no check
    assert stopper(torch.tensor([prompt[0] + [9, 9], prompt[1] + [9, 3]])).tolist() == [True, False]   # step 2
    assert stopper(torch.tensor([prompt[0] + [9, 9, 4], prompt[1] + [9, 3, 9]])).tolist() == [True, False]
    assert stopper(torch.tensor([prompt[0] + [9, 9, 4, 4], prompt[1] + [9, 3, 9, 9]])).tolist() == [True, True]
    assert stopper.stopped_at == {0: 2, 1: 4}


class _ScriptedModel(torch.nn.Module):
    """Returns a fixed continuation and records the generation config it was given."""

    def __init__(self, continuation, generation_config=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuation = torch.tensor(continuation)
        self.generation_config = generation_config or GenerationConfig(eos_token_id=1)
        self.seen = None

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria):
        self.seen = generation_config
        full = torch.cat([input_ids, self.continuation], dim=1)
        for step in range(1, self.continuation.shape[1] + 1):
            for criterion in stopping_criteria:
                criterion(full[:, :input_ids.shape[1] + step])
        return full


def test_rows_end_at_eos_or_stop_string_and_tokens_are_counted():
    # row 0 ends with eos (1) at step 3; row 1 says "##" at steps 1-2 (seen at the check of step 2); row 2 runs on
    model = _ScriptedModel([[4, 5, 1, 0, 0, 0], [9, 9, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4]])
    out = generate_batch(model, _CharTokenizer(), [[5], [5, 5], [5]], max_new_tokens=6, stop_strings=("##",),
                         stop_check_every=2)
    assert out.token_ids == [[4, 5], [9, 9], [4, 4, 4, 4, 4, 4]] and out.new_tokens == [3, 2, 6]
    assert out.total_new_tokens == 11 and out.seconds >= 0
    assert model.seen.do_sample is False and model.seen.repetition_penalty == 1.0 and model.seen.max_new_tokens == 6


def test_generation_config_per_sampling_mode():
    shipped = GenerationConfig(eos_token_id=1, top_k=20, top_p=0.8, repetition_penalty=1.05, temperature=0.7)
    model = _ScriptedModel([[1]], shipped)
    generate_batch(model, _CharTokenizer(), [[5]], max_new_tokens=1, temperature=0.5, sampling="pure")
    assert (model.seen.do_sample, model.seen.temperature, model.seen.top_k, model.seen.top_p) == (True, 0.5, 0, 1.0)
    assert model.seen.repetition_penalty == 1.0                        # the shipped 1.05 is not used
    generate_batch(model, _CharTokenizer(), [[5]], max_new_tokens=1, temperature=0.5, sampling="model")
    assert (model.seen.temperature, model.seen.top_k, model.seen.top_p, model.seen.repetition_penalty) == \
        (0.5, 20, 0.8, 1.05)
    generate_batch(model, _CharTokenizer(), [[5]], max_new_tokens=1)                      # greedy
    assert (model.seen.do_sample, model.seen.repetition_penalty, model.seen.top_k) == (False, 1.0, 50)
    generate_batch(model, _CharTokenizer(), [[5]], max_new_tokens=1, cache="static", compile=True)
    assert model.seen.cache_implementation == "static" and model.seen.disable_compile is False
    generate_batch(model, _CharTokenizer(), [[5]], max_new_tokens=1, cache="static")
    assert model.seen.disable_compile is True
    assert shipped.top_k == 20 and shipped.temperature == 0.7          # the model's own config is not changed


def test_fastchat_sampling_uses_the_model_top_k(tiny, monkeypatch):
    model, tokenizer = tiny
    conversation = [[{"role": "user", "content": "Tell me a story."}]]
    greedy = generate_chat_batch(model, tokenizer, conversation, max_new_tokens=8).texts
    saved = model.generation_config.top_k
    try:
        model.generation_config.top_k = 1         # a checkpoint shipping top_k=1: FastChat's sampling is greedy
        torch.manual_seed(0)
        fastchat = generate_chat_batch(model, tokenizer, conversation, max_new_tokens=8, temperature=0.9,
                                       sampling="fastchat").texts
        torch.manual_seed(0)
        pure = generate_chat_batch(model, tokenizer, conversation, max_new_tokens=8, temperature=0.9).texts
    finally:
        model.generation_config.top_k = saved
    assert fastchat == greedy and pure != greedy


def test_mtbench_answers_record_the_sampling(tiny, tmp_path, monkeypatch):
    from eval.mtbench.answer import answer_info_path, generate_answers

    model, tokenizer = tiny
    seen = []
    real = generation.generate_batch
    monkeypatch.setattr("eval.mtbench.generation.generate_batch",
                        lambda *a, **kw: seen.append(kw["sampling"]) or real(*a, **kw))
    questions = [{"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Shorter."]}]
    info = generate_answers(model, tokenizer, questions, tmp_path / "a.jsonl", model_id="tiny", max_new_tokens=3,
                            sampling="fastchat", progress=False)
    assert seen == ["model", "model"] and info["sampling"] == "fastchat"
    assert json.loads(answer_info_path(tmp_path / "a.jsonl").read_text())["sampling"] == "fastchat"
    from eval.mtbench.data import MTBenchError
    with pytest.raises(MTBenchError, match="sampling must be one of pure, fastchat"):
        generate_answers(model, tokenizer, questions, tmp_path / "b.jsonl", model_id="t", sampling="nucleus")
