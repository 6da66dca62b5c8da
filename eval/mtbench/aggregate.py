"""Step 3 of MT-bench: per-model averages from a single-grading judgment file.

Same arithmetic as fastchat/llm_judge/show_result.py, display_result_single: drop score -1, then per model the mean
score of turn 1, of turn 2, and of all remaining rows together ("Average"; not the mean of the two turn means).
Per-category means (both turns, as in MT-bench's category radar plots) are added when the questions are given.
Beyond show_result, each model also gets `n_scored` (judgments with a rating) and `overall_se`, the standard error of
"overall": the sample standard deviation (n - 1) of its scored per-turn ratings / sqrt(n_scored), i.e. how much the
average would move with another draw of questions and judgments of the same kind; None below two scored judgments.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np
import pandas as pd

from eval.mtbench.data import MTBenchError, read_jsonl


def _judgment_frame(judgments) -> pd.DataFrame:
    if isinstance(judgments, pd.DataFrame):
        frame = judgments.copy()
    else:
        frame = pd.DataFrame(read_jsonl(judgments, "judgment file"))
    if frame.empty:
        raise MTBenchError(f"judgment file {judgments} holds no judgments")
    missing = {"question_id", "model", "judge", "score", "turn"} - set(frame.columns)
    if missing:
        raise MTBenchError(f"judgments lack columns {sorted(missing)}; expected FastChat's single-grading format "
                           "(question_id, model, judge, user_prompt, judgment, score, turn, tstamp)")
    _check_values(frame, judgments)
    frame["judge_model"] = frame["judge"].map(lambda judge: judge[0])
    return frame


def _is_number(value) -> bool:
    # numbers.Real covers numpy's scalars, which pandas hands out for a numeric column; a bool is not a score
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _check_values(frame: pd.DataFrame, source) -> None:
    """One clear error for the first record whose score, turn or judge FastChat could not have written."""
    checks = (("score", _is_number, "a number (-1 when unparseable)"),
              ("turn", lambda v: _is_number(v) and v in (1, 2), "1 or 2"),
              ("judge", lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, str) for x in v),
               "[judge model, prompt name]"))
    for column, valid, expected in checks:
        bad = frame[~frame[column].map(valid)]
        if not bad.empty:
            row = bad.iloc[0]
            where = "" if isinstance(source, pd.DataFrame) else f"{source}: "
            raise MTBenchError(f"{where}{len(bad)} judgment(s) have an invalid {column}, e.g. question "
                               f"{_plain(row['question_id'])} (model {_plain(row['model'])!r}, turn "
                               f"{_plain(row['turn'])!r}): {_plain(row[column])!r}; expected {expected}")


def _mean(series: pd.Series) -> float | None:
    return None if series.empty or math.isnan(series.mean()) else float(series.mean())


def _standard_error(series: pd.Series) -> float | None:
    if len(series) < 2:
        return None
    return float(series.std(ddof=1) / math.sqrt(len(series)))


def summarize_single(judgments: str | os.PathLike | pd.DataFrame, questions: list[dict] | None = None, *,
                     judge_model: str | None = None, models: list[str] | None = None) -> dict:
    """{"judge", "models": {model: {turn1, turn2, overall, overall_se, n_turn1, n_turn2, n_scored, n_unparseable,
    n_questions, categories}}} (overall_se and n_scored: see the module docstring).

    A file holding several judge models must be narrowed with judge_model (mixing judges makes no score).
    """
    frame = _judgment_frame(judgments)
    judges = sorted(frame["judge_model"].unique())
    if judge_model is not None:
        if judge_model not in judges:
            raise MTBenchError(f"judge {judge_model!r} not in the judgments; they hold {judges}")
        frame = frame[frame["judge_model"] == judge_model]
    elif len(judges) > 1:
        raise MTBenchError(f"judgments from several judges {judges}; choose one with --judge-model")
    if models is not None:
        unknown = sorted(set(models) - set(frame["model"]))
        if unknown:
            raise MTBenchError(f"models {unknown} not in the judgments; they hold {sorted(frame['model'].unique())}")
        frame = frame[frame["model"].isin(models)]

    unparseable = frame[frame["score"] == -1].groupby("model").size()
    scored = frame[frame["score"] != -1]
    category_of = {q["question_id"]: q["category"] for q in questions} if questions else {}

    summary = {}
    for model in sorted(frame["model"].unique()):
        rows = scored[scored["model"] == model]
        entry = {"turn1": _mean(rows.loc[rows["turn"] == 1, "score"]),
                 "turn2": _mean(rows.loc[rows["turn"] == 2, "score"]),
                 "overall": _mean(rows["score"]), "overall_se": _standard_error(rows["score"]),
                 "n_scored": int(len(rows)),
                 "n_turn1": int((rows["turn"] == 1).sum()), "n_turn2": int((rows["turn"] == 2).sum()),
                 "n_questions": int(rows["question_id"].nunique()),
                 "n_unparseable": int(unparseable.get(model, 0))}
        if category_of:
            categories = rows["question_id"].map(category_of)
            if categories.isna().any():
                unknown_ids = sorted(rows.loc[categories.isna(), "question_id"].unique().tolist())
                raise MTBenchError(f"judged question ids {unknown_ids[:10]} are not in the question file")
            entry["categories"] = {cat: float(score) for cat, score in
                                   rows.groupby(categories)["score"].mean().sort_index().items()}
        summary[model] = entry
    ranked = dict(sorted(summary.items(), key=lambda kv: -(kv[1]["overall"] if kv[1]["overall"] is not None
                                                            else -math.inf)))
    return {"judge": judge_model or judges[0], "models": ranked}


def format_summary(summary: dict) -> str:
    """Tables in show_result's order (first turn, second turn, average), then per category when present."""
    models = summary["models"]
    lines = [f"Judge: {summary['judge']}"]
    for title, key in (("First turn", "turn1"), ("Second turn", "turn2"), ("Average", "overall")):
        table = pd.DataFrame({"model": list(models), "score": [m[key] for m in models.values()]}).dropna()
        table = table.sort_values("score", ascending=False).set_index("model")
        lines += ["", f"########## {title} ##########", table.to_string(float_format=lambda x: f"{x:.6f}")
                  if not table.empty else "(no scores)"]
    if any("categories" in m for m in models.values()):
        table = pd.DataFrame({name: m.get("categories", {}) for name, m in models.items()}).T
        lines += ["", "########## Per category (both turns) ##########",
                  table.to_string(float_format=lambda x: f"{x:.2f}")]
    counts = "; ".join(f"{name}: {m['n_turn1']}+{m['n_turn2']} scored, {m['n_unparseable']} unparseable"
                       + (f", standard error of the average {m['overall_se']:.3f}"
                          if m.get("overall_se") is not None else "")
                       for name, m in models.items())
    lines += ["", f"Counts (turn 1 + turn 2): {counts}"]
    return "\n".join(lines)
