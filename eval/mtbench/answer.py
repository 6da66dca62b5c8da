"""Step 1 of MT-bench: a model answers the 80 two-turn questions, written in FastChat's answer JSONL format.

Turn 2 is asked in the same conversation, after the model's own turn-1 answer (as FastChat's gen_model_answer does).
Questions are batched per sampling temperature, so each `generate` call has one temperature; generation runs on the
evaluators' shared fast path (eval/generation.py). `sampling="fastchat"` samples with the model's own top_k / top_p
as FastChat's gen_model_answer does (eval/mtbench/generation.py); the default "pure" uses the temperature alone.
Answers are appended as each batch finishes; a re-run skips questions already in the file, then the file is rewritten sorted by question
id with one record per question (FastChat's reorg_answer_file).
"""
from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from eval.common import is_run_dir
from eval.mtbench.data import (MTBenchError, append_jsonl, load_answers, question_temperature, write_json_atomic,
                               write_jsonl_atomic)
from eval.mtbench.generation import SAMPLING_SETTINGS, generate_chat_batch
from experiments.rundir import RunDir


def answer_info_path(answer_file: str | os.PathLike) -> Path:
    """Sidecar with the generation settings and timing; named so FastChat's `*.jsonl` glob never picks it up."""
    answer_file = Path(answer_file)
    return answer_file.with_name(answer_file.name[: -len(".jsonl")] + ".info.json")


def _check_options(max_new_tokens: int, batch_size: int, num_choices: int, temperature_mode: str,
                   sampling: str = "pure") -> None:
    problems = []
    if sampling not in SAMPLING_SETTINGS:
        problems.append(f"sampling must be one of {', '.join(SAMPLING_SETTINGS)} (got {sampling!r})")
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if batch_size < 1:
        problems.append(f"batch_size must be >= 1 (got {batch_size})")
    if num_choices < 1:
        problems.append(f"num_choices must be >= 1 (got {num_choices})")
    if problems:
        raise MTBenchError("; ".join(problems))
    question_temperature("writing", temperature_mode)  # raises on an unknown mode, naming the valid ones


def _answer_batch(model, tokenizer, batch: list[dict], *, temperature: float, max_new_tokens: int,
                  num_choices: int, seed: int, bar, sampling: str = "pure") -> tuple[list[list[dict]], int]:
    """All turns of every question in `batch`, `num_choices` times; returns choices per question and new tokens."""
    choices: list[list[dict]] = [[] for _ in batch]
    new_tokens = 0
    for choice in range(num_choices):
        torch.manual_seed(seed + choice)  # FastChat seeds each choice with its index
        conversations: list[list[dict]] = [[] for _ in batch]
        turns: list[list[str]] = [[] for _ in batch]
        for turn in range(max(len(q["turns"]) for q in batch)):
            active = [i for i, q in enumerate(batch) if turn < len(q["turns"])]
            for i in active:
                conversations[i].append({"role": "user", "content": batch[i]["turns"][turn]})
            out = generate_chat_batch(model, tokenizer, [conversations[i] for i in active],
                                      max_new_tokens=max_new_tokens, temperature=temperature, sampling=sampling)
            new_tokens += sum(out.new_tokens)
            for i, text in zip(active, out.texts):
                conversations[i].append({"role": "assistant", "content": text})
                turns[i].append(text)
            bar.update(len(active))
        for i in range(len(batch)):
            choices[i].append({"index": choice, "turns": turns[i]})
    return choices, new_tokens


