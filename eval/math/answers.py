"""Answer extraction and equivalence of the strict scoring mode (`--scoring strict`), and the number / LaTeX helpers
both modes use.

Conventions follow MAmmoTH's math_eval (TIGER-AI-Lab/MAmmoTH, `utils.answer_clean` / `data_loader.extract_math_answer`)
and the MATH paper's `is_equiv` (hendrycks/math): the answer is what follows the LAST answer trigger ("The answer
is", "The final answer is", "####", or "Answer:" opening a line), else the last `\\boxed{}`, else the last number;
MATH answers are compared after a LaTeX normalisation (\\dfrac -> \\frac, \\left/\\right, degrees, dollars, percent,
trailing units, "x = 5" -> "5", \\frac12 -> \\frac{1}{2}, a/b -> \\frac{a}{b}, spaces). After a trigger the answer ends
with its sentence ("12. Check: 12*2 = 24" gives 12); a \\boxed{} anywhere after the trigger wins over the trigger's own
line; a trigger followed by prose is ignored when the output boxes an answer elsewhere. Stricter than MAmmoTH
(eval/math/mammoth.py; README.md lists every difference with an example):
- numbers: thousands separators, `$`, unicode minus and trailing units are handled; "0.5" equals "\\frac{1}{2}" (both
  sides are evaluated numerically when they are plain arithmetic: whole numbers must match exactly, others within
  a relative 1e-6);
- option letters: MAmmoTH upper-cases the text and takes any lone A-J, so the article "a" counts as option A; here a
  letter must stand as an option (in parentheses, after "answer/option/choice", or alone after the trigger) and
  belong to the item's options; if no letter is given, an answer equal to one option's text selects that option;
- tuples and intervals are compared element by element.
"""
from __future__ import annotations

import ast
import math
import operator
import re

# "The answer is: 5", "the final answer is 5", "#### 5" (GSM8K's own marker), "Answer: 5" / "**Final Answer:** 5" at
# the start of a line. "answer is" alone is prose ("so our answer is correct", "the desired answer is"), and so is
# "the answer IS a multiple of 3": the verb must be lower-case.
_TRIGGER = re.compile(r"\b(?:[Tt]he\s+(?:[Ff]inal\s+)?|[Ff]inal\s+)[Aa]nswer\s+is\b\s*:?|####"
                      r"|^[ \t*#>_-]*(?i:final\s+)?(?i:answer)\s*:", re.MULTILINE)
# The end of the sentence that states the answer: a period before whitespace (not a decimal point).
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
# A trigger followed by this many words is prose ("The final answer is positive, because ..."), not an answer.
_PROSE_WORDS = 6
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*-?\d+(?:\.\d+)?)?")
_REL_TOL = 1e-6


# --- generic pieces ----------------------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces), or of `\\boxed 5`; None if there is none."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\b", text)]
    if not starts:
        return None
    rest = text[starts[-1].end():].lstrip()
    if not rest.startswith("{"):
        # "\boxed 5$" form: up to the closing dollar or whitespace
        return re.split(r"[\s$]", rest, maxsplit=1)[0] or None
    depth = 0
    for pos, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:pos].strip()
    return None  # unbalanced: the generation was cut off inside the box


def _last_trigger(generation: str) -> re.Match | None:
    matches = list(_TRIGGER.finditer(generation))
    return matches[-1] if matches else None


def answer_segment(generation: str) -> str | None:
    """The answer sentence after the last trigger ("The answer is ..."), or None if the generation has no trigger."""
    trigger = _last_trigger(generation)
    if trigger is None:
        return None
    tail = generation[trigger.end():]
    # The answer sits on the trigger's line, or on the next non-empty one ("The answer is:\n18"); a line that
    # opens a brace it does not close continues on the next ("90\text{ square\nunits}").
    segment = ""
    for line in tail.split("\n"):
        segment = f"{segment} {line.strip()}".strip()
        if segment and segment.count("{") <= segment.count("}"):
            break
    # It ends with its sentence: "12. Check: 12*2 = 24" states 12, the rest is a check.
    return _SENTENCE_END.split(segment, maxsplit=1)[0].strip()


def boxed_after_trigger(generation: str) -> str | None:
    """The last \\boxed{} after the last trigger, wherever it is ("The answer is:\n\\[ x = \\boxed{5} \\]")."""
    trigger = _last_trigger(generation)
    return None if trigger is None else last_boxed(generation[trigger.end():])


