"""Score outputs generated elsewhere (vLLM, an API, another harness) against a math task.

Predictions: a JSONL file, one object per line with `idx` (the item's 0-based position in the task's data file) and
`output` (the model's text); other keys are ignored. The result holds the accuracy over the predicted items and one
sample per prediction (`idx`, `extracted`, `gold`, `correct`). Items of the dataset without a prediction are counted
in `missing`, not scored.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from eval.common import write_json_atomic

from .readers import MathDataError, load_items
from .scoring import DEFAULT_SCORING, check_scoring, score_output
from .tasks import TaskSpec


class PredictionsError(ValueError):
    """The predictions file is missing or malformed (one line naming the file and the line)."""


def read_predictions(path: str | os.PathLike, dataset_size: int) -> dict[int, str]:
    """idx -> output, validated: every line an object with an integer `idx` in range and a string `output`."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file not found: {path}")
    predictions: dict[int, str] = {}
    with path.open("rb") as fh:  # decoded per line, so that a bad byte is named with its line
        for number, raw in enumerate(fh, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise PredictionsError(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x}); valid: UTF-8 JSON "
                                       "Lines") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionsError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or "idx" not in record or "output" not in record:
                raise PredictionsError(f"{where}: each line needs an object with 'idx' and 'output'")
            idx, output = record["idx"], record["output"]
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < dataset_size:
                raise PredictionsError(f"{where}: idx {idx!r} is not an item position 0..{dataset_size - 1}")
            if not isinstance(output, str):
                raise PredictionsError(f"{where}: output must be a string, got {type(output).__name__}")
            if idx in predictions:
                raise PredictionsError(f"{where}: idx {idx} appears twice")
            predictions[idx] = output
    if not predictions:
        raise PredictionsError(f"{path} holds no predictions")
    return predictions


def score_predictions(task: TaskSpec, predictions_path: str | os.PathLike, *, out: str | os.PathLike | None = None,
                      scoring: str = DEFAULT_SCORING) -> dict:
    """Score a predictions file against `task`; writes the result to `out` when given and returns it."""
    check_scoring(scoring)
    items = load_items(task)
    predictions = read_predictions(predictions_path, len(items))
    samples = []
    for idx in sorted(predictions):
        verdict = score_output(items[idx], predictions[idx], scoring)
        samples.append({"idx": idx, "extracted": verdict["extracted"], "gold": items[idx].gold,
                         "correct": bool(verdict["correct"]),
                         **({"fallback": True} if verdict.get("fallback") else {})})
    correct = sum(sample["correct"] for sample in samples)
    result = {
        "evaluator": "math", "task": task.name, "task_file": task.source, "data_file": str(task.path),
        "predictions": str(predictions_path), "scoring": scoring,
        "accuracy_pct": 100.0 * correct / len(samples), "correct": correct, "total": len(samples),
        "dataset_size": len(items), "missing": len(items) - len(samples),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "samples": samples,
    }
    if out is not None:
        write_json_atomic(out, result)
    return result


__all__ = ["MathDataError", "PredictionsError", "read_predictions", "score_predictions"]
