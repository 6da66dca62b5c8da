"""Items of a math task: records read from the task's file (.json list or .jsonl, optionally .gz) and turned into
`MathItem`s as its task file says (eval/math/tasks.py). The built-in six are MAmmoTH's `math_eval/dataset` files in
the shared data folder (formats and provenance: shared/data/SOURCES.md, "Math evaluation sets used by MAmmoTH").

Multiple-choice questions are rendered the way MAmmoTH's `data_loader.py` renders them: the question, a newline,
then `Answer Choices: (A) ... (B) ...` on one line (unless the question already lists its options).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path

from experiments.paths import shared_data

from .answers import last_boxed, normalize_number, to_number
from .tasks import PAPER_DATASETS, MathTaskError, TaskSpec, builtin_task, check_dataset_names

# The paper's six, by name (kept under this name for callers of the earlier API).
DATASETS: tuple[str, ...] = PAPER_DATASETS

# "(A) 12 (B) 15" -> [("A", "12"), ("B", "15")]; letters must appear in order A, B, C, ... to count as options.
_CHOICE_MARK = re.compile(r"\(([A-J])\)\s*")
# A list option carrying its own label: "A)5(√3 + 1)", "(B) 6", "C. 7", "D: 8".
_OPTION_LABEL = re.compile(r"^\s*\(?([A-Ja-j])\s*[).:]\s*")
ALL_OPTION_LETTERS = "ABCDEFGHIJ"


class MathDataError(FileNotFoundError):
    """A benchmark file is missing or unreadable (one clear message naming the file)."""


@dataclasses.dataclass(frozen=True)
class MathItem:
    dataset: str
    index: int                     # 0-based position in the task's file: the key for resuming and for `score`
    question: str                  # as shown to the model (options included for multiple choice)
    gold: str                      # option letter, canonical number, or LaTeX answer as written (MATH)
    choices: dict[str, str] = dataclasses.field(default_factory=dict)   # letter -> option text; {} if open-ended
    meta: dict = dataclasses.field(default_factory=dict)                # e.g. MATH subject / level
    answer_type: str = "number"    # the task's answer_type: number | choice | math
    gold_text: str = ""            # the gold as read from the record (what MAmmoTH compares against)
    triggers: tuple[str, ...] = () # MAmmoTH answer triggers of the task
    scan_letters: str = ""         # option letters MAmmoTH's cleaning looks for in every output of the task

    @property
    def kind(self) -> str:
        """How the strict scorer extracts and compares: "choice", "latex" (math tasks), "number" or "text"."""
        if self.choices:
            return "choice"
        if self.answer_type == "math":
            return "latex"
        # A few NumGLUE answers are words ("August", "Friday").
        return "number" if to_number(self.gold) is not None else "text"


def as_task(task: str | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    check_dataset_names([task])
    return builtin_task(task)


def dataset_path(name: str | TaskSpec) -> Path:
    return as_task(name).path


def read_records(task: str | TaskSpec) -> list[dict]:
    """The raw records of a task's file, in file order."""
    task = as_task(task)
    path = task.path
    if not path.is_file():
        # the shared folder's hint only for a file that should be there; a user's own path is just named
        in_shared = path.is_relative_to(shared_data())
        raise MathDataError(f"math dataset '{task.name}': data file not found: {path}"
                            + (" (set BADAM_SHARED to the shared folder; see shared/data/SOURCES.md)" if in_shared
                               else f" (the path key of {task.source or 'its task'})"))
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
        stripped = text.lstrip()
        if stripped.startswith("["):
            records = json.loads(text)
        else:  # JSON Lines (AQuA's file is JSON Lines despite its .json name)
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MathDataError(f"math dataset '{task.name}': cannot read {path}: {err}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MathDataError(f"math dataset '{task.name}': {path} must hold JSON objects (a list or one per line)")
    if not records:  # else it would be scored as 0 of 0 items, an accuracy of 0 %
        raise MathDataError(f"math dataset '{task.name}': {path} holds no items (the file is empty)")
    return records


def load_items(task: str | TaskSpec) -> list[MathItem]:
    """All items of one task, in file order."""
    task = as_task(task)
    records = read_records(task)
    items = [_make_item(task, i, record) for i, record in enumerate(records)]
    if task.answer_type == "choice":
        scan = ALL_OPTION_LETTERS            # MAmmoTH's run_choice.py looks for any of A-J
    else:                                    # NumGLUE: the letters its two-option questions use (A, B)
        scan = "".join(sorted({letter for item in items for letter in item.choices}))
    return [dataclasses.replace(item, scan_letters=scan) for item in items]


def select_subset(items: list[MathItem], limit: int | None) -> list[MathItem]:
    """`limit` items spread evenly over the file (deterministic). Evenly spaced rather than the first N, because the
    MATH file is sorted by subject: its first 20 problems would all be algebra."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        raise ValueError(f"limit must be a positive number of items per dataset, got {limit}")
    return [items[(i * len(items)) // limit] for i in range(limit)]


def parse_choices(text: str) -> dict[str, str]:
    """Options written as `(A) ... (B) ...` after "Answer Choices:" (or anywhere if that header is absent)."""
    head, sep, tail = text.rpartition("Answer Choices:")
    options_text = tail if sep else text
    parts = _CHOICE_MARK.split(options_text)
    # parts = [before, "A", text_a, "B", text_b, ...]
    letters, texts = parts[1::2], parts[2::2]
    expected = [chr(ord("A") + i) for i in range(len(letters))]
    if len(letters) < 2 or letters != expected:
        return {}
    return {letter: option.strip() for letter, option in zip(letters, texts)}


def format_choices(choices: dict[str, str]) -> str:
    return "Answer Choices: " + " ".join(f"({letter}) {text}" for letter, text in choices.items())


# --- one record -> one item --------------------------------------------------------------------------------------------
def _make_item(task: TaskSpec, index: int, record: dict) -> MathItem:
    where = f"math dataset '{task.name}' ({task.path}), item {index}"
    try:
        question = task.question.format(**record).strip()
    except (KeyError, IndexError) as err:
        raise MathTaskError(f"{where}: question names field {err} that the record lacks; its fields: "
                            f"{', '.join(map(str, record))}") from None
    if task.answer not in record:
        raise MathTaskError(f"{where}: no answer field {task.answer!r}; its fields: {', '.join(map(str, record))}")
    choices = _read_choices(task, record, question, where)
    if choices and task.choices != "inline":
        question = question + "\n" + format_choices(choices)
    gold_text = _read_gold(task, record[task.answer], where)
    if task.answer_type == "choice" or choices:
        gold = _gold_letter(record[task.answer], gold_text, choices, where)
    elif task.answer_type == "math":
        gold = gold_text
    else:
        gold = normalize_number(gold_text.replace(",", ""))
    meta = {key: record.get(key) for key in task.meta}
    return MathItem(task.name, index, question, gold, choices, meta, answer_type=task.answer_type,
                    gold_text=gold_text, triggers=task.triggers)


def _read_choices(task: TaskSpec, record: dict, question: str, where: str) -> dict[str, str]:
    if not task.choices:
        return {}
    if task.choices == "inline":
        choices = parse_choices(question) if "Answer Choices:" in question else {}
        if task.answer_type == "choice" and not choices:
            raise MathTaskError(f"{where}: the question lists no options as 'Answer Choices: (A) ... (B) ...'")
        return choices
    options = record.get(task.choices)
    if isinstance(options, dict):
        return {str(k).strip().upper(): str(v).strip() for k, v in options.items()}
    if not isinstance(options, list) or len(options) < 2:
        raise MathTaskError(f"{where}: field {task.choices!r} must hold a list (or mapping) of at least 2 options")
    choices = {}
    for position, option in enumerate(options):
        letter, text = ALL_OPTION_LETTERS[position], str(option)
        label = _OPTION_LABEL.match(text)
        if label and label.group(1).upper() == letter:   # "A)5(√3 + 1)": the option carries its own label
            text = text[label.end():]
        choices[letter] = text.strip()
    return choices


def _read_gold(task: TaskSpec, value, where: str) -> str:
    text = str(value).strip()
    if task.gold.startswith("after:"):
        marker = task.gold[len("after:"):]
        if marker not in text:
            raise MathTaskError(f"{where}: the gold answer has no {marker!r} marker")
        return text.rsplit(marker, 1)[1].strip()
    if task.gold == "last_boxed":
        boxed = last_boxed(text)
        if boxed is None:
            raise MathTaskError(f"{where}: the gold answer has no \\boxed{{}}")
        return boxed
    return text


def _gold_letter(value, gold_text: str, choices: dict[str, str], where: str) -> str:
    """An option letter from the gold field: a letter ("C", "(C)", "c") or a 0-based index into the options."""
    if isinstance(value, int) or gold_text.isdigit():
        position = int(gold_text)
        if not 0 <= position < len(choices):
            raise MathTaskError(f"{where}: gold option index {position} is outside the {len(choices)} options")
        return ALL_OPTION_LETTERS[position]
    letter = gold_text.strip("() .").upper()
    if letter not in choices:
        raise MathTaskError(f"{where}: gold answer {gold_text!r} is not one of the options {', '.join(choices)}")
    return letter