def _is_prose(segment: str) -> bool:
    """A sentence of words, not an answer: LaTeX commands and math in $...$ do not count as words."""
    plain = re.sub(r"\$[^$]*\$|\\[A-Za-z]+", " ", segment)
    return len(re.findall(r"[A-Za-z]{2,}", plain)) >= _PROSE_WORDS


def normalize_number(value: str | float | int) -> str:
    """Canonical text of a number ("18.00" -> "18", "0.50" -> "0.5", "3/4" -> "0.75"); text that is no number is
    returned stripped."""
    number = to_number(str(value))
    if number is None:
        return str(value).strip()
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return repr(round(number, 10))


def to_number(text: str) -> float | None:
    """A plain number, "a/b", or "1,000" as float; None otherwise."""
    text = text.strip().replace("\u2212", "-").replace(",", "")
    if not re.fullmatch(_NUMBER.pattern, text):
        return None
    if "/" in text:
        num, den = (float(part) for part in text.split("/"))
        return num / den if den else None
    return float(text)


def numbers_equal(a: float | None, b: float | None) -> bool:
    """Whole numbers must match exactly (1450001 is not 1450000); others within a relative 1e-6 (float noise of
    evaluated expressions such as 2\\sqrt{2} vs \\sqrt{8}), never by rounding."""
    if a is None or b is None:
        return False
    if a == int(a) and b == int(b):
        return a == b
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12)


# --- open numeric answers (GSM8K, NumGLUE) -----------------------------------------------------------------------------
def _clean_numeric_text(text: str) -> str:
    text = text.replace("\u2212", "-").replace("\\$", "").replace("$", "").replace("**", "")
    text = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)      # thousands separators: 1,234,567
    text = re.sub(r"(?<=[A-Za-z])\^\{?\d+\}?", "", text)        # unit exponents ("cm^2") are not answers
    return text


def extract_number(generation: str) -> str:
    """The numeric answer of a generation, canonical ("" if none): the first number of the answer sentence after the
    last trigger (or of a \\boxed{} after it), else the number in the last \\boxed{}, else the last number of the
    text (MAmmoTH's order)."""
    segment = answer_segment(generation)
    if segment is not None:
        boxed = boxed_after_trigger(generation)
        candidates = _NUMBER.findall(_after_equals(_clean_numeric_text(boxed if boxed is not None else segment)))
        if candidates:
            return normalize_number(candidates[0].replace(" ", ""))
    boxed = last_boxed(generation)
    if boxed is not None:
        candidates = _NUMBER.findall(_after_equals(_clean_numeric_text(boxed)))
        if candidates:
            return normalize_number(candidates[-1].replace(" ", ""))
    candidates = _NUMBER.findall(_clean_numeric_text(generation))
    return normalize_number(candidates[-1].replace(" ", "")) if candidates else ""


def _after_equals(text: str) -> str:
    """ "x = 5" -> "5": the answer is right of the last equals sign (MAmmoTH does the same)."""
    return text.rsplit("=", 1)[-1] if "=" in text else text


def number_correct(extracted: str, gold: str) -> bool:
    return numbers_equal(to_number(extracted), to_number(gold)) if extracted else False


def extract_text(generation: str) -> str:
    """A worded answer ("August"): the line after the last trigger, else the last non-empty line."""
    segment = answer_segment(generation)
    if segment is None:
        lines = [line.strip() for line in generation.split("\n") if line.strip()]
        segment = lines[-1] if lines else ""
    return (last_boxed(segment) or segment).replace("**", "").strip().rstrip(".").strip()


def text_correct(extracted: str, gold: str) -> bool:
    """The gold word occurs as a whole word in the extracted answer, ignoring case."""
    return bool(gold.strip()) and re.search(rf"\b{re.escape(gold.strip())}\b", extracted, re.IGNORECASE) is not None


