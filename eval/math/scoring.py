"""The two scoring modes of eval.math, behind one interface.

- "mammoth" (default): MAmmoTH's answer cleaning and comparison (eval/math/mammoth.py), the rules the paper's
  Table 6 numbers were measured with, with the three extraction bugs of the audit fixed;
- "strict": this project's stricter rules (eval/math/answers.py): an option letter must be written as an option,
  numbers are compared exactly, MATH answers by a LaTeX normalisation and exact value.

README.md lists every difference between the two with an example.
"""
from __future__ import annotations

from functools import lru_cache

from . import answers, mammoth
from .readers import MathItem

SCORING_MODES = ("mammoth", "strict")
DEFAULT_SCORING = "mammoth"


def check_scoring(scoring: str) -> str:
    if scoring not in SCORING_MODES:
        raise ValueError(f"unknown scoring mode {scoring!r}; valid choices: {', '.join(SCORING_MODES)}")
    return scoring


def score_output(item: MathItem, output: str, scoring: str = DEFAULT_SCORING) -> dict:
    """{"extracted": the answer read from `output`, "correct": bool} (+ "fallback": True where MAmmoTH's rule put
    "A" in place of an answer that names no option)."""
    check_scoring(scoring)
    if scoring == "strict":
        extracted = _strict_extract(item, output)
        return {"extracted": extracted, "correct": _strict_correct(item, extracted)}
    return _mammoth_score(item, output)


# --- strict ------------------------------------------------------------------------------------------------------------
def _strict_extract(item: MathItem, output: str) -> str:
    if item.kind == "choice":
        return answers.extract_choice(output, item.choices)
    if item.kind == "latex":
        return answers.extract_latex(output)
    if item.kind == "text":
        return answers.extract_text(output)
    return answers.extract_number(output)


def _strict_correct(item: MathItem, extracted: str) -> bool:
    if item.kind == "choice":
        return extracted == item.gold
    if item.kind == "latex":
        return answers.latex_equal(extracted, item.gold)
    if item.kind == "text":
        return answers.text_correct(extracted, item.gold)
    return answers.number_correct(extracted, item.gold)


# --- MAmmoTH -----------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _mammoth_gold(answer_type: str, gold_text: str) -> tuple[str, float | int | None]:
    """The gold as MAmmoTH's data_loader holds it: MATH answers normalised (with a numeric value where they have
    one), numbers without commas and trailing zeros, letters and words as written."""
    if answer_type == "math":
        return mammoth.strip_string(gold_text), mammoth.gold_value(gold_text)
    if answer_type == "number":
        return mammoth.drop_trailing_zeros(gold_text.replace(",", "")), None
    return gold_text, None


def _mammoth_correct(item: MathItem, extracted: str) -> bool:
    if item.answer_type == "choice":
        return extracted == item.gold
    gold_text = item.gold if item.choices else (item.gold_text or item.gold)
    gold, value = _mammoth_gold(item.answer_type, gold_text)
    return mammoth.answers_match(extracted, gold, value)


def _mammoth_score(item: MathItem, output: str) -> dict:
    cleaned = mammoth.clean_answer(output, answer_type=item.answer_type, triggers=item.triggers,
                                   scan_letters=item.scan_letters)
    if item.answer_type != "choice":
        return {"extracted": cleaned, "correct": _mammoth_correct(item, cleaned)}
    picked, fell_back = mammoth.choice_answer(cleaned)
    result = {"extracted": picked, "correct": _mammoth_correct(item, picked)}
    return {**result, "fallback": True} if fell_back else result


# --- the record-level helpers the runner and `score` use ---------------------------------------------------------------
def extract_answer(item: MathItem, output: str, scoring: str = DEFAULT_SCORING) -> str:
    return score_output(item, output, scoring)["extracted"]


def is_correct(item: MathItem, extracted: str, scoring: str = DEFAULT_SCORING) -> bool:
    """The verdict on an answer `extract_answer` read with the same scoring mode."""
    return _strict_correct(item, extracted) if check_scoring(scoring) == "strict" else _mammoth_correct(item, extracted)
