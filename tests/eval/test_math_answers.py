"""The strict scorer's answer extraction and equivalence (eval/math/answers.py) on hand-written generations, including
the three extraction bugs of the audit (no model, no data files). Both modes side by side: test_math_tricky.py."""
from __future__ import annotations

import pytest

from eval.math.answers import (answer_segment, extract_choice, extract_latex, extract_number, extract_text,
                               last_boxed, latex_equal, latex_value, normalize_latex, normalize_number,
                               number_correct, text_correct)

# --- numbers (GSM8K, NumGLUE) ------------------------------------------------------------------------------------------
NUMBER_CASES = [
    ("She makes 9 * 2 = $18 every day.\nThe answer is 18", "18"),
    ("The answer is: $1,234.50.", "1234.5"),                      # dollar sign, thousands separator, trailing period
    ("Total = 1,000,000 dollars. The answer is 1,000,000", "1000000"),
    ("The temperature drops to -7 degrees. The answer is -7.", "-7"),
    ("The answer is \u221212", "-12"),                              # unicode minus sign
    ("He pays 3 + 4.\n#### 7", "7"),                                # GSM8K's own marker
    ("So x = 42.", "42"),                                           # no trigger: last number
    ("The answer is 0.50", "0.5"),
    ("The answer is 18.00 dollars", "18"),
    ("The answer is 3/4 of a pie", "0.75"),                         # a fraction counts as its value
    ("The area is 25 cm^2", "25"),                                  # the unit's exponent is no answer
    ("Therefore the final answer is $\\boxed{96}$.", "96"),
    ("We compute 5 + 5 = 10 and so \\boxed{10} eggs remain, then 3 more", "10"),  # boxed beats the last number
    ("The answer is 12 apples (from 3 baskets of 4).", "12"),     # after the trigger the FIRST number counts
    ("First 2 + 3 = 5, then 5 * 4 = 20.", "20"),
    ("I am not sure.", ""),
    ("**Answer:** 64", "64"),                                      # markdown "Answer:" line
    ("The answer is 25%.", "25"),
    ("The answer is 12. Check: 12*2 = 24", "12"),                   # the answer sentence, not the check after it
    ("The answer is:\n\\[ 6 + 4 = \\boxed{10} \\]", "10"),        # a box on a later line than the trigger
    ("Thus 7 + 3 = 10, and our answer is correct.", "10"),          # "our answer is" is prose, not a trigger
]


@pytest.mark.parametrize("generation, expected", NUMBER_CASES)
def test_extract_number(generation, expected):
    assert extract_number(generation) == expected


def test_number_comparison_is_numeric_not_textual():
    assert number_correct("18", "18") and number_correct("18.0", "18") and number_correct("0.5", "0.50")
    assert not number_correct("", "18") and not number_correct("19", "18") and not number_correct("-18", "18")
    assert normalize_number("1536") == "1536" and normalize_number("7.50") == "7.5"


def test_worded_answers():
    assert extract_text("He left in February and came back 6 months later.\nThe answer is August.") == "August"
    assert text_correct("august", "August") and not text_correct("Augusta", "August")


# --- option letters (AQuA, SAT, MMLU-Math) -----------------------------------------------------------------------------
CHOICES = {"A": "5", "B": "6", "C": "12", "D": "\\frac{1}{2}", "E": "None of these"}
CHOICE_CASES = [
    ("Let's compute. 3 * 4 = 12. The answer is (C).", "C"),
    ("The answer is: C", "C"),
    ("the answer is c) 12", "C"),                                 # lower-case letter in its option form
    ("Answer: D", "D"),
    ("So the correct option is B.", "B"),
    ("Thus, we pick choice (E) because nothing else fits.", "E"),  # no trigger: explicit "(E)"
    ("A train leaves at noon. A car follows. (B) is right.", "B"),  # the article "A" is no option
    ("The answer is a bit subtle, but option D holds.", "D"),       # "a" after the trigger is not option A
    ("Final result: \\boxed{B}", "B"),
    ("The answer is 12.", "C"),                                     # no letter: matched by the option's text
    ("The answer is \\frac{1}{2}", "D"),                            # option text given in LaTeX
    ("The answer is 0.5", "D"),                                     # ... or by value
    ("The answer is (F).", ""),                                     # F is not one of the options
    ("I cannot decide between them.", ""),
    ("The options are A) 5 B) 6 C) 12 D) 1/2 E) none", ""),           # listing the options picks none
    ("### Answer:\nB: 6", "B"),                                       # "B: 6" right after the trigger
    ("5sqrt(10) is the diameter.\nanswer = B", "B"),                  # AQuA rationales' own ways of naming it
    ("(4 + 6) = 10 ANS:D", "D"),
    ("So 40 sales\nD is the correct choice", "D"),
    ("x = 230\nB", "B"),                                              # the letter alone on the last line
    ("The answer is (B). It is not (C).", "B"),                       # the answer sentence ends at its period
]


