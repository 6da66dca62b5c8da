"""The evaluation loop: per task, generate for the items not done yet, save every sample, score, write the results.

Files (under the output folder, `<run_dir>/eval` by default, see eval/common.py):
- `math/<dataset>.jsonl`: one record per item (question, prompt, generation, new_tokens, extracted, gold, correct,
  ...). A re-run generates only the items missing there, so an interrupted evaluation resumes; records made with
  other settings (model, prompt style, max_new_tokens) are refused instead of being mixed in.
- `math.json` (MAmmoTH scoring, the paper's) or `math_strict.json` (`scoring="strict"`): per-dataset accuracy
  (percent), generated tokens per second, the paper's six-dataset average and the average over what was evaluated.
  Every run re-scores the saved generations with the current code, so the numbers never depend on which version of
  it first saw a sample.
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

from eval.generation import check_generation_options

from .generation import GenerationOptions, encode_prompts, generate_encoded, prepare_tokenizer
from .prompts import DEFAULT_PROMPT_STYLE, adds_special_tokens, build_prompt, check_prompt_style
from .readers import MathDataError, MathItem, load_items, select_subset
from .scoring import DEFAULT_SCORING, check_scoring, score_output
from .tasks import PAPER_DATASETS, TaskSpec, resolve_tasks

RESULTS_FILE = "math.json"
SAMPLES_DIR = "math"


def results_file_name(scoring: str) -> str:
    """math.json holds the default (MAmmoTH) scoring that the paper's tables read; other modes get their own file."""
    return RESULTS_FILE if check_scoring(scoring) == DEFAULT_SCORING else f"math_{scoring}.json"


def score_record(item: MathItem, record: dict, scoring: str = DEFAULT_SCORING) -> dict:
    """The record with `extracted` and `correct` recomputed from its saved generation."""
    verdict = score_output(item, record["generation"], scoring)
    record = {key: value for key, value in record.items() if key != "fallback"}
    return {**record, **verdict, "gold": item.gold, "scoring": scoring}


def paper_average(accuracies: dict[str, float]) -> float | None:
    """The paper's average: over its six datasets by name, None unless all six are there (others are ignored)."""
    if not all(name in accuracies for name in PAPER_DATASETS):
        return None
    return statistics.fmean(accuracies[name] for name in PAPER_DATASETS)


def limit_for(limit: int | dict | None, name: str) -> int | None:
    """Items of dataset `name` under `limit`: one number for every dataset, or {dataset: number} (others: all)."""
    return limit.get(name) if isinstance(limit, dict) else limit


def check_limit(limit, names: list[str]) -> None:
    """A limit is None, a positive number, or {dataset: positive number} naming only evaluated datasets."""
    values = limit.values() if isinstance(limit, dict) else [] if limit is None else [limit]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"limit must be a positive number of items or {{dataset: number}}, got {limit!r}")
    unknown = sorted(set(limit) - set(names)) if isinstance(limit, dict) else []
    if unknown:
        raise ValueError(f"limit names dataset(s) not evaluated: {', '.join(unknown)}; evaluated: {', '.join(names)}")


