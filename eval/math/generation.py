"""Batched greedy generation with left padding (transformers `generate`)."""
from __future__ import annotations

import copy

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .prompts import STOP_STRINGS, cut_at_stop_strings

# How many trailing tokens the stop check decodes: enough to hold the longest stop string whatever the tokenizer.
_STOP_WINDOW_TOKENS = 16


class StopOnStrings(StoppingCriteria):
    """Ends each row once its continuation contains one of `stop_strings`.

    transformers' own `stop_strings` option precomputes tables over the whole vocabulary on every `generate` call
    (seconds for a 49k vocabulary, more than the generation itself for small models); decoding the last few tokens
    of each row per step costs microseconds.
    """

    def __init__(self, tokenizer, prompt_length: int, stop_strings=STOP_STRINGS):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop_strings = tuple(stop_strings)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length:]
        window = new[:, -_STOP_WINDOW_TOKENS:].tolist()
        texts = self.tokenizer.batch_decode(window, skip_special_tokens=True)
        done = [any(stop in text for stop in self.stop_strings) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def prepare_tokenizer(tokenizer):
    """A copy of the tokenizer set up for batched generation: left padding (the continuation of every row starts at
    the same position) and a pad token (the EOS token when the model defines none)."""
    tok = copy.copy(tokenizer)
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; batched generation needs one")
        tok.pad_token = tok.eos_token
    return tok


def prompt_lengths(tokenizer, prompts: list[str], add_special_tokens: bool) -> list[int]:
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]


@torch.inference_mode()
def generate_greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                    add_special_tokens: bool = True, use_stop_strings: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (one batch), decoded without special tokens and cut at the stop strings.
    `tokenizer` must come from `prepare_tokenizer`."""
    if tokenizer.padding_side != "left":
        raise ValueError("generate_greedy needs a left-padding tokenizer (use prepare_tokenizer)")
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(device)
    prompt_length = batch["input_ids"].shape[1]
    config = copy.deepcopy(model.generation_config)
    # Greedy: clear sampling knobs a checkpoint may ship (they only trigger warnings when do_sample is False).
    config.do_sample, config.num_beams = False, 1
    config.temperature, config.top_p, config.top_k = None, None, None
    config.max_new_tokens, config.max_length = max_new_tokens, None
    config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    criteria = StoppingCriteriaList([StopOnStrings(tokenizer, prompt_length)] if use_stop_strings else [])
    output = model.generate(**batch, generation_config=config, stopping_criteria=criteria)
    texts = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    return [cut_at_stop_strings(text) for text in texts]
