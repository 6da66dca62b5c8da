"""Math benchmark evaluator: GSM8K, MATH, AQuA, NumGLUE, SAT-Math and MMLU-Math (and any dataset described by a task
file), zero-shot, scored as MAmmoTH's math_eval scores them (the evaluation behind the BAdam paper's Table 6).

Why our own loop and not lm-eval with local task files: lm-eval has no tasks for NumGLUE, SAT-Math, AQuA or
MMLU-Math in MAmmoTH's chain-of-thought form, and reproducing MAmmoTH's answer cleaning (triggers, option letters,
\\boxed{}, MATH normalisation) would mean custom Python filters for each task anyway; lm-eval is also absent on the
GPU machines. The loop here is small: batched greedy generation (eval/generation.py), two scorers (`mammoth`, the
default, and `strict`; README.md lists their differences), and per-sample JSONL files that make re-runs resume.

Python API:
    from eval.math import evaluate_source, evaluate_runs, evaluate_math, score_predictions
    evaluate_source("smollm2-135m-instruct", datasets="gsm8k,math", limit=20)     # loads the model, writes results
    evaluate_source("runs/x", task_files=["svamp.yaml"])                             # a dataset of your own
    evaluate_math(model, tokenizer, out_dir=..., model_name=..., datasets=[...])   # an already loaded model
    score_predictions(builtin_task("gsm8k"), "preds.jsonl", out="r.json")            # outputs made elsewhere
CLI: python -m eval.math --help; python -m eval.math score --help
"""
from __future__ import annotations

import os
from pathlib import Path

from eval.common import is_run_dir, resolve_output_dir
from experiments.rundir import RunDir

from .answers import extract_choice, extract_latex, extract_number, latex_equal, normalize_latex
from .prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, build_prompt
from .readers import DATASETS, MathDataError, MathItem, load_items, read_records, select_subset
from .runner import RESULTS_FILE, evaluate_math, paper_average, results_file_name
from .score import PredictionsError, score_predictions
from .scoring import DEFAULT_SCORING, SCORING_MODES, extract_answer, is_correct, score_output
from .tasks import (PAPER_DATASETS, MathTaskError, TaskSpec, builtin_names, builtin_task, check_dataset_names,
                    load_task_file, resolve_tasks)

__all__ = [
    "DATASETS", "DEFAULT_PROMPT_STYLE", "DEFAULT_SCORING", "PAPER_DATASETS", "PROMPT_STYLES", "RESULTS_FILE",
    "SCORING_MODES", "MathDataError", "MathItem", "MathTaskError", "ModelLoadError", "PredictionsError", "TaskSpec",
    "build_prompt", "builtin_names", "builtin_task", "check_dataset_names", "evaluate_math", "evaluate_runs",
    "evaluate_source", "extract_answer", "extract_choice", "extract_latex", "extract_number", "is_correct",
    "latex_equal", "load_items", "load_task_file", "model_location", "normalize_latex", "paper_average",
    "read_records", "resolve_tasks", "results_file_name", "score_output", "score_predictions", "select_subset",
]

# Rows per generate call when none is given: a GPU decodes 128 rows in about the time of 8.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 128}


class ModelLoadError(RuntimeError):
    """The model source could not be loaded (one line naming the source and the reason)."""


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """bf16 on GPUs (as the paper); fp32 on CPU, where bf16 matmuls are slower and the models we run are small."""
    return "fp32" if device == "cpu" else "bf16"


def model_location(source: str) -> str:
    """What to load for `source`: a run directory's saved model folder, else the source itself."""
    if not is_run_dir(source):
        return source
    folder = RunDir(source).model  # output.save_model: the trained model (LoRA merged) and its tokenizer
    if not RunDir(source).has_saved_model():
        raise FileNotFoundError(f"run directory {source} has no saved model in {folder} "
                                "(train with output.save_model: true)")
    return str(folder)


def load_for_math(source: str, *, device: str, dtype: str):
    """(model, tokenizer) of `source` through experiments.models.load_model; failures become ModelLoadError."""
    from experiments.models import load_model

    try:
        model, tokenizer = load_model(str(model_location(source)), dtype=dtype, device=device, task="causal_lm")
    except (OSError, ImportError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load model {source!r}: {err}") from err
    if tokenizer is None:
        raise ModelLoadError(f"model source {source!r} comes without a tokenizer; the math evaluator needs one")
    return model, tokenizer


def evaluate_source(source: str, *, out: str | os.PathLike | None = None, device: str | None = None,
                    dtype: str | None = None, datasets=None, task_files=None, batch_size: int | None = None,
                    **kwargs) -> dict:
    """Load `source` with experiments.models.load_model (hub id, alias, local folder, .gguf, run directory, ...) and
    evaluate it; results go to `out`, else `<run_dir>/eval/math.json` for a run directory (eval/common.py).
    Tasks and data files are checked before the model is loaded. Other keyword arguments go to `evaluate_math`."""
    import torch
    import transformers

    tasks = resolve_tasks(datasets, task_files)
    for task in tasks:  # fail on a missing or malformed data file before spending time on the model
        load_items(task)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE.get(device.split(":")[0], 8)
    model, tokenizer = load_for_math(source, device=device, dtype=dtype)
    info = {"device": device, "dtype": dtype, "torch": torch.__version__, "transformers": transformers.__version__}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return evaluate_math(model, tokenizer, out_dir=resolve_output_dir(source, out), model_name=source, tasks=tasks,
                         batch_size=batch_size, extra_info=info, **kwargs)


def evaluate_runs(run_dirs, **options) -> str:
    """experiments/run_all.py's evaluator hook: evaluate each run directory's saved model into <run_dir>/eval.
    Options are evaluate_source's (datasets, task_files, limit, batch_size, scoring, ...). Returns a short note."""
    notes = []
    for run_dir in run_dirs:
        results = evaluate_source(str(run_dir), **options)
        average = results.get("paper_average_pct")
        shown = f"{average:.1f}% (paper's six)" if average is not None else \
            f"{results['average_accuracy_pct']:.1f}% over {', '.join(results['averaged_over'])}"
        notes.append(f"{Path(run_dir).name}: {shown}")
    return "; math " + "; ".join(notes) if notes else ""