def batches_by_length(lengths: list[int], batch_size: int, max_batch_tokens: int | None = None) -> list[range]:
    """Consecutive batches of items sorted longest first: at most `batch_size` rows and, with `max_batch_tokens`, at
    most that many prompt tokens counted with padding (rows x the batch's first, longest prompt). The cap keeps the
    few very long prompts (MATH has some of 1,000+ tokens) from setting a GPU's peak memory for the whole run."""
    batches, start = [], 0
    while start < len(lengths):
        rows = batch_size if max_batch_tokens is None else max(1, min(batch_size, max_batch_tokens // lengths[start]))
        batches.append(range(start, min(start + rows, len(lengths))))
        start += rows
    return batches


def evaluate_math(model, tokenizer, *, out_dir: str | os.PathLike, model_name: str, datasets=None, task_files=None,
                  tasks: list[TaskSpec] | None = None, limit: int | dict | None = None, batch_size: int = 8,
                  max_batch_tokens: int | None = None, max_new_tokens: int = 512,
                  prompt_style: str = DEFAULT_PROMPT_STYLE, scoring: str = DEFAULT_SCORING, cache: str = "dynamic",
                  compile: bool = False, overwrite: bool = False, extra_info: dict | None = None,
                  on_batch=None) -> dict:
    """Evaluate a loaded causal LM on math tasks; returns (and writes to `out_dir`) the results.

    Tasks: built-in `datasets` by name and/or `task_files` (YAML), or ready `tasks`; none given: the paper's six.
    `limit` takes that many items per dataset ({dataset: n}: of those datasets only), spread evenly over the file
    (MATH's file is sorted by subject, so its subset is stratified by subject). `max_batch_tokens` caps a batch's
    padded prompt tokens (batches_by_length). `model_name` identifies the model in the saved records (resuming with a
    different one is refused). `overwrite` discards earlier samples.
    `on_batch(dataset_name, batch_output)` is called after every generated batch (benchmarks time batches with it).
    """
    tasks = tasks if tasks is not None else resolve_tasks(datasets, task_files)
    check_prompt_style(prompt_style)
    check_scoring(scoring)
    check_generation_options(cache, compile)
    check_limit(limit, [task.name for task in tasks])
    if batch_size < 1 or max_new_tokens < 1 or (max_batch_tokens is not None and max_batch_tokens < 1):
        raise ValueError(f"batch_size, max_batch_tokens and max_new_tokens must be >= 1, got {batch_size}, "
                         f"{max_batch_tokens} and {max_new_tokens}")
    options = GenerationOptions(max_new_tokens=int(max_new_tokens), cache=cache, compile=compile,
                                batch_rows=batch_size)
    out_dir = Path(out_dir)
    settings = {"model": str(model_name), "prompt_style": prompt_style, "max_new_tokens": int(max_new_tokens)}
    # Load every dataset first, so a missing file fails before any generation time is spent.
    selected = {task.name: select_subset(load_items(task), limit_for(limit, task.name)) for task in tasks}
    paths = {task.name: out_dir / SAMPLES_DIR / f"{task.name}.jsonl" for task in tasks}
    # Check every saved file before generating, so a mismatch in the last dataset does not surface after hours.
    saved = {name: _previous_records(paths[name], settings, overwrite) for name in selected}

    tok = prepare_tokenizer(tokenizer)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    per_dataset, generated_now = {}, 0
    try:
        for name, items in selected.items():
            records = saved[name]
            todo = [item for item in items if item.index not in records]
            for record in _generate_records(model, tok, todo, settings, options, (batch_size, max_batch_tokens),
                                            name, paths[name], scoring, on_batch):
                records[record["index"]] = record
                generated_now += 1
            per_dataset[name] = _score_dataset(items, records, paths[name], out_dir, scoring)
            per_dataset[name]["generated_now"] = len(todo)
    finally:
        model.train(was_training)
    wall_time = time.perf_counter() - started
    generation = {"batch_size": batch_size, "max_batch_tokens": max_batch_tokens, "cache": cache, "compile": compile}
    return _write_results(out_dir, per_dataset, settings, scoring=scoring, limit=limit, generation=generation,
                          generated_now=generated_now, wall_time_s=wall_time, extra_info=extra_info)


def results_complete(out_dir: str | os.PathLike, *, datasets=None, task_files=None, limit: int | dict | None = None,
                     max_new_tokens: int = 512, prompt_style: str = DEFAULT_PROMPT_STYLE,
                     scoring: str = DEFAULT_SCORING, **_generation_options) -> bool:
    """Whether `out_dir` holds results of these tasks with these settings, every selected item scored (the model
    is not compared: a run directory's path differs between machines). Options as evaluate_math's."""
    path = Path(out_dir) / results_file_name(scoring)
    if not path.is_file():
        return False
    results = _read_results(path)
    settings = results.get("settings") or {}
    if settings.get("prompt_style") != prompt_style or settings.get("max_new_tokens") != int(max_new_tokens):
        return False
    done = results.get("datasets") or {}
    return all(task.name in done and done[task.name].get("total") ==
               len(select_subset(load_items(task), limit_for(limit, task.name)))
               for task in resolve_tasks(datasets, task_files))


def _read_results(path: Path) -> dict:
    """An existing results file; one that holds no results object (cut short, emptied) is a MathDataError naming it:
    it is never read as empty, which would drop the datasets of earlier calls from the merged file."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        results, problem = None, f"is not valid JSON ({exc}; a half-written file?)"
    else:
        problem = None if isinstance(results, dict) else f"holds a JSON {type(results).__name__}, not an object"
    if problem is not None:
        raise MathDataError(f"{path} {problem}; move it away and evaluate again (the samples files beside it keep "
                            "every generated answer, so nothing is generated twice)")
    return results


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


def _generate_records(model, tok, todo: list[MathItem], settings: dict, options: GenerationOptions,
                      batching: tuple[int, int | None], name: str, samples_path: Path, scoring: str, on_batch=None):
    """Yield one record per item; each batch is appended to the samples file as soon as it is generated, so a crash
    or kill loses at most the batch in flight."""
    if not todo:
        return
    style = settings["prompt_style"]
    prompts = {item.index: build_prompt(item, style, tok) for item in todo}
    encoded = dict(zip(prompts, encode_prompts(tok, list(prompts.values()), adds_special_tokens(style))))
    # Longest prompts first: batches of similar length waste less padding, and an out-of-memory shows up at once.
    order = sorted(todo, key=lambda item: -len(encoded[item.index]))
    with tqdm(total=len(order), desc=f"math/{name}", unit="item") as bar:
        for rows in batches_by_length([len(encoded[item.index]) for item in order], *batching):
            batch = order[rows.start:rows.stop]
            texts, out = generate_encoded(model, tok, [encoded[item.index] for item in batch], options)
            if on_batch is not None:
                on_batch(name, out)
            # Each record keeps its share of the batch's time, so a dataset's generation time survives resumes.
            seconds_each = out.seconds / len(batch)
            records = []
            for item, text, new_tokens in zip(batch, texts, out.new_tokens):
                record = {"dataset": name, "index": item.index, "question": item.question,
                          "prompt": prompts[item.index], "generation": text, "new_tokens": new_tokens,
                          "generation_s": seconds_each, "settings": settings, **item.meta}
                records.append(score_record(item, record, scoring))
            append_jsonl(samples_path, records)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{out.total_new_tokens / out.seconds:.0f}" if out.seconds else "-")
            yield from records


def _score_dataset(items: list[MathItem], records: dict[int, dict], samples_path: Path, out_dir: Path,
                   scoring: str) -> dict:
    """Re-score the selected items from their saved generations; rewrite the samples file in index order."""
    by_index = {item.index: item for item in items}
    rescored = {idx: (score_record(by_index[idx], rec, scoring) if idx in by_index else rec)
                for idx, rec in records.items()}
    write_jsonl_atomic(samples_path, [rescored[idx] for idx in sorted(rescored)])
    chosen = [rescored[item.index] for item in items]
    correct = sum(bool(record["correct"]) for record in chosen)
    total = len(items)
    generation_s = sum(record.get("generation_s", 0.0) for record in chosen)
    new_tokens = sum(record.get("new_tokens", 0) for record in chosen)
    try:
        samples_file = str(samples_path.relative_to(out_dir))
    except ValueError:
        samples_file = str(samples_path)
    return {"accuracy_pct": 100.0 * correct / total if total else 0.0, "correct": correct, "total": total,
            "generation_s": round(generation_s, 2), "new_tokens": new_tokens,
            "tokens_per_s": round(new_tokens / generation_s, 1) if generation_s > 0 else None,
            "samples_file": samples_file}


def _write_results(out_dir: Path, per_dataset: dict, settings: dict, *, scoring: str, **info) -> dict:
    """Merge into an existing results file (datasets evaluated in earlier calls with the same settings are kept)."""
    path = out_dir / results_file_name(scoring)
    previous = {}
    if path.exists():
        old = _read_results(path)
        if old.get("settings") == settings and old.get("scoring") == scoring:
            previous = old.get("datasets", {})
    merged = {**previous, **per_dataset}
    ordered = {name: merged[name] for name in PAPER_DATASETS if name in merged}
    ordered.update({name: entry for name, entry in merged.items() if name not in ordered})
    accuracies = {name: entry["accuracy_pct"] for name, entry in ordered.items()}
    generation_s = sum(d.get("generation_s", 0.0) for d in ordered.values())
    new_tokens = sum(d.get("new_tokens", 0) for d in ordered.values())
    extra = info.pop("extra_info") or {}
    results = {
        "evaluator": "math",
        "results_file": str(path),
        "scoring": scoring,
        "settings": settings,
        "datasets": ordered,
        "paper_average_pct": paper_average(accuracies),
        "paper_datasets": list(PAPER_DATASETS),
        "average_accuracy_pct": statistics.fmean(accuracies.values()) if accuracies else None,
        "averaged_over": list(ordered),
        # generation time of all scored samples, whichever call produced them (wall_time_s: this call only)
        "generation_s": round(generation_s, 2),
        "new_tokens": new_tokens,
        "tokens_per_s": round(new_tokens / generation_s, 1) if generation_s > 0 else None,
        **info,
        "environment": {"python": platform.python_version(), "hostname": platform.node(), **extra},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(path, results)
    return results
