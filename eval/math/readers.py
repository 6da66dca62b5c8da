"""Readers for the six math benchmarks of the BAdam paper, from the MAmmoTH `math_eval/dataset` files in the shared data
folder (formats and provenance: shared/data/SOURCES.md, section "Math evaluation sets used by MAmmoTH").

Every reader returns `MathItem`s in file order. Multiple-choice questions are rendered the way MAmmoTH's
`data_loader.py` renders them: the question, a newline, then `Answer Choices: (A) ... (B) ...` on one line.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path

from experiments.paths import shared_data

from .answers import last_boxed, normalize_number, to_number

# Benchmark name -> file under <shared>/data/math_eval. The names are the ones the CLI accepts.
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "gsm8k": ("gsm8k", "gsm8k.jsonl.gz"),
    "math": ("math", "MATH_test.jsonl.gz"),
    "aqua": ("AQuA", "AQuA.json"),
    "numglue": ("numglue", "numglue.json"),
    "sat": ("sat", "sat.json"),
    "mmlu_math": ("mmlu", "mathematics.json.gz"),
}
DATASETS: tuple[str, ...] = tuple(DATASET_FILES)

# "(A) 12 (B) 15" -> [("A", "12"), ("B", "15")]; letters must appear in order A, B, C, ... to count as options.
_CHOICE_MARK = re.compile(r"\(([A-J])\)\s*")


class MathDataError(FileNotFoundError):
    """A benchmark file is missing or unreadable (one clear message naming the file)."""


@dataclasses.dataclass(frozen=True)
class MathItem:
    dataset: str
    index: int                     # position in the benchmark file: the stable key used to resume
    question: str                  # as shown to the model (options included for multiple choice)
    gold: str                      # option letter, canonical number, or LaTeX answer (MATH)
    choices: dict[str, str] = dataclasses.field(default_factory=dict)   # letter -> option text; {} if open-ended
    meta: dict = dataclasses.field(default_factory=dict)                # e.g. MATH subject / level

    @property
    def kind(self) -> str:
        """How the answer is extracted and compared: "choice", "latex" (MATH), "number" or "text"."""
        if self.choices:
            return "choice"
        if self.dataset == "math":
            return "latex"
        # A few NumGLUE answers are words ("August", "Friday").
        return "number" if to_number(self.gold) is not None else "text"


def check_dataset_names(names) -> list[str]:
    """Validate benchmark names (a list, or one comma-separated string); one error names the valid choices."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in DATASET_FILES]
    if unknown or not names:
        raise ValueError(f"unknown math dataset(s) {unknown or names!r}; valid choices: {', '.join(DATASETS)}")
    return list(dict.fromkeys(names))


def dataset_path(name: str) -> Path:
    check_dataset_names([name])
    return shared_data("math_eval", *DATASET_FILES[name])


def load_items(name: str) -> list[MathItem]:
    """All items of one benchmark, in file order."""
    path = dataset_path(name)
    if not path.is_file():
        raise MathDataError(f"math dataset '{name}': data file not found: {path} "
                            f"(set BADAM_SHARED to the shared folder; see shared/data/SOURCES.md)")
    return _READERS[name](path)


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


def _format_choices(choices: dict[str, str]) -> str:
    return "Answer Choices: " + " ".join(f"({letter}) {text}" for letter, text in choices.items())


# --- readers -----------------------------------------------------------------------------------------------------------
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _read_json_lines(path: Path) -> list[dict]:
    with _open_text(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read_json_array(path: Path) -> list[dict]:
    with _open_text(path) as fh:
        return json.load(fh)


def _read_gsm8k(path: Path) -> list[MathItem]:
    items = []
    for i, row in enumerate(_read_json_lines(path)):
        # The reference answer ends with "#### <number>" (numbers may carry thousands separators).
        gold = normalize_number(row["answer"].split("####")[-1].strip().replace(",", ""))
        items.append(MathItem("gsm8k", i, row["question"].strip(), gold))
    return items


def _read_math(path: Path) -> list[MathItem]:
    items = []
    for i, row in enumerate(_read_json_lines(path)):
        gold = last_boxed(row["solution"])  # MAmmoTH's `answer` field: the last \boxed{} of the solution
        if gold is None:
            raise MathDataError(f"{path}: item {i} ({row.get('unique_id')}) has no \\boxed{{}} answer")
        meta = {"subject": row.get("subject"), "level": row.get("level"), "unique_id": row.get("unique_id")}
        items.append(MathItem("math", i, row["problem"].strip(), gold, meta=meta))
    return items


def _read_aqua(path: Path) -> list[MathItem]:
    items = []
    for i, row in enumerate(_read_json_lines(path)):  # JSON Lines despite the .json name
        choices = {}
        for option in row["options"]:  # "A)5(√3 + 1)"
            letter, _, text = option.partition(")")
            choices[letter.strip()] = text.strip()
        question = row["question"].strip() + "\n" + _format_choices(choices)
        items.append(MathItem("aqua", i, question, row["correct"].strip(), choices))
    return items


def _read_inline_choice_set(name: str):
    """NumGLUE and SAT: options (when any) are already written into the question as `Answer Choices: (A) ...`."""
    def read(path: Path) -> list[MathItem]:
        items = []
        for i, row in enumerate(_read_json_array(path)):
            question = row["question"].strip()
            choices = parse_choices(question) if "Answer Choices:" in question else {}
            answer = str(row["answer"]).strip()
            gold = answer if choices else normalize_number(answer)
            meta = {"type": row["type"]} if "type" in row else {}
            items.append(MathItem(name, i, question, gold, choices, meta))
        return items
    return read


def _read_mmlu_math(path: Path) -> list[MathItem]:
    items = []
    for i, row in enumerate(_read_json_array(path)):
        choices = {chr(ord("A") + k): str(text).strip() for k, text in enumerate(row["choices"])}
        question = row["question"].strip() + "\n" + _format_choices(choices)
        gold = chr(ord("A") + int(row["answer"]))
        items.append(MathItem("mmlu_math", i, question, gold, choices, {"subject": row.get("subject")}))
    return items


_READERS = {
    "gsm8k": _read_gsm8k,
    "math": _read_math,
    "aqua": _read_aqua,
    "numglue": _read_inline_choice_set("numglue"),
    "sat": _read_inline_choice_set("sat"),
    "mmlu_math": _read_mmlu_math,
}