@pytest.mark.parametrize("generation, expected", CHOICE_CASES)
def test_extract_choice(generation, expected):
    assert extract_choice(generation, CHOICES) == expected


def test_choice_extraction_needs_options():
    with pytest.raises(ValueError, match="options"):
        extract_choice("The answer is A", {})


# --- MATH: LaTeX extraction ----------------------------------------------------------------------------------------------
LATEX_EXTRACTION_CASES = [
    ("So $x = \\boxed{\\frac{a}{b}}$.", "\\frac{a}{b}"),
    ("The sum is $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}"),  # nested braces inside \boxed
    ("First \\boxed{1}, corrected: \\boxed{2}", "2"),                       # the LAST box
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("The answer is: \\boxed{(-\\infty, 3]}", "(-\\infty, 3]"),
    ("The answer is 90\\text{ square\nunits}.", "90\\text{ square units}"),  # brace left open continues the line
    ("We find x = 5, so 7 apples", "7"),                                     # no trigger, no box: last number
    ("\\boxed 5$ is it", "5"),
    ("cut off \\boxed{\\frac{1}{", "1"),                         # unbalanced box is ignored: last number
    ("The answer is $\\$40$.", "\\$40"),                          # dollars inside math delimiters (was "\\")
    ("The answer is \\(\\frac{3}{4}\\).", "\\frac{3}{4}"),
    ("The answer is 12. Check: $12 \\cdot 2 = 24$", "12"),
    ("so our answer is correct.\n$\\boxed{4}$", "4"),                # prose is no trigger: the box counts
    ("The answer IS a multiple of 3, so \\boxed{42}", "42"),
    ("$=\\boxed{\\frac{130}{231}}$. The final answer is positive, because two of the three numbers are negative.",
     "\\frac{130}{231}"),                                               # a trigger followed by prose: the box wins
    ("The desired answer is \\begin{align*}\n&= 1024 - 56 \\\\\n&= \\boxed{968}.\n\\end{align*}", "968"),
]


@pytest.mark.parametrize("generation, expected", LATEX_EXTRACTION_CASES)
def test_extract_latex(generation, expected):
    assert extract_latex(generation) == expected


def test_last_boxed_and_segment():
    assert last_boxed("no box here") is None
    assert last_boxed("\\fbox{7}") == "7"
    assert answer_segment("no trigger") is None
    assert answer_segment("The answer is:\n\n18\nmore text") == "18"
    assert answer_segment("The answer is 3.5. Then more.") == "3.5"      # a decimal point ends no sentence
    assert answer_segment("so our answer is right") is None and answer_segment("Final Answer: 7") == "7"


# --- MATH: equivalence ---------------------------------------------------------------------------------------------------
EQUIVALENT = [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("-\\frac{3}{4}", "-0.75"),
    ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"),
    ("2\\sqrt{2}", "\\sqrt{8}"),                                   # equal in value
    ("5\\text{ cm}", "5"),
    ("5 \\text{ cm}^2", "5"),
    ("\\$18.50", "18.5"),
    ("30^\\circ", "30"),
    ("30^{\\circ}", "30"),
    ("45\\%", "45"),
    ("x = 5", "5"),
    ("k=3", "3"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("[0, \\frac12)", "[0,0.5)"),
    ("x \\in [2, 5)", "[2,5)"),
    ("1,\\!000", "1000"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\boxed{7}", "7"),
    ("2,-3", "2, -3.0"),
    (".5", "0.5"),
    ("3\\pi", "3\\pi"),
    ("10", "10.0"),
]
NOT_EQUIVALENT = [
    ("0.33", "\\frac{1}{3}"),                                       # rounding is not equality
    ("3.14", "\\pi"),
    ("(1,2)", "[1,2]"),                                             # open vs closed interval
    ("(1,2)", "(2,1)"),
    ("5", "-5"),
    ("", "0"),
    ("x+1", "x+2"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("2\\sqrt{2}", "2\\sqrt{3}"),
]


@pytest.mark.parametrize("predicted, gold", EQUIVALENT)
def test_latex_equivalent(predicted, gold):
    assert latex_equal(predicted, gold), (normalize_latex(predicted), normalize_latex(gold))


@pytest.mark.parametrize("predicted, gold", NOT_EQUIVALENT)
def test_latex_not_equivalent(predicted, gold):
    assert not latex_equal(predicted, gold)


def test_latex_value_is_safe_and_bounded():
    assert latex_value("\\frac{1}{4}") == 0.25
    assert latex_value("__import__('os')") is None                   # text is never executed
    assert latex_value("9^{999999}") is None                          # huge powers are refused, not computed
    assert latex_value("\\frac{1}{0}") is None
