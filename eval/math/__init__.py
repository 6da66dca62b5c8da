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

import json
import os
import sys
from pathlib import Path

from eval.common import is_run_dir, resolve_output_dir
from eval.runs import base_model_source, base_run_dirs, run_on_gpus, visible_gpus
from experiments.rundir import RunDir

from .answers import extract_choice, extract_latex, extract_number, latex_equal, normalize_latex
from .prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, build_prompt
from .readers import DATASETS, MathDataError, MathItem, load_items, read_records, select_subset
from .runner import (RESULTS_FILE, check_limit, evaluate_math, paper_average, results_complete,
                     results_file_name)
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
    "read_records", "resolve_tasks", "results_complete", "results_file_name", "score_output", "score_predictions", "select_subset",
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
    """What to load for `source`: a run directory's saved model folder, the model a base run directory names
    (eval/runs.py), else the source itself."""
    if not is_run_dir(source):
        return source
    base_model = base_model_source(source)
    if base_model is not None:
        return base_model
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
    check_limit(kwargs.get("limit"), [task.name for task in tasks])
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
        # evaluations started together on one GPU (eval.runs.run_on_gpus): their tokens/s are not one model's alone
        info["shared_device_jobs"] = int(os.environ.get("BADAM_SHARED_DEVICE_RUNS", "1"))
    return evaluate_math(model, tokenizer, out_dir=resolve_output_dir(source, out), model_name=source, tasks=tasks,
                         batch_size=batch_size, extra_info=info, **kwargs)


def evaluate_runs(run_dirs, *, base: bool = False, jobs_per_gpu: int = 1, **options) -> str:
    """experiments/run_all.py's evaluator hook: evaluate each run directory's saved model into <run_dir>/eval (runs
    without a saved model are skipped and named). Options are evaluate_source's (datasets, task_files, limit,
    batch_size, max_batch_tokens, prompt_style, scoring, device: "auto" = CUDA when available, ...).
    base=True: also the untuned model each group started from, in `<group>/<stem>-base` (eval/runs.py), with the
    same options: the tables' base row. jobs_per_gpu: on CUDA, the models are evaluated at once, one child process
    each (`python -m eval math <dir>`), spread over the visible GPUs with up to this many per GPU; 1 and a single
    GPU: one after the other in this process. Returns a short note."""
    if options.get("device") == "auto":
        options = {key: value for key, value in options.items() if key != "device"}
    if not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be a positive integer, got {jobs_per_gpu!r}")
    run_dirs = [Path(d) for d in run_dirs]
    if base:
        run_dirs += [d for d in base_run_dirs(run_dirs, note="untuned base model: math benchmarks only")
                     if d not in run_dirs]
    # a run restored from results/ without its weights, or evaluated before: nothing to load
    done = [d for d in run_dirs if results_complete(RunDir(d).eval_dir, **options)]
    sources = [d for d in run_dirs if d not in done and (RunDir(d).has_saved_model() or base_model_source(d))]
    skipped = [d.name for d in run_dirs if d not in sources and d not in done]
    device = options.get("device") or default_device()
    gpus = visible_gpus() if device == "cuda" else []
    if len(sources) > 1 and gpus and (len(gpus) > 1 or jobs_per_gpu > 1):
        commands = [[sys.executable, "-m", "eval", "math", str(source), "--options", json.dumps(options)]
                    for source in sources]
        codes = run_on_gpus(commands, gpus, per_gpu=jobs_per_gpu)
        failed = [source.name for source, code in zip(sources, codes) if code != 0]
        if failed:
            raise RuntimeError(f"math evaluation failed for {', '.join(failed)} (their errors are printed above)")
        results_file = results_file_name(options.get("scoring", DEFAULT_SCORING))
        results = [json.loads(RunDir(s).eval_file(results_file).read_text(encoding="utf-8")) for s in sources]
    else:
        results = [evaluate_source(str(source), **options) for source in sources]
    notes = [f"already evaluated: {', '.join(d.name for d in done)}"] if done else []
    for source, result in zip(sources, results):
        average = result.get("paper_average_pct")
        shown = f"{average:.1f}% (paper's six)" if average is not None else \
            f"{result['average_accuracy_pct']:.1f}% over {', '.join(result['averaged_over'])}"
        notes.append(f"{source.name}: {shown}")
    if skipped:
        notes.append(f"no saved model, not evaluated: {', '.join(skipped)}")
    return "; math " + "; ".join(notes) if notes else ""
