"""MT-bench data: where the FastChat files live, how they are read and written, and FastChat's fixed settings.

fastchat.llm_judge.common cannot be imported here (it imports the pre-1.0 `openai` package and `anthropic` at module
level), so the few constants it defines are restated below, each with its source. File formats follow FastChat 0.2.36:
question.jsonl, judge_prompts.jsonl, model_answer/<model>.jsonl and model_judgment/<judge>_single.jsonl.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

from eval import common
from experiments.rundir import RunDir

# fastchat/llm_judge/common.py (0.2.36), `temperature_config`: sampling temperature per question category.
FASTCHAT_TEMPERATURES: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
# gen_model_answer.py uses 0.7 for a category missing from the table.
FASTCHAT_DEFAULT_TEMPERATURE = 0.7
# common.py, `NEED_REF_CATS`: categories graded against a reference answer (single-math-v1 prompts).
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
# The judge prompts used for single-answer grading (gen_judgment.py, make_judge_single).
SINGLE_PROMPT_NAMES = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")


class MTBenchError(RuntimeError):
    """A problem the user can fix (missing file, bad option, unreachable judge); the CLI prints it as one line."""


def default_data_dir() -> Path:
    """The shared FastChat MT-bench data: <shared>/data/mt_bench (see ../shared/data/SOURCES.md)."""
    from experiments.paths import shared_data

    return shared_data("mt_bench")


def default_question_file() -> Path:
    return default_data_dir() / "question.jsonl"


def default_judge_prompt_file() -> Path:
    return default_data_dir() / "judge_prompts.jsonl"


def default_reference_file() -> Path:
    return default_data_dir() / "reference_answer" / "gpt-4.jsonl"


def output_dir(run_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """Where answers, judgments and scores of a run go: <run_dir>/eval/mtbench, or out_dir itself."""
    if (run_dir is None) == (out_dir is None):
        raise MTBenchError("give exactly one of run_dir (results go to <run_dir>/eval/mtbench) or out_dir")
    return RunDir(run_dir).eval_file("mtbench") if run_dir is not None else Path(out_dir)


def answer_output_dir(model_source: str, out_dir: str | os.PathLike | None = None) -> Path:
    """out_dir, else <run_dir>/eval/mtbench for a training run directory, else runs/eval/<model>/mtbench."""
    return Path(out_dir) if out_dir is not None else common.resolve_output_dir(model_source) / "mtbench"


def safe_name(name: str) -> str:
    """A model or judge name usable as a file name ('org/model' -> 'org_model')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not cleaned:
        raise MTBenchError(f"name {name!r} has no characters usable in a file name")
    return cleaned


def answer_file_path(out: Path, model_id: str) -> Path:
    return out / "model_answer" / f"{safe_name(model_id)}.jsonl"


def judgment_file_path(out: Path, judge_name: str) -> Path:
    return out / "model_judgment" / f"{safe_name(judge_name)}_single.jsonl"


def unpack_judgments(judgment_file: Path) -> Path:
    """A judgment file committed gzipped (results/ keeps large ones as <name>.jsonl.gz) is restored in place before a
    judge appends to it, so rerunning a command goes on from the committed judgments instead of judging them again
    (a reader alone needs no copy: read_jsonl decompresses a .gz)."""
    packed = judgment_file.with_name(judgment_file.name + ".gz")
    if not judgment_file.exists() and packed.is_file():
        partial = judgment_file.with_name(judgment_file.name + ".unpacking")
        with gzip.open(packed, "rb") as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(partial, judgment_file)
    return judgment_file


def scores_file_path(out: Path, judge_name: str) -> Path:
    return out / f"scores_{safe_name(judge_name)}.json"


def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        hint = ""
        if default_data_dir() in path.resolve().parents:
            hint = " (the FastChat data belongs in <shared>/data/mt_bench, see ../shared/data/SOURCES.md; " \
                   "$BADAM_SHARED moves <shared>)"
        raise MTBenchError(f"MT-bench {what} not found: {path}{hint}")
    return path


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[dict]:
    """Every JSON object in a JSONL file that must exist (eval.common drops a torn last line of an interrupted run)."""
    path = _require_file(path, what)
    try:
        return common.read_jsonl(path)
    except ValueError as err:
        raise MTBenchError(f"{what} is corrupt: {err}") from None


def append_jsonl(path: Path, record: dict) -> None:
    """Append one finished record (fsynced), so an interrupted run keeps everything done so far."""
    common.append_jsonl(path, [record])


write_jsonl_atomic = common.write_jsonl_atomic
write_json_atomic = common.write_json_atomic


def load_questions(path: str | os.PathLike | None = None, *, begin: int | None = None,
                   end: int | None = None) -> list[dict]:
    """The MT-bench questions (question_id, category, turns), sliced [begin:end] like FastChat's load_questions."""
    questions = read_jsonl(path or default_question_file(), "question file")
    for q in questions:
        if not {"question_id", "category", "turns"} <= q.keys() or not q["turns"]:
            raise MTBenchError(f"question record lacks question_id/category/turns: {str(q)[:120]}")
    return questions[begin:end]


def load_judge_prompts(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """Judge prompts by name; the four single-answer-grading prompts must be present."""
    prompts = {p["name"]: p for p in read_jsonl(path or default_judge_prompt_file(), "judge prompt file")}
    missing = [name for name in SINGLE_PROMPT_NAMES if name not in prompts]
    if missing:
        raise MTBenchError(f"judge prompt file lacks {missing}; it must hold FastChat's {list(SINGLE_PROMPT_NAMES)}")
    return prompts


def load_answers(path: str | os.PathLike, what: str = "answer file") -> dict[int, dict]:
    """One model's answers by question id (a later record for the same question wins, as in FastChat)."""
    answers = {}
    for record in read_jsonl(path, what):
        if "question_id" not in record or not record.get("choices"):
            raise MTBenchError(f"{what} {path}: record lacks question_id/choices: {str(record)[:120]}")
        choices = record["choices"]
        # the judge reads choices[0]["turns"][k]: a string there would be judged one character per turn
        turns = choices[0].get("turns") if isinstance(choices, list) and isinstance(choices[0], dict) else None
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise MTBenchError(f"{what} {path}: question {record['question_id']}: choices must be a list of "
                               f"{{\"turns\": [answer text per turn]}} (FastChat's format), got {str(choices)[:80]}")
        answers[record["question_id"]] = record
    return answers


def model_name_of_answer_file(path: str | os.PathLike) -> str:
    """FastChat names a model after its answer file: model_answer/<model>.jsonl."""
    name = Path(path).name
    if not name.endswith(".jsonl"):
        raise MTBenchError(f"answer file {path} must end in .jsonl (FastChat names the model after the file)")
    return name[: -len(".jsonl")]


def question_temperature(category: str, mode: str) -> float:
    """Sampling temperature of one question: 0 for 'greedy', FastChat's per-category table for 'fastchat'."""
    if mode == "greedy":
        return 0.0
    if mode == "fastchat":
        return FASTCHAT_TEMPERATURES.get(category, FASTCHAT_DEFAULT_TEMPERATURE)
    raise MTBenchError(f"unknown temperature mode {mode!r}; choose 'fastchat' (per-category table) or 'greedy'")
