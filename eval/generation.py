"""Fast batched generation shared by the evaluators (eval.math answers, eval.mtbench answers and its local judge).

One call generates for one left-padded batch with transformers' `generate` and its KV cache. The callers sort their
prompts by length first, so a batch wastes little on padding. What makes it fast:
- large batches (the caller's batch size; on a GPU the decode step costs about the same for 8 rows as for 256);
- stop strings checked by decoding only the last few tokens of the rows still running, every few steps
  (transformers' own `stop_strings` builds tables over the whole vocabulary on every call);
- optionally (`cache="static"`) a static KV cache, which on CUDA lets transformers compile the decode step with
  torch.compile (`compile=True`, CUDA graphs). Every distinct batch shape is compiled anew, so prompts are then
  padded to a multiple of `pad_to_multiple_of` tokens (256) and a short last batch is filled up to `pad_rows_to`
  rows with copies of its last prompt (their outputs are dropped): a run compiles a handful of shapes. It pays off
  for long runs on small models, whose decode step is bound by kernel launches; benchmarks/math_generation.py
  measures both ways.

Greedy by default. `temperature` > 0 samples; `sampling="pure"` is pure temperature sampling (no top-k / top-p, so
results do not depend on a checkpoint's shipped defaults), `sampling="model"` keeps the model's own generation
config (top_k, top_p, repetition_penalty ... , transformers' defaults where it sets none) and only sets the
temperature, which is what FastChat's gen_model_answer does when it calls `model.generate(do_sample=...,
temperature=...)`. Greedy decoding ignores a checkpoint's shipped repetition penalty and sampling defaults (MAmmoTH
decodes with temperature 0 and nothing else).
"""
from __future__ import annotations

import copy
import dataclasses
import time

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

CACHE_MODES = ("dynamic", "static")
SAMPLING_MODES = ("pure", "model")
# gen_model_answer.py samples only when the temperature is above this; below it decodes greedily.
GREEDY_BELOW_TEMPERATURE = 1e-4
# Static cache: prompt widths are rounded up to this many tokens, so that few shapes are compiled.
STATIC_PAD_MULTIPLE = 256
# How many trailing tokens the stop check decodes: enough to hold the longest stop string whatever the tokenizer.
_STOP_WINDOW_TOKENS = 16


class StopOnStrings(StoppingCriteria):
    """Ends each row once its continuation contains one of `stop_strings`, checked every `every` steps on the rows
    still running. A row may run up to `every - 1` tokens past its stop string; callers cut the text at the string."""

    def __init__(self, tokenizer, prompt_length: int, stop_strings, every: int = 4):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop_strings = tuple(stop_strings)
        self.every = max(1, int(every))
        self.done: torch.Tensor | None = None
        self.on_device: torch.Tensor | None = None   # `done` where the ids are, copied only when it changes
        self.stopped_at: dict[int, int] = {}   # row -> tokens generated when its stop string was seen

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            self.on_device = self.done.to(input_ids.device)
        steps = input_ids.shape[1] - self.prompt_length
        if steps % self.every == 0:
            rows = (~self.done).nonzero().flatten().tolist()
            if rows:
                window = input_ids[rows, -min(_STOP_WINDOW_TOKENS, steps):].tolist()
                texts = self.tokenizer.batch_decode(window, skip_special_tokens=True)
                stopped = [row for row, text in zip(rows, texts) if any(s in text for s in self.stop_strings)]
                for row in stopped:
                    self.done[row] = True
                    self.stopped_at[row] = steps
                if stopped:
                    self.on_device = self.done.to(input_ids.device)
        return self.on_device


@dataclasses.dataclass
class BatchOutput:
    token_ids: list[list[int]]   # generated tokens per row, up to (not including) its end-of-sequence token
    new_tokens: list[int]        # tokens generated per row, its end-of-sequence token included when one came
    seconds: float               # wall time of the batch (device synchronised)

    @property
    def total_new_tokens(self) -> int:
        return sum(self.new_tokens)


