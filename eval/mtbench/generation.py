"""Batched chat generation with a local Hugging Face causal LM (used for answers and for a local judge).

Conversations are rendered with the tokenizer's own chat template, left-padded into one batch and decoded up to the
first end-of-turn token, the way FastChat's gen_model_answer cuts at its template's stop tokens.
"""
from __future__ import annotations

import dataclasses

import torch

from eval.mtbench.data import MTBenchError

# gen_model_answer.py samples only when the temperature is above this; below it decodes greedily.
GREEDY_BELOW_TEMPERATURE = 1e-4


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
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return sorted(ids)


def _left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


@torch.inference_mode()
def generate_chat_batch(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int,
                        temperature: float = 0.0) -> BatchOutput:
    """Generate one reply per conversation in a single left-padded `generate` call.

    Sampling is pure temperature sampling (no top-k / top-p) so results do not depend on a model's shipped
    generation defaults; the caller seeds torch when it wants reproducible samples.
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise MTBenchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not conversations:
        return BatchOutput([], [])
    encoded = [prompt_ids(tokenizer, conv) for conv in conversations]
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    input_ids, attention_mask = _left_pad(encoded, pad_id)
    device = next(model.parameters()).device

    sample = temperature > GREEDY_BELOW_TEMPERATURE
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=pad_id,
                              eos_token_id=stops or None, num_beams=1,
                              **({"temperature": float(temperature), "top_k": 0, "top_p": 1.0} if sample else {}))
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            generation_config=config)
    generated = output[:, input_ids.shape[1]:].tolist()

    texts, counts = [], []
    stop_set = set(stops)
    for row in generated:
        end = next((i for i, tok in enumerate(row) if tok in stop_set), None)
        kept = row if end is None else row[:end]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
        counts.append(len(row) if end is None else end + 1)
    return BatchOutput(texts, counts)
