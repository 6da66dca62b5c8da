"""Math benchmark evaluator: GSM8K, MATH, AQuA, NumGLUE, SAT-Math and MMLU-Math, zero-shot, as in MAmmoTH's math_eval
(the evaluation the BAdam paper reports for its MathInstruct fine-tunes).

Why our own loop and not lm-eval with local task files: lm-eval has no tasks for NumGLUE, SAT-Math, AQuA or
MMLU-Math in MAmmoTH's chain-of-thought form, and reproducing MAmmoTH's answer extraction (triggers, option letters,
\\boxed{}, MATH equivalence) would mean custom Python filters for each task anyway; lm-eval is also absent on the
GPU machines. The loop here is small: transformers `generate` (batched, greedy, left padding), the extraction and
equivalence rules in `answers.py`, and per-sample JSONL files that make re-runs resume.

Python API:
    from eval.math import evaluate_math, evaluate_source
    evaluate_source("smollm2-135m-instruct", datasets="gsm8k,math", limit=20)     # loads the model, writes results
    evaluate_math(model, tokenizer, out_dir=..., model_name=..., datasets=[...])   # an already loaded model
CLI: python -m eval.math --model <source or run dir> [--datasets gsm8k,math,...] [--limit N] [--batch-size B]
     [--max-new-tokens T] [--prompt-style alpaca|chat] [--out DIR]
"""
from __future__ import annotations

import os
from pathlib import Path

from eval.common import is_run_dir, resolve_output_dir

from .answers import extract_choice, extract_latex, extract_number, latex_equal, normalize_latex
from .prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, build_prompt
from .readers import DATASETS, MathDataError, MathItem, check_dataset_names, load_items, select_subset
from .runner import RESULTS_FILE, evaluate_math, extract_answer, is_correct

__all__ = [
    "DATASETS", "DEFAULT_PROMPT_STYLE", "PROMPT_STYLES", "RESULTS_FILE", "MathDataError", "MathItem",
    "build_prompt", "check_dataset_names", "evaluate_math", "evaluate_source", "extract_answer", "extract_choice",
    "extract_latex", "extract_number", "is_correct", "latex_equal", "load_items", "model_location",
    "normalize_latex", "select_subset",
]


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """bf16 on GPUs (as the paper); fp32 on CPU, where bf16 matmuls are slower and the models we run are small."""
    return "fp32" if device == "cpu" else "bf16"


# experiments/run.py saves a run's trained model (LoRA merged) and tokenizer here when output.save_model is on.
RUN_MODEL_SUBDIR = "model"


def model_location(source: str) -> str:
    """What to load for `source`: a run directory's saved model folder, else the source itself."""
    if not is_run_dir(source):
        return source
    folder = Path(source) / RUN_MODEL_SUBDIR
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"run directory {source} has no saved model in {folder} "
                                "(train with output.save_model: true)")
    return str(folder)


def evaluate_source(source: str, *, out: str | os.PathLike | None = None, device: str | None = None,
                    dtype: str | None = None, datasets=DATASETS, **kwargs) -> dict:
    """Load `source` with experiments.models.load_model (hub id, alias, local folder, run directory, ...) and
    evaluate it; results go to `out`, else `<run_dir>/eval/math.json` for a run directory (eval/common.py).
    Data files are checked before the model is loaded. Other keyword arguments go to `evaluate_math`."""
    import torch
    import transformers

    from experiments.models import load_model

    names = check_dataset_names(datasets)
    for name in names:  # fail on a missing data file before spending time on the model
        load_items(name)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    model, tokenizer = load_model(str(model_location(source)), dtype=dtype, device=device, task="causal_lm")
    if tokenizer is None:
        raise ValueError(f"model source {source!r} comes without a tokenizer; the math evaluator needs one")
    info = {"device": device, "dtype": dtype, "torch": torch.__version__, "transformers": transformers.__version__}
    return evaluate_math(model, tokenizer, out_dir=resolve_output_dir(source, out), model_name=source,
                         datasets=names, extra_info=info, **kwargs)
