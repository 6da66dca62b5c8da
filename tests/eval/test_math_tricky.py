"""A table of tricky model outputs with the verdict each scoring mode must give (eval/math/README.md explains every
row where the modes differ). Items are built by hand: no model, no data files."""
from __future__ import annotations

import pytest

from eval.math.readers import ALL_OPTION_LETTERS, MathItem
from eval.math.scoring import score_output
from eval.math.tasks import DEFAULT_TRIGGERS

CHOICES = {"A": "5", "B": "6", "C": "12", "D": "\\frac{1}{2}", "E": "None of these"}
GSM8K_TRIGGERS = DEFAULT_TRIGGERS["number"] + ("####",)


def choice(gold="C", choices=None):
    choices = choices or CHOICES
    return MathItem("aqua", 0, "Q?", gold, choices, answer_type="choice", gold_text=gold,
                    triggers=DEFAULT_TRIGGERS["choice"], scan_letters=ALL_OPTION_LETTERS)


def gsm8k(gold="18"):
    return MathItem("gsm8k", 0, "Q?", gold, answer_type="number", gold_text=gold, triggers=GSM8K_TRIGGERS)


def numglue(gold, choices=None):
    return MathItem("numglue", 0, "Q?", gold, choices or {}, answer_type="number", gold_text=gold,
                    triggers=DEFAULT_TRIGGERS["number"], scan_letters="AB")


def math(gold):
    return MathItem("math", 0, "Q?", gold, answer_type="math", gold_text=gold, triggers=DEFAULT_TRIGGERS["math"])


