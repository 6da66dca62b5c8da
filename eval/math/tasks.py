"""Math tasks as data: a YAML task file describes a dataset, its question text and its gold answer.

Keys (README.md in this folder has the full reference and an example):
    name         the dataset's name in --datasets, math.json and the samples files
    path         a .json list or a .jsonl file, optionally .gz; "{shared_data}" expands to the shared data folder,
                 other relative paths are relative to the task file's folder
    question     a Python format string over the record's fields, e.g. "{Body} {Question}"
    answer       the field holding the gold answer
    answer_type  number | choice | math
    choices      choice tasks: the field holding the options (a list, or a {letter: text} mapping), or "inline" when
                 the question already lists them after "Answer Choices:"; number tasks may say "inline" too, then
                 items that list options are scored as multiple choice (NumGLUE)
    gold         optional: how the gold is read from the field: as_is (default), "after:<marker>" (text after the
                 last marker, e.g. GSM8K's "after:####"), last_boxed (content of the last \\boxed{}, MATH)
    triggers     optional: the answer triggers of the MAmmoTH scorer (default by answer_type, as MAmmoTH's scripts)
    meta         optional: record fields copied into each saved sample (e.g. [subject, level])

The six datasets of the paper are task files in `eval/math/tasks/`, found by name.
"""
from __future__ import annotations

import dataclasses
import difflib
import string
from pathlib import Path

from experiments.config import ConfigError, parse_yaml_file
from experiments.paths import shared_data

BUILTIN_TASK_DIR = Path(__file__).resolve().parent / "tasks"
# The paper's six benchmarks (Table 6), in the paper's column order; its average is taken over exactly these.
PAPER_DATASETS: tuple[str, ...] = ("gsm8k", "math", "aqua", "numglue", "sat", "mmlu_math")
ANSWER_TYPES = ("number", "choice", "math")
GOLD_RULES = ("as_is", "after:<marker>", "last_boxed")
# MAmmoTH's answer triggers: run_choice.py splits on ("####", "The answer is"); run_open.py on these three.
DEFAULT_TRIGGERS = {"choice": ("####", "The answer is"),
                    "number": ("The answer is:", "The answer is", "the answer is"),
                    "math": ("The answer is:", "The answer is", "the answer is")}
_REQUIRED = ("name", "path", "question", "answer", "answer_type")
_OPTIONAL = ("choices", "gold", "triggers", "meta", "description")