# --- multiple choice (AQuA, SAT, MMLU-Math, NumGLUE type 3) ------------------------------------------------------------
def extract_choice(generation: str, choices: dict[str, str]) -> str:
    """The option letter a generation picks ("" if none). After a trigger the first option-like letter counts;
    without one, the last explicit mention ("(C)", "option C", "\\boxed{C}"); failing both, an answer equal to an
    option's text selects it."""
    letters = "".join(choices)
    if not letters:
        raise ValueError("extract_choice needs the item's options, got none")
    cls = f"[{letters}{letters.lower()}]"
    explicit = [
        rf"\\boxed\{{\s*\(?({cls})\)?\s*\}}",                                  # \boxed{C}, \boxed{(C)}
        rf"\(({cls})\)",                                                        # (C)
        # option C, answer: C, Ans = C -- the keyword in any case, the letter upper-case only (else "answer is a
        # ..." would be A)
        rf"\b(?i:option|choice|answer|ans)\s*(?i:is\s*)?[:=.>-]*\s*\(?([{letters}])\b(?![-'])",
        rf"\b([{letters}])\s+is\s+the\s+(?:(?i:correct|right|best)\s+)?(?i:answer|choice|option)\b",  # D is the answer
    ]
    # Only right after a trigger: "C) 12" and a bare letter. Elsewhere they mostly come from the model listing the
    # options ("A) 8 ... E) 20"), which picks none of them.
    after_trigger = [rf"(?<![\w(])({cls})\)", rf"^\(?([{letters}])\b(?![-'])", rf"\b([{letters}])\b(?![-'])"]
    segment = answer_segment(generation)
    if segment is not None:
        segment = segment.replace("**", "")
        found = _first_match(segment, explicit + after_trigger)
        if found:
            return found
    lines = [line.strip() for line in generation.replace("**", "").split("\n") if line.strip()]
    bare = re.fullmatch(rf"\(?([{letters}])\)?[.):]?", lines[-1]) if lines else None
    if bare:                                   # the output ends with the letter alone on its line ("...\nD")
        return bare.group(1)
    found = _last_match(generation.replace("**", ""), explicit)
    if found:
        return found
    return _match_option_text(segment if segment else generation, choices)


def _first_match(text: str, patterns: list[str]) -> str:
    hits = [m for p in patterns for m in re.finditer(p, text)]
    return min(hits, key=lambda m: m.start()).group(1).upper() if hits else ""


def _last_match(text: str, patterns: list[str]) -> str:
    hits = [m for p in patterns for m in re.finditer(p, text)]
    return max(hits, key=lambda m: m.start()).group(1).upper() if hits else ""


def _match_option_text(text: str, choices: dict[str, str]) -> str:
    """The option whose text equals the answer given in words or numbers ("The answer is 12" with "(C) 12")."""
    answer = (last_boxed(text) or text).strip().rstrip(".").strip()
    number = to_number(_after_equals(_clean_numeric_text(answer)))
    for letter, option in choices.items():
        if normalize_latex(option) == normalize_latex(answer):
            return letter
        if number is not None and numbers_equal(number, to_number(_clean_numeric_text(option))):
            return letter
    return ""


# --- MATH: LaTeX answers -----------------------------------------------------------------------------------------------
def extract_latex(generation: str) -> str:
    """MATH answer as written (not normalised): a \\boxed{} after the last trigger, else the trigger's answer
    sentence (unless it is prose and the output boxes an answer elsewhere), else the last \\boxed{}, else the last
    number."""
    segment = answer_segment(generation)
    if segment is not None:
        boxed = boxed_after_trigger(generation)
        if boxed is not None:
            return boxed
        if not (_is_prose(segment) and last_boxed(generation) is not None):
            return strip_math_delimiters(segment.strip().rstrip(".").strip())
    boxed = last_boxed(generation)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(_clean_numeric_text(generation))
    return numbers[-1].replace(" ", "") if numbers else ""


# $x$, $$x$$, \(x\), \[x\] at the start of an answer; "\$" inside is an escaped dollar, not a delimiter.
_MATH_DELIMITED = re.compile(r"^(?:\$\$?((?:\\.|[^$\\])*)\$|\\\((.*?)\\\)|\\\[(.*?)\\\])", re.DOTALL)


def strip_math_delimiters(text: str) -> str:
    """ "$\\frac{1}{2}$" -> "\\frac{1}{2}", "$\\$40$" -> "\\$40" (the escaped dollar is kept for the normalisation)."""
    found = _MATH_DELIMITED.match(text.strip())
    if not found:
        return text.strip()
    return next(group for group in found.groups() if group is not None).strip()


