"""MAmmoTH-compatible answer cleaning and comparison: the default scorer, because the BAdam paper's Table 6 numbers were
measured with MAmmoTH's evaluation.

Source of the rules: TIGER-AI-Lab/MAmmoTH `math_eval` (utils.py: answer_clean, extract_math_answer, _strip_string,
delete_extra_zero, compare_answer_with_groundtruth; number_utils.py: number_it, compare_two_numbers; run_choice.py:
the option fallback; run_open.py: the triggers). That repository cannot be fetched here; its rules were read in
TIGER-AI-Lab/MAmmoTH2's `math_eval` (same authors, same scripts) and in forks of MAmmoTH's `math_eval`. This module
reimplements the behaviour from that reading; no code was copied. The MATH string normalisation is the one of the
MATH paper's `is_equiv` (hendrycks/math), as MAmmoTH uses it, plus MAmmoTH's dollar stripping.

An output is cleaned in these steps:
1. newlines at both ends are dropped; if a trigger occurs more than once (MAmmoTH's guard against a model that goes
   on with new few-shot examples), only the text before the first blank line is kept;
2. the text is split at the triggers ("The answer is" ...); what follows the last one is kept and the "answer flag"
   is set; without a trigger the whole text is kept;
3. newlines, trailing '.' and '/', and spaces are stripped;
4. candidates by answer type:
   - choice: the text upper-cased, every standalone letter A-J (so the article "a" is option A); if none, the text;
   - number: for a task with option letters (NumGLUE: A, B) those letters first; else every number
     `-?\\d+/?\\.?\\d*` with commas removed, each without trailing zeros ("18.00" -> "18", "3/4" -> "0.75");
   - math: the last \\boxed{} if any; else after a trigger the text right of the last '=' ("5 cm" -> "5"); else the
     last number; then the MATH normalisation (`strip_string`);
5. the first candidate when the flag is set, else the last; trailing '.' and '/' dropped;
6. verdict: choice: an answer that is not a letter A-J becomes "A" (run_choice.py's fallback), then it must equal
   the gold letter; open: equal to the gold ignoring case (after dropping "\\text{" wrappers), or, where the gold
   has a numeric value (MATH), equal in value: round(answer) == gold for whole golds, within 4% for others.

Departures from MAmmoTH, each also in README.md with an example:
- after a trigger a MATH answer ends at the end of its sentence or line ("The answer is 12. Check: 12*2 = 24"
  gives 12; MAmmoTH takes the right side of the last '=' in the whole rest of the output: 24);
- the numeric value of a MATH gold is computed here (`gold_value`); MAmmoTH read it from its MATH.json, whose blob
  is absent from the shared data (shared/data/SOURCES.md);
- values are computed with eval.math.answers.latex_value (a parsed syntax tree, pi exact) instead of Python's
  `eval` and latex2sympy (pi as 3.14);
- no model call to map an answer onto the nearest option (MAmmoTH's `--match_answer self`); the 'A' fallback is
  its other mode and the only one in MAmmoTH2.
"""
from __future__ import annotations

import math
import re

from .answers import latex_value, to_number

CHOICE_LETTERS = "ABCDEFGHIJ"
_NUMBER_CANDIDATE = re.compile(r"-?\d+/?\.?\d*")
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
_VALUE_WITH_UNIT = re.compile(r"[\d.]+\s\D+$")      # "5 cm": a number, a space, then no digit to the end
_SENTENCE_END = re.compile(r"\.(?=\s)|\n")
_RELATIVE_TOLERANCE = 0.04                            # MAmmoTH's within_eps


# --- MATH normalisation (hendrycks/math is_equiv's _strip_string, with MAmmoTH's '$' stripping) ---------------------
def _fix_sqrt(text: str) -> str:
    """\\sqrt3 -> \\sqrt{3} (only the first character after \\sqrt is taken, as in the MATH code)."""
    parts = text.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt" + (part if not part or part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return out


def _fix_fracs(text: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}; the text is kept as it is when a \\frac lacks two
    characters."""
    parts = text.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part or part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return text
        first, second, rest = part[0], part[1], part[2:]
        out += "{" + first + "}" + (second + rest if second == "{" else "{" + second + "}" + rest)
    return out


def _fix_slash(text: str) -> str:
    """ "3/4" -> \\frac{3}{4}, only for two plain integers."""
    parts = text.split("/")
    if len(parts) == 2 and all(re.fullmatch(r"-?\d+", p) for p in parts) and text == f"{int(parts[0])}/{int(parts[1])}":
        return f"\\frac{{{int(parts[0])}}}{{{int(parts[1])}}}"
    return text


def strip_string(text: str) -> str:
    """The MATH answer normalisation MAmmoTH applies to extracted and gold answers."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.strip("$").replace("\\$", "")
    if "\\text{ " in text:                      # a unit on the right ("5 \text{ cm}")
        text = text.split("\\text{ ")[0]
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 3" -> " 3"
        text = sides[1]
    text = _fix_sqrt(text).replace(" ", "")
    return _fix_slash(_fix_fracs(text))


