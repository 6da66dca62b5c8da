"""The SuperGLUE tasks: where their files are, how a raw record becomes model input, and what is measured.

Files are the official SuperGLUE jsonl releases under <shared>/data/superglue (see shared/data/SOURCES.md). A raw
record ("row") is one line of such a file; `TaskSpec.to_examples` turns rows into `Example`s. MultiRC is the one task
where a row (a paragraph) expands into many examples (one per answer option); splits are therefore taken over rows,
so that a paragraph never straddles two splits.

Input formats (text_a, text_b) given to the model's tokenizer as a sentence pair:
  BoolQ    (passage, question)                          2 labels  False/True
  CB       (premise, hypothesis)                        3 labels  entailment/contradiction/neutral
  RTE      (premise, hypothesis)                        2 labels  entailment/not_entailment
  WiC      (sentence1, sentence2), the word marked in both          2 labels  False/True
  WSC      (text with both spans marked, "<pronoun> refers to <noun>")   2 labels  False/True
  MultiRC  (paragraph, question + answer option)        2 labels per option  False/True
  COPA     multiple choice: (premise, "because"/"so" + choice) for each of the 2 choices
MultiRC gets the whole paragraph: jiant (used by the BAdam paper) keeps only the gold evidence sentences
(`sentences_used`), which the shared files do not carry.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Callable

from experiments.paths import shared_data

# Word-level markers. Plain ASCII so that every tokenizer (WordPiece, BPE, SentencePiece) keeps them as tokens.
SPAN_OPEN, SPAN_CLOSE = "*", "*"
PRONOUN_OPEN, PRONOUN_CLOSE = "#", "#"


class SuperGlueDataError(FileNotFoundError):
    """A task's data file is absent or unreadable: the message names the path (and line) and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One model input. `pairs` holds one (text_a, text_b) for classification, one per choice for multiple choice.

    `group` ties MultiRC answer options to their question (exact match is per question); None elsewhere.
    """

    uid: str
    pairs: tuple[tuple[str, str], ...]
    label: int
    group: str | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str                     # lower-case id used on the command line and in results
    folder: str                   # folder under <shared>/data/superglue
    kind: str                     # "classification" | "multiple_choice"
    label_names: tuple[str, ...]  # index = class id (for multiple choice: the choices)
    metrics: tuple[str, ...]      # metric names reported, in order; "score" is the task's single summary number
    to_examples: Callable[[list[dict]], list[Example]]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# --- reading files ----------------------------------------------------------------------------------------------
def superglue_dir() -> Path:
    return shared_data("superglue")


def find_file(folder: str, split: str, *, base: Path | None = None) -> Path:
    """`<base>/<folder>/<split>.jsonl`, or the same with `.gz`; one clear error when neither exists."""
    root = base if base is not None else superglue_dir()
    for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
        path = root / folder / name
        if path.is_file():
            return path
    raise SuperGlueDataError(
        f"SuperGLUE file {folder}/{split}.jsonl(.gz) not found under {root}; "
        "set BADAM_SHARED to the folder that holds data/superglue (see shared/data/SOURCES.md)")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a SuperGLUE file (one JSON object per line); a bad line or an unreadable file is a
    SuperGlueDataError naming the file (and the line)."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SuperGlueDataError(f"{path}: line {number} is not valid JSON ({exc.msg}); SuperGLUE files "
                                             "hold one JSON object per line") from None
                if not isinstance(row, dict):
                    raise SuperGlueDataError(f"{path}: line {number} holds a JSON {type(row).__name__}, not an object")
                rows.append(row)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:  # a cut-off .gz ends in EOFError
        raise SuperGlueDataError(f"{path}: cannot be read after line {number} ({exc})") from None
    return rows


def read_rows(folder: str, split: str, *, base: Path | None = None) -> list[dict]:
    return read_jsonl(find_file(folder, split, base=base))


# --- per-task conversion ------------------------------------------------------------------------------------------
def _bool_label(value) -> int:
    if isinstance(value, bool):
        return int(value)
    if value in (0, 1):
        return int(value)
    raise ValueError(f"expected a boolean label, got {value!r}")


def _named_label(value, names: tuple[str, ...]) -> int:
    if value not in names:
        raise ValueError(f"unknown label {value!r}; valid labels: {', '.join(names)}")
    return names.index(value)


def _uid(task: str, row: dict, position: int) -> str:
    return f"{task}-{row.get('idx', position)}"


def boolq_examples(rows: list[dict]) -> list[Example]:
    return [Example(_uid("boolq", r, i), ((r["passage"], r["question"]),), _bool_label(r["label"]))
            for i, r in enumerate(rows)]


CB_LABELS = ("entailment", "contradiction", "neutral")
RTE_LABELS = ("entailment", "not_entailment")


def cb_examples(rows: list[dict]) -> list[Example]:
    return [Example(_uid("cb", r, i), ((r["premise"], r["hypothesis"]),), _named_label(r["label"], CB_LABELS))
            for i, r in enumerate(rows)]


def rte_examples(rows: list[dict]) -> list[Example]:
    return [Example(_uid("rte", r, i), ((r["premise"], r["hypothesis"]),), _named_label(r["label"], RTE_LABELS))
            for i, r in enumerate(rows)]


def mark_chars(text: str, start: int, end: int, open_mark: str, close_mark: str) -> str:
    """Surround text[start:end] (character offsets) with markers, e.g. 'a *class* act'."""
    return f"{text[:start]}{open_mark}{text[start:end]}{close_mark}{text[end:]}"


def wic_examples(rows: list[dict]) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        first = mark_chars(r["sentence1"], r["start1"], r["end1"], SPAN_OPEN, SPAN_CLOSE)
        second = mark_chars(r["sentence2"], r["start2"], r["end2"], SPAN_OPEN, SPAN_CLOSE)
        out.append(Example(_uid("wic", r, i), ((first, second),), _bool_label(r["label"])))
    return out


def mark_words(words: list[str], spans: list[tuple[int, int, str, str]]) -> str:
    """Surround word ranges [start, start+length) with markers; spans must not overlap."""
    marked = list(words)
    for start, length, open_mark, close_mark in spans:
        last = min(start + max(length, 1), len(marked)) - 1
        marked[start] = open_mark + marked[start]
        marked[last] = marked[last] + close_mark
    return " ".join(marked)


def wsc_examples(rows: list[dict]) -> list[Example]:
    """The noun phrase (span1) and the pronoun (span2) are marked by their word indices in the text; the second
    segment states the coreference to be judged."""
    out = []
    for i, r in enumerate(rows):
        target = r["target"]
        words = r["text"].split()
        noun, pronoun = target["span1_text"], target["span2_text"]
        text = mark_words(words, [(target["span1_index"], len(noun.split()), SPAN_OPEN, SPAN_CLOSE),
                                  (target["span2_index"], len(pronoun.split()), PRONOUN_OPEN, PRONOUN_CLOSE)])
        claim = f"{' '.join(pronoun.split())} refers to {' '.join(noun.split())}"
        out.append(Example(_uid("wsc", r, i), ((text, claim),), _bool_label(r["label"])))
    return out


def multirc_examples(rows: list[dict]) -> list[Example]:
    """One binary example per answer option; `group` = paragraph idx + question idx (exact match is per question)."""
    out = []
    for i, r in enumerate(rows):
        paragraph = r["passage"]
        pid = r.get("idx", i)
        for question in paragraph["questions"]:
            group = f"multirc-{pid}-{question['idx']}"
            for answer in question["answers"]:
                out.append(Example(f"{group}-{answer['idx']}",
                                   ((paragraph["text"], f"{question['question']} {answer['text']}"),),
                                   _bool_label(answer["label"]), group))
    return out


COPA_CONNECTORS = {"cause": "because", "effect": "so"}


def _lower_first(text: str) -> str:
    # "because The toilet filled" reads wrongly; lower the first letter unless the word is an acronym or "I".
    if len(text) > 1 and text[0].isupper() and not text[1].isupper() and not text.startswith("I "):
        return text[0].lower() + text[1:]
    return text


def copa_examples(rows: list[dict]) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        if r["question"] not in COPA_CONNECTORS:
            raise ValueError(f"COPA question {r['question']!r}; valid: {', '.join(COPA_CONNECTORS)}")
        connector = COPA_CONNECTORS[r["question"]]
        pairs = tuple((r["premise"], f"{connector} {_lower_first(r[key])}") for key in ("choice1", "choice2"))
        out.append(Example(_uid("copa", r, i), pairs, int(r["label"])))
    return out


BINARY = ("False", "True")
ACCURACY = ("accuracy", "score")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("boolq", "BoolQ", "classification", BINARY, ACCURACY, boolq_examples),
        TaskSpec("cb", "CB", "classification", CB_LABELS, ("accuracy", "macro_f1", "score"), cb_examples),
        TaskSpec("copa", "COPA", "multiple_choice", ("choice1", "choice2"), ACCURACY, copa_examples),
        TaskSpec("multirc", "MultiRC", "classification", BINARY, ("f1a", "em", "score"), multirc_examples),
        TaskSpec("rte", "RTE", "classification", RTE_LABELS, ACCURACY, rte_examples),
        TaskSpec("wic", "WiC", "classification", BINARY, ACCURACY, wic_examples),
        TaskSpec("wsc", "WSC", "classification", BINARY, ACCURACY, wsc_examples),
    )
}
# ReCoRD is absent from the shared data (only FewGLUE's 32-example subsets exist, see SOURCES.md) and is not one of
# the tasks the BAdam paper reports, so it is not offered.


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> TaskSpec:
    key = name.strip().lower()
    if key not in TASKS:
        hint = " (ReCoRD's data is not available here)" if key == "record" else ""
        raise ValueError(f"unknown SuperGLUE task {name!r}{hint}; valid tasks: {', '.join(task_names())}")
    return TASKS[key]


def parse_tasks(text: str) -> list[str]:
    """'rte,cb' or 'all' → validated task names, in the order given, without duplicates."""
    if text.strip().lower() == "all":
        return task_names()
    names: list[str] = []
    for part in text.split(","):
        if part.strip():
            name = get_task(part).name
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError(f"no task given; valid tasks: all, {', '.join(task_names())}")
    return names