def _fix_fracs(text: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}, \\frac{3}4 -> \\frac{3}{4}."""
    text = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", text)
    return re.sub(r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}", text)


def normalize_latex(answer: str) -> str:
    """Canonical string form of a MATH answer (the `is_equiv` normalisation, extended)."""
    text = answer.strip()
    boxed = last_boxed(text) if text.startswith(("\\boxed", "\\fbox")) else None
    text = boxed if boxed is not None else text
    text = text.replace("\n", "").replace("\\!", "").replace("\u2212", "-")
    text = re.sub(r"\\[,;: ]", "", text)                       # LaTeX thin/medium spaces
    text = text.replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\u00b0", "", text)     # degrees
    text = text.replace("\\$", "").replace("$", "")
    # A trailing unit in \text{...} / \mbox{...} ("5 \text{ cm}^2") is dropped when a value precedes it.
    text = re.sub(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?\s*$", "", text)
    text = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", text)  # other \text{X} -> X
    text = text.replace("\\%", "").replace("%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if text.startswith("."):
        text = "0" + text
    text = re.sub(r"^\s*[A-Za-z]\s*\\in\s*", "", text)          # "x \in [2, 5)" -> "[2, 5)"
    lhs, eq, rhs = text.partition("=")
    if eq and "=" not in rhs and len(lhs.strip()) <= 2:        # "x = 5" -> "5", "k=3" -> "3"
        text = rhs
    text = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", text)          # \sqrt3 -> \sqrt{3}
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if re.fullmatch(r"-?\d+/\d+", text):                       # 3/4 -> \frac{3}{4}
        num, den = text.split("/")
        text = f"\\frac{{{num}}}{{{den}}}" if not num.startswith("-") else f"-\\frac{{{num[1:]}}}{{{den}}}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):    # 1,000 -> 1000 (tuples like (1,2) are untouched)
        text = text.replace(",", "")
    return text.rstrip(".")


_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.Pow: operator.pow}
_UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def latex_value(normalized: str) -> float | None:
    """Numeric value of a normalised answer made only of numbers, \\frac, \\sqrt, \\pi, + - * / ^; else None.
    Evaluated on a parsed syntax tree (never `eval`), so arbitrary text is safe."""
    text = normalized
    for _ in range(10):  # innermost \frac first; nesting deeper than 10 is not an answer
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", text)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        if new == text:
            break
        text = new
    text = text.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    text = text.replace("{", "(").replace("}", ")")
    text = re.sub(r"(\d|\))(?=\(|sqrt|pi)", r"\1*", text)      # implicit products: 2\sqrt{2}, 3\pi, 2(3)
    text = re.sub(r"pi(?=\d|\()", "pi*", text)
    if not text or re.search(r"[^0-9.+\-*/() ]", text.replace("sqrt", "").replace("pi", "")):
        return None
    try:
        value = float(_evaluate(ast.parse(text, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return value if math.isfinite(value) else None


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or (left < 0 and right != int(right))):
            raise ValueError("exponent out of range")
        return _BINARY_OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt" \
            and len(node.args) == 1 and not node.keywords:
        return math.sqrt(_evaluate(node.args[0]))
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    raise ValueError(f"not plain arithmetic: {ast.dump(node)}")


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def latex_equal(predicted: str, gold: str) -> bool:
    """MATH equivalence: equal after normalisation, or equal in value, or tuples/intervals equal element-wise."""
    if not predicted or not predicted.strip():
        return False
    a, b = normalize_latex(predicted), normalize_latex(gold)
    if a == b:
        return True
    if numbers_equal(latex_value(a), latex_value(b)):
        return True
    # (1,2) vs (1, 2.0); [0,\frac12) vs [0,0.5): same brackets, same number of elements, elements equal
    if len(a) > 2 and len(b) > 2 and a[0] == b[0] and a[-1] == b[-1] and a[0] in "([" and a[-1] in ")]":
        left, right = _split_top_level(a[1:-1]), _split_top_level(b[1:-1])
        if len(left) == len(right) > 1:
            return all(x == y or numbers_equal(latex_value(x), latex_value(y)) for x, y in zip(left, right))
    if "," in a and "," in b:                                   # unbracketed lists: "2,-3" vs "2, -3.0"
        left, right = _split_top_level(a), _split_top_level(b)
        if len(left) == len(right) > 1:
            return all(x == y or numbers_equal(latex_value(x), latex_value(y)) for x, y in zip(left, right))
    return False
