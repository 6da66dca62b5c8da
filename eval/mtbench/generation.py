"""Batched chat generation with a local Hugging Face causal LM (used for answers and for a local judge), on the
evaluators' shared fast path (eval/generation.py).

Conversations are rendered with the tokenizer's own chat template, left-padded into one batch and decoded up to the
first end-of-turn token, the way FastChat's gen_model_answer cuts at its template's stop tokens.

Sampling (temperature > 0), two settings:
- "pure" (default): pure temperature sampling, no top-k / top-p, so answers do not depend on a checkpoint's shipped
  generation defaults;
- "fastchat": what FastChat's gen_model_answer does: it calls `model.generate(do_sample=True, temperature=t)`, so the
  model's own generation config supplies top_k, top_p, repetition_penalty ... (transformers' defaults, top_k=50 and
  top_p=1.0, where the checkpoint sets none). Use it to reproduce FastChat's answers for a given checkpoint.
Below a temperature of 1e-4 both decode greedily, as FastChat does.
"""
from __future__ import annotations

import dataclasses

from eval.generation import GREEDY_BELOW_TEMPERATURE, end_token_ids, generate_batch
from eval.mtbench.data import MTBenchError

SAMPLING_SETTINGS = {"pure": "pure", "fastchat": "model"}   # MT-bench name -> eval.generation's sampling mode
__all__ = ["GREEDY_BELOW_TEMPERATURE", "SAMPLING_SETTINGS", "BatchOutput", "generate_chat_batch", "render_chat",
           "stop_token_ids"]


@dataclasses.dataclass
class BatchOutput:
    texts: list[str]
    new_tokens: list[int]  # tokens generated per conversation, end-of-turn token included when one was produced


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The prompt text for `messages` (role/content dicts) ending where the assistant's reply starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise MTBenchError("the tokenizer has no chat template; MT-bench needs a chat (instruct) model whose "
                           "tokenizer defines one")
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        # Some templates (e.g. Gemma's) refuse a system role; FastChat folds the system text into the first user
        # turn in the same situation (its Anthropic judge path), so do that instead of failing.
        if messages and messages[0]["role"] == "system" and len(messages) > 1:
            merged = [{"role": messages[1]["role"],
                       "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}] + messages[2:]
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        raise


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the prompt for `messages`: the tokenizer's chat template when it has one; otherwise the plain
    instruction template the harness trains with (experiments.templates), so a base model fine-tuned by the suite is
    asked in the format it learned (earlier answers end with EOS there, as in training)."""
    if getattr(tokenizer, "chat_template", None):
        # the template already wrote any BOS / special tokens, so tokenizing must not add them a second time
        return tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
    from experiments.templates import build_prompt

    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    chat = [m for m in messages if m["role"] != "system"]
    if not chat or chat[-1]["role"] != "user" or any(
            m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(chat)):
        raise MTBenchError("a conversation must alternate user and assistant turns and end with a user turn, got "
                           f"roles {[m['role'] for m in messages]}")
    history = [(chat[i]["content"], chat[i + 1]["content"]) for i in range(0, len(chat) - 1, 2)]
    return build_prompt(tokenizer, chat[-1]["content"], history=history, system=system, template="plain")


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus every eos the model's generation config lists (e.g. <|eot_id|>)."""
    return end_token_ids(model, tokenizer)


def generate_chat_batch(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int,
                        temperature: float = 0.0, sampling: str = "pure", cache: str = "dynamic",
                        compile: bool = False) -> BatchOutput:
    """Generate one reply per conversation in a single left-padded `generate` call; the caller seeds torch when it
    wants reproducible samples."""
    if max_new_tokens < 1:
        raise MTBenchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if sampling not in SAMPLING_SETTINGS:
        raise MTBenchError(f"unknown sampling {sampling!r}; valid choices: {', '.join(SAMPLING_SETTINGS)}")
    if not conversations:
        return BatchOutput([], [])
    encoded = [prompt_ids(tokenizer, conv) for conv in conversations]
    out = generate_batch(model, tokenizer, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                         sampling=SAMPLING_SETTINGS[sampling], cache=cache, compile=compile)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.token_ids]
    return BatchOutput(texts, out.new_tokens)
