"""Greedy generation for the math benchmarks, on the shared fast path (eval/generation.py): prompts tokenized once,
batches of similar length (the runner sorts them), KV cache, stop strings checked cheaply, optionally a static
cache compiled with torch.compile on CUDA."""
from __future__ import annotations

import copy
import dataclasses

from eval.generation import BatchOutput, generate_batch

from .prompts import STOP_STRINGS, cut_at_stop_strings


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 512
    cache: str = "dynamic"          # dynamic | static (static + compile: CUDA graphs, see eval/generation.py)
    compile: bool = False
    batch_rows: int | None = None   # static cache: short batches are filled up to this many rows (one shape)


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


def encode_prompts(tokenizer, prompts: list[str], add_special_tokens: bool) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]


def prompt_lengths(tokenizer, prompts: list[str], add_special_tokens: bool) -> list[int]:
    return [len(ids) for ids in encode_prompts(tokenizer, prompts, add_special_tokens)]


def generate_encoded(model, tokenizer, encoded: list[list[int]], options: GenerationOptions,
                     use_stop_strings: bool = True) -> tuple[list[str], BatchOutput]:
    """Greedy continuations of already tokenized prompts (one batch): texts decoded without special tokens and cut
    at the stop strings, and the batch's token counts and time."""
    if tokenizer.padding_side != "left":
        raise ValueError("math generation needs a left-padding tokenizer (use prepare_tokenizer)")
    out = generate_batch(model, tokenizer, encoded, max_new_tokens=options.max_new_tokens,
                         stop_strings=STOP_STRINGS if use_stop_strings else (), cache=options.cache,
                         compile=options.compile, pad_rows_to=options.batch_rows)
    texts = tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)
    return [cut_at_stop_strings(text) for text in texts], out


def generate_greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int, add_special_tokens: bool = True,
                    use_stop_strings: bool = True, cache: str = "dynamic", compile: bool = False) -> list[str]:
    """Greedy continuations of `prompts` (one batch). `tokenizer` must come from `prepare_tokenizer`."""
    options = GenerationOptions(max_new_tokens=max_new_tokens, cache=cache, compile=compile)
    texts, _ = generate_encoded(model, tokenizer, encode_prompts(tokenizer, prompts, add_special_tokens), options,
                                use_stop_strings)
    return texts