def find_box(text: str) -> str:
    """What follows the last "boxed": the balanced {...} content, or up to the next '$' ("\\boxed 5$")."""
    rest = text.split("boxed")[-1]
    if not rest:
        return ""
    if rest[0] != "{":
        return rest.split("$")[0].strip()
    depth, out = 0, []
    for char in rest:
        depth += (char == "{") - (char == "}")
        if depth == 0:
            break
        out.append(char)
    return "".join(out[1:])


# --- numbers -----------------------------------------------------------------------------------------------------------
def drop_trailing_zeros(text: str) -> str:
    """MAmmoTH's delete_extra_zero: "18.00" -> "18", "0.50" -> "0.5", "3/4" -> "0.75"; other text unchanged."""
    value = to_number(text)
    if value is None:
        return text
    shown = repr(float(value)).rstrip("0")
    return str(int(shown[:-1])) if shown.endswith(".") else repr(float(shown))


def _plain_value(text: str) -> float | int | None:
    """MAmmoTH's number_it: the value of an answer (units, '$', '%' and degrees dropped), an int when whole."""
    text = text.replace("%", "/100").replace("$", "").replace("\u00b0C", "").replace(" C", "").replace("\u00b0", "")
    value = to_number(text.replace(",", ""))
    if value is None:
        value = latex_value(strip_string(text))
    if value is None or not math.isfinite(value):
        return None
    return int(round(value)) if float(value).is_integer() else float(value)


def gold_value(gold: str) -> float | int | None:
    """The numeric value of a MATH gold answer (None when it is no number: intervals, expressions, words)."""
    return _plain_value(strip_string(gold))


def _values_match(predicted: float | int | None, gold: float | int) -> bool:
    if predicted is None or (isinstance(predicted, float) and math.isnan(predicted)):
        return False
    if isinstance(gold, int):
        return round(predicted) == gold
    return abs(predicted - gold) <= abs(gold) * _RELATIVE_TOLERANCE


# --- cleaning ----------------------------------------------------------------------------------------------------------
def _after_triggers(output: str, triggers: tuple[str, ...]) -> tuple[str, bool]:
    text = output.strip("\n")
    if any(text.count(trigger) > 1 for trigger in triggers):
        text = text.split("\n\n")[0]
    pieces = re.split("|".join(re.escape(t) for t in triggers), text) if triggers else [text]
    return pieces[-1], len(pieces) > 1


def _math_candidate(text: str, flagged: bool) -> str:
    if "boxed" in text:
        answer = find_box(text)
    elif flagged:
        # Departure (bug fix): the answer ends with its sentence or line, before any later check or working.
        head = text.strip()
        head = _SENTENCE_END.split(head, maxsplit=1)[0] if head else head
        answer = head.split("=")[-1].strip()
        if _VALUE_WITH_UNIT.match(answer):
            answer = answer.split(" ")[0]
    else:
        numbers = _LAST_NUMBER.findall(text)
        answer = numbers[-1] if numbers else ""
    return strip_string(answer)


def clean_answer(output: str, *, answer_type: str, triggers: tuple[str, ...], scan_letters: str = "") -> str:
    """The answer MAmmoTH reads from `output` (before the option fallback)."""
    text, flagged = _after_triggers(output, tuple(triggers))
    text = text.strip("\n").rstrip(".").rstrip("/").strip(" ")
    letters = CHOICE_LETTERS if answer_type == "choice" else scan_letters
    candidates: list[str] = []
    if letters:
        candidates = re.findall(rf"\b([{letters}])\b", text.upper())
        if not candidates and answer_type == "choice":
            candidates = [text.strip().strip(".")]
    if not candidates and answer_type == "math":
        candidates = [_math_candidate(text, flagged)]
    elif not candidates and answer_type != "choice":
        candidates = [drop_trailing_zeros(n) for n in _NUMBER_CANDIDATE.findall(text.replace(",", ""))]
    if not candidates:
        return ""
    answer = candidates[0] if flagged else candidates[-1]
    return answer.rstrip(".").rstrip("/")


def _drop_text_wrappers(text: str) -> str:
    return text.replace("\\text{", "").rstrip("}") if "\\text{" in text else text


def answers_match(answer: str, gold: str, value: float | int | None = None) -> bool:
    """MAmmoTH's compare_answer_with_groundtruth for open answers."""
    answer, gold = _drop_text_wrappers(answer), _drop_text_wrappers(gold)
    if gold.lower() in {f"({c})" for c in "abcdef"}:
        return gold.lower() in answer.lower()
    if answer.lower() == gold.lower():
        return True
    return value is not None and _values_match(_plain_value(answer), value)


def choice_answer(cleaned: str) -> tuple[str, bool]:
    """run_choice.py: an answer that is no option letter defaults to "A". Returns (answer, fell_back)."""
    return (cleaned, False) if cleaned in CHOICE_LETTERS and len(cleaned) == 1 else ("A", True)
