"""Every gold answer of the six shared datasets, written the ways a model writes it, through both scoring modes: at
least 99.5% must score correct in each dataset, form and mode, and a wrong answer must never score. The datasets' own
worked solutions (GSM8K, MATH, AQuA rationales) are scored too. Measured rates: eval/math/README.md (about 5 s)."""
from __future__ import annotations

import re

import pytest

from eval.math import DATASETS, load_items, read_records
from eval.math.answers import latex_equal, to_number
from eval.math.mammoth import gold_value, strip_string
from eval.math.scoring import SCORING_MODES, score_output

GOLD_FORMS = {
    "trigger": "Step 1: 3 + 4 = 7.\nThe answer is {gold}.",
    "dollars": "So we are done.\nThe answer is ${gold}$.",
    "boxed": "We get 12 and so on. Hence the result is \\boxed{{{gold}}}.",
}
# The dataset's own worked solution -> the least share that must score correct, per mode. GSM8K and MATH solutions
# state their answer as a model does ("#### 18", \boxed{}); AQuA's rationales often name no option at all
# ("... = 33 seconds."), where only MAmmoTH's default letter A can be right by chance.
SOLUTIONS = {("gsm8k", "answer"): {"mammoth": 99.5, "strict": 99.5},
             ("math", "solution"): {"mammoth": 99.5, "strict": 99.5},
             ("aqua", "rationale"): {"mammoth": 95.5, "strict": 94.0}}
REQUIRED_PCT = 99.5


@pytest.fixture(scope="module")
def items():
    return {name: load_items(name) for name in DATASETS}


def _rate(items, outputs, scoring) -> tuple[float, list]:
    failed = [(item.index, item.gold, output[-60:]) for item, output in zip(items, outputs)
              if not score_output(item, output, scoring)["correct"]]
    return 100.0 * (len(items) - len(failed)) / len(items), failed


@pytest.mark.parametrize("scoring", SCORING_MODES)
@pytest.mark.parametrize("name", DATASETS)
def test_gold_answers_score_correct(items, name, scoring):
    for form, template in GOLD_FORMS.items():
        rate, failed = _rate(items[name], [template.format(gold=item.gold) for item in items[name]], scoring)
        assert rate >= REQUIRED_PCT, (form, rate, failed[:10])


@pytest.mark.parametrize("scoring", SCORING_MODES)
@pytest.mark.parametrize("name, field", list(SOLUTIONS))
def test_worked_solutions_score_correct(items, name, field, scoring):
    rate, failed = _rate(items[name], [record[field] for record in read_records(name)], scoring)
    assert rate >= SOLUTIONS[(name, field)][scoring], (rate, failed[:10])


def _differs(answer: str, gold: str) -> bool:
    """Clearly another answer: not equal after either normalisation, not within MAmmoTH's 4% in value, and not
    rounding to a whole gold (MAmmoTH compares round(answer) with whole golds)."""
    if latex_equal(answer, gold) or strip_string(answer) == strip_string(gold):
        return False
    if re.match(r"[\d.]+\s\D+$", answer):  # MAmmoTH reads "1 - x" as 1 and a unit (test_math_tricky.py shows it)
        return False
    a, b = gold_value(answer), gold_value(gold)
    if a is None or b is None:
        return True
    return abs(a - b) > 0.05 * max(abs(a), abs(b)) and not (float(b).is_integer() and round(a) == b)


def _wrong_answers(items) -> list[tuple]:
    """(item, a wrong answer): the next option letter; twice the number plus 7; another MATH item's gold."""
    pairs = []
    for item, other in zip(items, items[1:] + items[:1]):
        if item.choices:
            letters = list(item.choices)
            pairs.append((item, f"({letters[(letters.index(item.gold) + 1) % len(letters)]})"))
        elif item.kind == "number":
            pairs.append((item, str(to_number(item.gold) * 2 + 7)))
        elif item.kind == "text":
            pairs.append((item, "nothing"))
        elif _differs(other.gold, item.gold):
            pairs.append((item, other.gold))
    return pairs


@pytest.mark.parametrize("scoring", SCORING_MODES)
@pytest.mark.parametrize("name", DATASETS)
def test_wrong_answers_never_score(items, name, scoring):
    pairs = _wrong_answers(items[name])
    assert len(pairs) >= 0.9 * len(items[name])
    scored = [(item.index, item.gold, wrong) for item, wrong in pairs
              if score_output(item, f"Step 1: 3 + 4 = 7.\nThe answer is {wrong}.", scoring)["correct"]]
    assert scored == []
