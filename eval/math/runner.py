"""The evaluation loop: per dataset, generate for the items not done yet, save every sample, score, write math.json.

Files (under the output folder, `<run_dir>/eval` by default, see eval/common.py):
- `math/<dataset>.jsonl`: one record per item (question, prompt, generation, extracted, gold, correct, ...). A re-run
  generates only the items missing there, so an interrupted evaluation resumes; records made with other settings
  (model, prompt style, max_new_tokens) are refused instead of being mixed in.
- `math.json`: per-dataset accuracy (percent) and their average. Every run re-scores the saved generations with the
  current extraction code, so the numbers never depend on which version of it first saw a sample.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

from eval.common import append_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic

from . import answers
from .generation import generate_greedy, prepare_tokenizer, prompt_lengths
from .prompts import DEFAULT_PROMPT_STYLE, adds_special_tokens, build_prompt, check_prompt_style
from .readers import DATASETS, MathItem, check_dataset_names, load_items, select_subset

RESULTS_FILE = "math.json"
SAMPLES_DIR = "math"


def extract_answer(item: MathItem, generation: str) -> str:
    """The answer a generation gives for `item`, in the form its gold answer has."""
    if item.kind == "choice":
        return answers.extract_choice(generation, item.choices)
    if item.kind == "latex":
        return answers.extract_latex(generation)
    if item.kind == "text":
        return answers.extract_text(generation)
    return answers.extract_number(generation)


def is_correct(item: MathItem, extracted: str) -> bool:
    if item.kind == "choice":
        return extracted == item.gold
    if item.kind == "latex":
        return answers.latex_equal(extracted, item.gold)
    if item.kind == "text":
        return answers.text_correct(extracted, item.gold)
    return answers.number_correct(extracted, item.gold)


def score_record(item: MathItem, record: dict) -> dict:
    """The record with `extracted` and `correct` recomputed from its saved generation."""
    extracted = extract_answer(item, record["generation"])
    return {**record, "extracted": extracted, "gold": item.gold, "correct": is_correct(item, extracted)}


def evaluate_math(model, tokenizer, *, out_dir: str | os.PathLike, model_name: str,
                  datasets=DATASETS, limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 512,
                  prompt_style: str = DEFAULT_PROMPT_STYLE, overwrite: bool = False,
                  extra_info: dict | None = None) -> dict:
    """Evaluate a loaded causal LM on the math benchmarks; returns (and writes to `out_dir/math.json`) the results.

    `limit` takes that many items per dataset, spread evenly over the file. `model_name` identifies the model in the
    saved records (resuming with a different one is refused). `overwrite` discards earlier samples.
    """
    names = check_dataset_names(datasets)
    check_prompt_style(prompt_style)
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    out_dir = Path(out_dir)
    settings = {"model": str(model_name), "prompt_style": prompt_style, "max_new_tokens": int(max_new_tokens)}
    # Load every dataset first, so a missing file fails before any generation time is spent.
    selected = {name: select_subset(load_items(name), limit) for name in names}

    paths = {name: out_dir / SAMPLES_DIR / f"{name}.jsonl" for name in names}
    # Check every saved file before generating, so a mismatch in the last dataset does not surface after hours.
    saved = {name: _previous_records(paths[name], settings, overwrite) for name in names}

    tok = prepare_tokenizer(tokenizer)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    per_dataset, generated_now = {}, 0
    try:
        for name in names:
            records = saved[name]
            todo = [item for item in selected[name] if item.index not in records]
            for record in _generate_records(model, tok, todo, settings, batch_size, name, paths[name]):
                records[record["index"]] = record
                generated_now += 1
            per_dataset[name] = _score_dataset(selected[name], records, paths[name], out_dir)
            per_dataset[name]["generated_now"] = len(todo)
    finally:
        model.train(was_training)
    wall_time = time.perf_counter() - started
    return _write_results(out_dir, per_dataset, settings, limit=limit, batch_size=batch_size,
                          generated_now=generated_now, wall_time_s=wall_time, extra_info=extra_info)


def _previous_records(samples_path: Path, settings: dict, overwrite: bool) -> dict[int, dict]:
    """Saved records by item index; refuses records made with other settings unless `overwrite`."""
    if overwrite and samples_path.exists():
        samples_path.unlink()
    records = {}
    for record in read_jsonl(samples_path):
        if record.get("settings") != settings:
            raise ValueError(
                f"{samples_path} holds samples made with settings {record.get('settings')}, not {settings}; "
                f"pass overwrite=True (--overwrite) to discard them, or choose another output folder (--out)")
        records[int(record["index"])] = record
    return records


def _generate_records(model, tok, todo: list[MathItem], settings: dict, batch_size: int, name: str,
                      samples_path: Path):
    """Yield one record per item; each batch is appended to the samples file as soon as it is generated, so a crash
    or kill loses at most the batch in flight."""
    if not todo:
        return
    style = settings["prompt_style"]
    special = adds_special_tokens(style)
    prompts = {item.index: build_prompt(item, style, tok) for item in todo}
    # Longest prompts first: batches of similar length waste less padding, and an out-of-memory shows up at once.
    lengths = prompt_lengths(tok, [prompts[item.index] for item in todo], special)
    order = [item for _, item in sorted(zip(lengths, todo), key=lambda pair: -pair[0])]
    with tqdm(total=len(order), desc=f"math/{name}", unit="item") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            batch_start = time.perf_counter()
            texts = generate_greedy(model, tok, [prompts[item.index] for item in batch],
                                    max_new_tokens=settings["max_new_tokens"], add_special_tokens=special)
            # Each record keeps its share of the batch's time, so a dataset's generation time survives resumes.
            seconds_each = (time.perf_counter() - batch_start) / len(batch)
            records = []
            for item, text in zip(batch, texts):
                record = {"dataset": name, "index": item.index, "question": item.question,
                          "prompt": prompts[item.index], "generation": text, "generation_s": seconds_each,
                          "settings": settings, **item.meta}
                records.append(score_record(item, record))
            append_jsonl(samples_path, records)
            bar.update(len(batch))
            yield from records


def _score_dataset(items: list[MathItem], records: dict[int, dict], samples_path: Path,
                   out_dir: Path) -> dict:
    """Re-score the selected items from their saved generations; rewrite the samples file in index order."""
    by_index = {item.index: item for item in items}
    rescored = {idx: (score_record(by_index[idx], rec) if idx in by_index else rec) for idx, rec in records.items()}
    write_jsonl_atomic(samples_path, [rescored[idx] for idx in sorted(rescored)])
    correct = sum(bool(rescored[item.index]["correct"]) for item in items)
    total = len(items)
    generation_s = sum(rescored[item.index].get("generation_s", 0.0) for item in items)
    return {"accuracy_pct": 100.0 * correct / total if total else 0.0, "correct": correct, "total": total,
            "generation_s": round(generation_s, 2), "samples_file": str(samples_path.relative_to(out_dir))}


def _write_results(out_dir: Path, per_dataset: dict, settings: dict, **info) -> dict:
    """Merge into an existing math.json (datasets evaluated in earlier calls with the same settings are kept)."""
    path = out_dir / RESULTS_FILE
    previous = {}
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("settings") == settings:
            previous = old.get("datasets", {})
    merged = {**previous, **per_dataset}
    ordered = {name: merged[name] for name in DATASETS if name in merged}
    extra = info.pop("extra_info") or {}
    results = {
        "evaluator": "math",
        "results_file": str(path),
        "settings": settings,
        "datasets": ordered,
        "average_accuracy_pct": statistics.fmean(d["accuracy_pct"] for d in ordered.values()) if ordered else None,
        "averaged_over": list(ordered),
        # generation time of all scored samples, whichever call produced them (wall_time_s: this call only)
        "generation_s": round(sum(d.get("generation_s", 0.0) for d in ordered.values()), 2),
        **info,
        "environment": {"python": platform.python_version(), "hostname": platform.node(), **extra},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(path, results)
    return results