class MathTaskError(ValueError):
    """A task file or a task name is invalid (one line naming the problem and the valid choices)."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path
    question: str
    answer: str
    answer_type: str
    choices: str | None = None
    gold: str = "as_is"
    triggers: tuple[str, ...] = ()
    meta: tuple[str, ...] = ()
    source: str = ""            # the task file it came from

    @property
    def is_builtin(self) -> bool:
        return Path(self.source).parent == BUILTIN_TASK_DIR


def load_task_file(path: str | Path) -> TaskSpec:
    """Read and validate one task file."""
    path = Path(path)
    if not path.is_file():
        raise MathTaskError(f"task file not found: {path}")
    try:
        doc = parse_yaml_file(path)
    except ConfigError as err:  # a syntax error with its line and column, or an unreadable file
        raise MathTaskError(f"task file {err}") from None
    if not isinstance(doc, dict):
        raise MathTaskError(f"task file {path} must hold a mapping with the keys {', '.join(_REQUIRED)}")
    return task_from_dict(doc, source=path)


def task_from_dict(doc: dict, *, source: str | Path = "<dict>") -> TaskSpec:
    where = f"task file {source}"
    missing = [key for key in _REQUIRED if doc.get(key) in (None, "")]
    unknown = sorted(map(str, set(doc) - set(_REQUIRED) - set(_OPTIONAL)))
    if unknown:  # before the missing keys: a misspelt key is also a missing one, and the typo is the news
        guesses = [difflib.get_close_matches(key, _REQUIRED + _OPTIONAL, n=1) for key in unknown]
        hint = "".join(f" ({key}: did you mean {guess[0]}?)" for key, guess in zip(unknown, guesses) if guess)
        raise MathTaskError(f"{where}: unknown key(s) {', '.join(unknown)}{hint}; valid keys: "
                            f"{', '.join(_REQUIRED + _OPTIONAL)}")
    if missing:
        raise MathTaskError(f"{where}: missing key(s) {', '.join(missing)} (required: {', '.join(_REQUIRED)})")
    answer_type = str(doc["answer_type"])
    if answer_type not in ANSWER_TYPES:
        raise MathTaskError(f"{where}: answer_type {answer_type!r} is not one of {', '.join(ANSWER_TYPES)}")
    choices = doc.get("choices")
    if answer_type == "choice" and not choices:
        raise MathTaskError(f"{where}: answer_type choice needs 'choices' (the options' field, or \"inline\")")
    if answer_type == "math" and choices:
        raise MathTaskError(f"{where}: answer_type math takes no 'choices'")
    if answer_type == "number" and choices not in (None, "inline"):
        raise MathTaskError(f"{where}: a number task takes only choices: inline (items listing options)")
    gold = str(doc.get("gold", "as_is"))
    if gold not in ("as_is", "last_boxed") and not (gold.startswith("after:") and len(gold) > len("after:")):
        raise MathTaskError(f"{where}: gold {gold!r} is not one of {', '.join(GOLD_RULES)}")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(str(doc["question"])) if name is not None]
    except ValueError as err:  # unbalanced braces
        raise MathTaskError(f"{where}: question {doc['question']!r} is not a format string ({err}); name record "
                            "fields in braces, like \"{Body} {Question}\" (a literal brace is written twice)") from None
    if not fields or any(not name or not name.isidentifier() for name in fields):
        raise MathTaskError(f"{where}: question must name record fields in braces, like \"{{Body}} {{Question}}\"")
    triggers = doc.get("triggers") or DEFAULT_TRIGGERS[answer_type]
    meta = doc.get("meta") or ()
    if not isinstance(triggers, (list, tuple)) or not all(isinstance(t, str) and t for t in triggers):
        raise MathTaskError(f"{where}: triggers must be a list of non-empty strings, got {triggers!r}")
    if not isinstance(meta, (list, tuple)) or not all(isinstance(m, str) for m in meta):
        raise MathTaskError(f"{where}: meta must be a list of field names, got {meta!r}")
    return TaskSpec(name=str(doc["name"]), path=_resolve_path(str(doc["path"]), source), question=str(doc["question"]),
                    answer=str(doc["answer"]), answer_type=answer_type, choices=choices and str(choices), gold=gold,
                    triggers=tuple(triggers), meta=tuple(meta), source=str(source))


def _resolve_path(text: str, source: str | Path) -> Path:
    if "{shared_data}" in text:
        return Path(text.replace("{shared_data}", str(shared_data())))
    path = Path(text).expanduser()
    if not path.is_absolute() and Path(source).exists():
        path = Path(source).resolve().parent / path
    return path


def builtin_task_files() -> dict[str, Path]:
    """name -> task file of every built-in task (the paper's six first, in their order)."""
    found = {path.stem: path for path in sorted(BUILTIN_TASK_DIR.glob("*.yaml"))}
    return {**{name: found[name] for name in PAPER_DATASETS if name in found}, **found}


def builtin_names() -> tuple[str, ...]:
    return tuple(builtin_task_files())


def builtin_task(name: str) -> TaskSpec:
    files = builtin_task_files()
    if name not in files:
        raise MathTaskError(f"unknown math dataset {name!r}; valid choices: {', '.join(files)} "
                            "(or describe a new one in a task file: --task-file T.yaml)")
    # Re-read every time: {shared_data} follows $BADAM_SHARED as it is now.
    return load_task_file(files[name])


def check_dataset_names(names) -> list[str]:
    """Validate built-in dataset names (a list, or one comma-separated string); one error names the valid choices."""
    if isinstance(names, str):
        names = names.split(",")
    names = [str(n).strip() for n in names if str(n).strip()]
    valid = builtin_names()
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise MathTaskError(f"unknown math dataset(s) {unknown or names!r}; valid choices: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def resolve_tasks(datasets=None, task_files=None) -> list[TaskSpec]:
    """The tasks to evaluate: built-in ones by name plus task files; names must be unique. With neither given, the
    paper's six."""
    if isinstance(task_files, (str, Path)):
        task_files = [task_files]
    task_files = [f for f in (task_files or []) if str(f).strip()]
    names = check_dataset_names(datasets) if datasets not in (None, "", []) else []
    if not names and not task_files:
        names = list(PAPER_DATASETS)
    tasks = [builtin_task(n) for n in names] + [load_task_file(f) for f in task_files]
    seen: dict[str, str] = {}
    for task in tasks:
        if task.name in seen:
            raise MathTaskError(f"two tasks are named {task.name!r} ({seen[task.name]} and {task.source}); "
                                "give the task file another name")
        seen[task.name] = task.source
    return tasks