def generate_answers(model, tokenizer, questions: list[dict], answer_file: str | os.PathLike, *, model_id: str,
                     max_new_tokens: int = 1024, temperature_mode: str = "fastchat", batch_size: int = 8,
                     num_choices: int = 1, seed: int = 0, progress: bool = True, sampling: str = "pure") -> dict:
    """Answer every question not yet in `answer_file`; returns (and writes beside the file) a run summary.

    temperature_mode: 'fastchat' (per-category table of FastChat's common.py) or 'greedy' (temperature 0 for all).
    max_new_tokens: per turn (FastChat's default is 1024).
    sampling: 'pure' (temperature only) or 'fastchat' (the model's own top_k / top_p, as FastChat).
    """
    _check_options(max_new_tokens, batch_size, num_choices, temperature_mode, sampling)
    answer_file = Path(answer_file)
    done = set(load_answers(answer_file)) if answer_file.exists() else set()
    todo = [q for q in questions if q["question_id"] not in done]

    by_temperature: dict[float, list[dict]] = defaultdict(list)
    for q in todo:
        by_temperature[question_temperature(q["category"], temperature_mode)].append(q)

    was_training = model.training
    model.eval()
    new_tokens = 0
    start = time.perf_counter()
    # Counted in answered turns: one batch of long answers can take minutes on a CPU.
    total_turns = num_choices * sum(len(q["turns"]) for q in todo)
    try:
        with tqdm(total=total_turns, desc=f"MT-bench answers ({model_id})", unit="turn",
                  disable=not progress) as bar:
            for temperature in sorted(by_temperature):
                # Similar prompt lengths in a batch waste less compute on padding.
                group = sorted(by_temperature[temperature], key=lambda q: (len(q["turns"][0]), q["question_id"]))
                for first in range(0, len(group), batch_size):
                    batch = group[first: first + batch_size]
                    choices, tokens = _answer_batch(model, tokenizer, batch, temperature=temperature,
                                                    max_new_tokens=max_new_tokens, num_choices=num_choices,
                                                    seed=seed + first, bar=bar, sampling=sampling)
                    new_tokens += tokens
                    for q, q_choices in zip(batch, choices):
                        # FastChat draws answer_id with shortuuid; any unique string will do, and the stdlib's
                        # uuid keeps the answer step free of packages the GPU machines lack.
                        append_jsonl(answer_file, {"question_id": q["question_id"], "answer_id": uuid.uuid4().hex,
                                                   "model_id": model_id, "choices": q_choices,
                                                   "tstamp": time.time()})
    finally:
        model.train(was_training)
    wall_s = time.perf_counter() - start

    if answer_file.exists():
        answers = load_answers(answer_file)
        write_jsonl_atomic(answer_file, [answers[qid] for qid in sorted(answers)])
    info = {"model_id": model_id, "answer_file": str(answer_file), "questions_requested": len(questions),
            "questions_generated": len(todo), "questions_skipped_done": len(questions) - len(todo),
            "max_new_tokens": max_new_tokens, "temperature_mode": temperature_mode, "sampling": sampling,
            "batch_size": batch_size,
            "num_choices": num_choices, "seed": seed, "wall_s": round(wall_s, 3), "new_tokens": new_tokens,
            "new_tokens_per_s": round(new_tokens / wall_s, 2) if wall_s > 0 and new_tokens else None,
            "device": str(next(model.parameters()).device), "dtype": str(next(model.parameters()).dtype)}
    if todo:  # a no-op re-run keeps the timing of the run that did the work
        write_json_atomic(answer_info_path(answer_file), info)
    return info


def model_location(source: str) -> str:
    """A training run directory stands for the model it saved in <run_dir>/model; any other source is kept."""
    if is_run_dir(source):
        folder = RunDir(source).model
        if not RunDir(source).has_saved_model():
            raise MTBenchError(f"run directory {source} holds no saved model in {folder} (train with "
                               "output.save_model: true), so there is nothing to answer with")
        return str(folder)
    return source


def load_model_for_answers(source: str, *, dtype: str | None = None, device: str = "cpu"):
    """Load `source` through the harness (experiments.models.load_model), bf16 on GPU and fp32 on CPU by default."""
    from experiments.models import load_model

    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    try:
        model, tokenizer = load_model(model_location(source), dtype=dtype, device=device)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise MTBenchError(f"could not load model {source!r}: {err}") from err
    if tokenizer is None:
        raise MTBenchError(f"model {source!r} came without a tokenizer; MT-bench needs a chat tokenizer")
    return model, tokenizer