# (item, output, verdict under mammoth, verdict under strict)
TRICKY = [
    # --- multiple choice (AQuA, SAT, MMLU-Math) ---------------------------------------------------------------------
    (choice(), "3 * 4 = 12. The answer is (C).", True, True),
    (choice(), "The answer is: C", True, True),
    (choice(), "the answer is c) 12", True, True),                          # lower-case trigger and letter
    (choice(), "**Answer:** C", True, True),
    (choice(), "Final result: \\boxed{C}", True, True),
    (choice(), "Between (B) and (C), (C) fits.\n#### C", True, True),
    (choice(), "The answer is a bit subtle, but option C holds.", False, True),   # MAmmoTH: the article "a" is A
    (choice(), "Option C is right, not A.", False, True),                   # MAmmoTH: the last lone letter, A
    (choice(), "The answer is 12.", False, True),                           # strict: matched by the option's text
    (choice(), "The answer is 0.5", False, False),                          # gold C: option D by value, wrong
    (choice("D"), "The answer is 0.5", False, True),                        # strict: \frac{1}{2} by value
    (choice("A"), "No idea.", True, False),                                 # MAmmoTH: no letter defaults to A
    (choice(), "The answer is, I believe, C.", False, True),                # MAmmoTH: the pronoun "I" is option I
    (choice(), "The answer is (F).", False, False),                         # F is not among the options
    (choice(), "The options are A) 5 B) 6 C) 12 D) 1/2 E) none", False, False),   # listing options picks none
    (choice(), "Let me see.\n\nThe answer is (C).\nThe answer is (C).", False, True),  # MAmmoTH's few-shot guard
    (choice(), "Hence 12 cm.\nC", True, True),                              # a bare letter as the last line
    (choice(), "C is the correct answer", True, True),
    (choice("B"), "Answer: B. Option C is wrong.", False, True),            # MAmmoTH's choice triggers: no "Answer:"
    # --- open numbers (GSM8K) ---------------------------------------------------------------------------------------
    (gsm8k(), "She makes 9 * 2 = $18 every day.\nThe answer is 18", True, True),
    (gsm8k("1234.5"), "The answer is: $1,234.50.", True, True),
    (gsm8k(), "The answer is 18.00 dollars", True, True),
    (gsm8k("0.75"), "The answer is 3/4 of a pie", True, True),
    (gsm8k("-12"), "The answer is \u221212", False, True),                  # unicode minus: MAmmoTH reads 12
    (gsm8k("12"), "The answer is 12 apples (from 3 baskets of 4).", True, True),
    (gsm8k("20"), "First 2 + 3 = 5, then 5 * 4 = 20.", True, True),        # no trigger: the last number
    (gsm8k(), "He pays 3 + 4.\n#### 18", True, True),
    (gsm8k(), "The answer is 18.0000001", False, True),                     # strict: within a relative 1e-6
    (gsm8k("96"), "Therefore the final answer is $\\boxed{96}$.", True, True),
    (gsm8k(), "The answer is 5. Wait, 5 + 13 = 18.", False, False),         # the first number after the trigger
    (gsm8k("12"), "The answer is 12. Check: 12*2 = 24", True, True),        # bug fix: not the check's 24
    (gsm8k("5"), "Final Answer: 5\nCheck: 5 + 1 = 6", False, True),          # MAmmoTH: no trigger, last number 6
    # --- NumGLUE: numbers, two options, words -----------------------------------------------------------------------
    (numglue("5"), "The answer is a total of 5 apples.", False, True),      # MAmmoTH: "a" is option A
    (numglue("August"), "He came back 6 months later.\nThe answer is August.", False, True),  # MAmmoTH: numbers only
    (numglue("B", {"A": "web", "B": "tree"}), "The answer is (B) tree.", True, True),
    (numglue("B", {"A": "web", "B": "tree"}), "The answer is tree.", False, True),   # strict: the option's text
    # --- MATH -------------------------------------------------------------------------------------------------------
    (math("\\frac{1}{2}"), "The answer is $\\frac{1}{2}$.", True, True),
    (math("\\frac{1}{2}"), "The answer is 0.5", True, True),                # equal in value
    (math("\\frac{1}{2}"), "The answer is \\dfrac12", True, True),
    (math("\\frac{1}{3}"), "The answer is 0.33", True, False),              # MAmmoTH: within 4%
    (math("3"), "The answer is 2.6", True, False),                          # MAmmoTH: round(2.6) == 3
    (math("0"), "The answer is 0.01", True, False),                         # MAmmoTH: round(0.01) == 0
    (math("\\$18.90"), "The answer is $\\$18.90$.", True, True),            # bug fix: not "\"
    (math("12"), "The answer is 12. Check: 12*2 = 24", True, True),         # bug fix: not 24
    (math("4"), "Plugging in, our answer is correct.\n\\boxed{4}", True, True),   # bug fix: prose is no trigger
    (math("10"), "The answer is:\n\\[ x = \\boxed{10} \\]", True, True),   # bug fix: a box on the next line
    (math("968"), "The desired answer is \\begin{align*}\n&= 1024 - 56 \\\\\n&= \\boxed{968}.\n\\end{align*}",
     True, True),
    (math("14\\pi"), "The answer is 14 \\pi.", False, True),               # MAmmoTH: "14 \pi" read as 14 + unit
    (math("x^2 + y^2 = 13"), "The answer is x^2 + y^2 = 13.", False, True),   # MAmmoTH: right of the '='
    (math("5"), "The answer is 5 cm.", True, False),                        # MAmmoTH drops a worded unit
    (math("1"), "The answer is 1 - x.", True, False),                       # ... and so reads "1 - x" as 1
    (math("2\\sqrt{2}"), "The answer is \\sqrt{8}", True, True),
    (math("\\text{(C)}"), "The answer is \\text{(C)}.", True, True),
    (math("(1,2)"), "The answer is (2,1)", False, False),
    (math("(1,2)"), "The answer is (1, 2.0)", False, True),                 # strict: element by element
    (math("\\frac{1}{2}"), "cut off \\boxed{\\frac{1}{", False, False),    # a box left open is no answer
]


@pytest.mark.parametrize("item, output, mammoth, strict", TRICKY,
                         ids=[f"{row[0].dataset}-{i}" for i, row in enumerate(TRICKY)])
def test_tricky_outputs(item, output, mammoth, strict):
    assert score_output(item, output, "mammoth")["correct"] is mammoth, score_output(item, output, "mammoth")
    assert score_output(item, output, "strict")["correct"] is strict, score_output(item, output, "strict")


def test_the_table_is_large_and_shows_the_differences():
    assert len(TRICKY) >= 40
    differ = [row for row in TRICKY if row[2] != row[3]]
    assert len(differ) >= 15 and {row[0].dataset for row in differ} == {"aqua", "gsm8k", "numglue", "math"}


def test_mammoth_fallback_is_reported():
    verdict = score_output(choice("A"), "No idea.", "mammoth")
    assert verdict == {"extracted": "A", "correct": True, "fallback": True}
    assert "fallback" not in score_output(choice(), "The answer is (C).", "mammoth")