def check_generation_options(cache: str, compile: bool, sampling: str = "pure") -> None:
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache {cache!r}; valid choices: {', '.join(CACHE_MODES)}")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling {sampling!r}; valid choices: {', '.join(SAMPLING_MODES)}")
    if compile and cache != "static":
        raise ValueError("compile needs the static cache (cache='static'): a dynamic cache changes shape every step")


def left_pad(sequences: list[list[int]], pad_id: int, multiple_of: int | None = None):
    """(input_ids, attention_mask) of the sequences right-aligned in one batch, width rounded up to `multiple_of`."""
    width = max(len(s) for s in sequences)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def end_token_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids: the tokenizer's eos plus every eos the model's generation config lists (<|eot_id|> ...)."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return sorted(ids)


def _config(model, *, max_new_tokens: int, temperature: float, sampling: str, pad_id: int, eos: list[int],
            cache: str, compile: bool) -> GenerationConfig:
    """The generation config of one call. transformers fills every field left unset (None) from the model's own
    generation config, so greedy and pure sampling set every knob a checkpoint may ship (a Qwen checkpoint ships
    repetition_penalty 1.05, top_k 20 ...) to its neutral value: greedy means greedy, as MAmmoTH's evaluation."""
    sample = temperature > GREEDY_BELOW_TEMPERATURE
    if sampling == "model" and sample:
        config = copy.deepcopy(model.generation_config)
        config.do_sample, config.temperature = True, float(temperature)
    elif sample:
        config = GenerationConfig(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0,
                                  repetition_penalty=1.0)
    else:  # neutral values (not None) for the sampling knobs, so nothing is filled in and nothing warns
        config = GenerationConfig(do_sample=False, temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0)
    config.num_beams, config.max_new_tokens, config.max_length = 1, max_new_tokens, None
    config.pad_token_id, config.eos_token_id = pad_id, (eos or None)
    if cache == "static":
        config.cache_implementation = "static"
        config.disable_compile = not compile
    return config


@torch.inference_mode()
def generate_batch(model, tokenizer, encoded: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                   sampling: str = "pure", stop_strings=(), cache: str = "dynamic", compile: bool = False,
                   pad_to_multiple_of: int | None = None, pad_rows_to: int | None = None,
                   stop_check_every: int = 4) -> BatchOutput:
    """Continue every token sequence of `encoded` in one left-padded batch (see the module docstring)."""
    check_generation_options(cache, compile, sampling)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not encoded:
        return BatchOutput([], [], 0.0)
    eos = end_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    rows = len(encoded)
    if cache == "static":
        pad_to_multiple_of = pad_to_multiple_of or STATIC_PAD_MULTIPLE
        if pad_rows_to and rows < pad_rows_to:   # the same batch shape as the full batches: no new compilation
            encoded = list(encoded) + [encoded[-1]] * (pad_rows_to - rows)
    input_ids, attention_mask = left_pad(encoded, pad_id, pad_to_multiple_of)
    device = next(model.parameters()).device
    config = _config(model, max_new_tokens=max_new_tokens, temperature=temperature, sampling=sampling, pad_id=pad_id,
                     eos=eos, cache=cache, compile=compile)
    prompt_length = input_ids.shape[1]
    stopper = StopOnStrings(tokenizer, prompt_length, stop_strings, stop_check_every) if stop_strings else None
    criteria = StoppingCriteriaList([stopper] if stopper else [])
    _synchronize(device)
    started = time.perf_counter()
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            generation_config=config, stopping_criteria=criteria)
    _synchronize(device)
    seconds = time.perf_counter() - started
    # A row ends at its first end-of-sequence token, or where its stop string was seen; what follows is padding.
    stop_set, stopped_at = set(eos), (stopper.stopped_at if stopper else {})
    token_ids, counts = [], []
    for index, row in enumerate(output[:rows, prompt_length:].tolist()):
        end = next((i for i, tok in enumerate(row) if tok in stop_set), None)
        if end is not None and end < stopped_at.get(index, len(row)):
            token_ids.append(row[:end])
            counts.append(end + 1)
        else:
            kept = row[:stopped_at.get(index, len(row))]
            token_ids.append(kept)
            counts.append(len(kept))
    return BatchOutput(token_ids, counts, seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
