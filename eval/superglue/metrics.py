"""SuperGLUE metrics, as defined by the benchmark (Wang et al., 2019, "SuperGLUE", Table 1):

- accuracy: BoolQ, COPA, RTE, WiC, WSC;
- CB: accuracy and F1 macro-averaged over the classes present in the labels or the predictions (what sklearn's
  `f1_score(average="macro")` does, and jiant, which the BAdam paper used, calls it): a class that neither occurs
  nor is predicted in the evaluated examples does not count as a zero;
- MultiRC: F1a (binary F1 over all answer options pooled) and EM (share of questions whose options are all right).

Tasks with two metrics get `score` = their mean, the single number the SuperGLUE leaderboard (and jiant, which the
BAdam paper used) averages; for the others `score` = accuracy. All values are percentages (0-100).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from eval.superglue.tasks import get_task


def _check_lengths(predictions: Sequence[int], labels: Sequence[int]) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples to score")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    _check_lengths(predictions, labels)
    return 100.0 * sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def f1_for_class(predictions: Sequence[int], labels: Sequence[int], positive: int) -> float:
    """F1 of one class; 0 when the class is neither predicted nor present (no true positive possible)."""
    _check_lengths(predictions, labels)
    tp = sum(1 for p, y in zip(predictions, labels) if p == positive and y == positive)
    fp = sum(1 for p, y in zip(predictions, labels) if p == positive and y != positive)
    fn = sum(1 for p, y in zip(predictions, labels) if p != positive and y == positive)
    if tp == 0:
        return 0.0
    return 100.0 * 2 * tp / (2 * tp + fp + fn)


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Mean F1 over the classes that occur in `labels` or `predictions` (sklearn's macro average)."""
    _check_lengths(predictions, labels)
    classes = sorted(set(labels) | set(predictions))
    return sum(f1_for_class(predictions, labels, c) for c in classes) / len(classes)


def multirc_exact_match(predictions: Sequence[int], labels: Sequence[int], groups: Sequence[str]) -> float:
    """Share of questions (groups) for which every answer option is classified correctly."""
    _check_lengths(predictions, labels)
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} question ids for {len(labels)} labels")
    all_right: dict[str, bool] = defaultdict(lambda: True)
    for p, y, g in zip(predictions, labels, groups):
        all_right[g] = all_right[g] and p == y
    return 100.0 * sum(all_right.values()) / len(all_right)


def task_metrics(task: str, predictions: Sequence[int], labels: Sequence[int],
                 groups: Sequence[str | None] | None = None) -> dict[str, float]:
    """The metrics a task reports (TaskSpec.metrics), rounded to 4 decimals, plus `n` examples scored."""
    spec = get_task(task)
    if spec.name == "cb":
        values = {"accuracy": accuracy(predictions, labels),
                  "macro_f1": macro_f1(predictions, labels)}
    elif spec.name == "multirc":
        if groups is None or any(g is None for g in groups):
            raise ValueError("MultiRC needs the question id of every answer option (groups) for exact match")
        values = {"f1a": f1_for_class(predictions, labels, positive=1),
                  "em": multirc_exact_match(predictions, labels, groups)}
    else:
        values = {"accuracy": accuracy(predictions, labels)}
    values["score"] = sum(values.values()) / len(values)
    result = {name: round(values[name], 4) for name in spec.metrics}
    result["n"] = len(labels)
    return result
