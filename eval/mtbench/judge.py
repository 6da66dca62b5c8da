"""Step 2 of MT-bench: single-answer grading by a judge model, in FastChat's judgment JSONL format.

Prompt choice, prompt filling and rating parsing follow fastchat/llm_judge/common.py (run_judge_single,
play_a_match_single) and gen_judgment.py (make_judge_single, make_match_single): turn 1 is graded with single-v1
(single-math-v1 with the reference answer for math / reasoning / coding), turn 2 with the multi-turn variants,
which show the judge the whole two-turn conversation. Judges: any OpenAI-compatible endpoint (HTTPJudge, how GPT-4
judged in the paper) or a local Hugging Face chat model (LocalHFJudge). A re-run skips items already judged.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from eval.mtbench.chat_api import OpenAIChatClient
from eval.mtbench.data import (NEED_REF_CATS, MTBenchError, append_jsonl, load_judge_prompts, read_jsonl,
                               unpack_judgments)
from eval.mtbench.generation import generate_chat_batch

# common.py: `one_score_pattern` and its fallback `one_score_pattern_backup`.
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
UNPARSEABLE = -1


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """One FastChat judge: the judge model's name plus one of the judge_prompts.jsonl records."""
    model_name: str
    template: dict
    ref_based: bool = False
    multi_turn: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.model_name, self.template["name"])


def make_single_judges(judge_name: str, prompts: dict[str, dict]) -> dict[str, JudgePrompt]:
    """The four single-grading judges keyed as in gen_judgment.py's make_judge_single."""
    return {"default": JudgePrompt(judge_name, prompts["single-v1"]),
            "math": JudgePrompt(judge_name, prompts["single-math-v1"], ref_based=True),
            "default-mt": JudgePrompt(judge_name, prompts["single-v1-multi-turn"], multi_turn=True),
            "math-mt": JudgePrompt(judge_name, prompts["single-math-v1-multi-turn"], ref_based=True,
                                   multi_turn=True)}


def pick_judge(judges: dict[str, JudgePrompt], category: str, turn: int) -> JudgePrompt:
    base = "math" if category in NEED_REF_CATS else "default"
    return judges[base + ("-mt" if turn == 2 else "")]


def build_user_prompt(question: dict, answer: dict, judge: JudgePrompt, ref_answer: dict | None) -> str:
    """The judge's user message, filled exactly like run_judge_single (first choice of each answer)."""
    kwargs = {}
    if ref_answer is not None:
        kwargs["ref_answer_1"] = ref_answer["choices"][0]["turns"][0]
        if judge.multi_turn:
            kwargs["ref_answer_2"] = ref_answer["choices"][0]["turns"][1]
    turns = answer["choices"][0]["turns"]
    if judge.multi_turn:
        if len(turns) < 2 or len(question["turns"]) < 2:
            raise MTBenchError(f"question {question['question_id']}: the answer has {len(turns)} turn(s); "
                               "grading turn 2 needs two")
        return judge.template["prompt_template"].format(question_1=question["turns"][0],
                                                        question_2=question["turns"][1], answer_1=turns[0],
                                                        answer_2=turns[1], **kwargs)
    return judge.template["prompt_template"].format(question=question["turns"][0], answer=turns[0], **kwargs)


def judge_messages(judge: JudgePrompt, user_prompt: str) -> list[dict]:
    """OpenAI-style messages as FastChat's chatgpt conversation template produces them (system, then user)."""
    system = judge.template["system_prompt"]
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_prompt}]


def parse_rating(judgment: str) -> int | float:
    """The rating in '[[8]]' (else '[8]'); -1 when there is none, as in run_judge_single."""
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    if match:
        text = match.group(1)
        # FastChat uses ast.literal_eval, which gives the same int / float but crashes on a leading zero ("08").
        return float(text) if "." in text else int(text)
    return UNPARSEABLE


class JudgeBackend(Protocol):
    name: str
    batch_size: int

    def complete_batch(self, conversations: list[list[dict]]) -> list[str]: ...


class HTTPJudge:
    """A judge behind an OpenAI-compatible endpoint; `parallel` requests in flight (FastChat's --parallel)."""

    def __init__(self, client: OpenAIChatClient, *, parallel: int = 1, name: str | None = None):
        if parallel < 1:
            raise MTBenchError(f"parallel must be >= 1, got {parallel}")
        self.client = client
        self.name = name or client.model
        self.batch_size = parallel

    def complete_batch(self, conversations: list[list[dict]]) -> list[str]:
        if self.batch_size == 1:
            return [self.client.complete(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            return list(pool.map(self.client.complete, conversations))


class LocalHFJudge:
    """A local Hugging Face chat model as judge: greedy decoding (FastChat asks its judges for temperature 0)."""

    def __init__(self, model, tokenizer, *, name: str, max_new_tokens: int = 2048, batch_size: int = 4):
        if batch_size < 1:
            raise MTBenchError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        model.eval()

    def complete_batch(self, conversations: list[list[dict]]) -> list[str]:
        return generate_chat_batch(self.model, self.tokenizer, conversations, max_new_tokens=self.max_new_tokens,
                                   temperature=0.0).texts


class DeferredJudge:
    """A judge built on its first batch (`load` returns it): a rerun that finds every item judged, e.g. to rebuild
    the scores on a machine without the judge's GPU, never loads the model."""

    def __init__(self, name: str, batch_size: int, load):
        if batch_size < 1:
            raise MTBenchError(f"batch_size must be >= 1, got {batch_size}")
        self.name, self.batch_size = name, batch_size
        self._load, self._judge = load, None

    def complete_batch(self, conversations: list[list[dict]]) -> list[str]:
        if self._judge is None:
            self._judge = self._load()
        return self._judge.complete_batch(conversations)

def _done_keys(judgment_file: Path) -> set[tuple]:
    if not judgment_file.exists():
        return set()
    return {(r["question_id"], r["model"], tuple(r["judge"]), r["turn"])
            for r in read_jsonl(judgment_file, "judgment file")}


def judge_answers(model_answers: dict[str, dict[int, dict]], questions: list[dict], backend: JudgeBackend,
                  judgment_file: str | os.PathLike, *, judge_prompts: dict[str, dict] | None = None,
                  reference_answers: dict[int, dict] | None = None, turns: tuple[int, ...] = (1, 2),
                  progress: bool = True) -> dict:
    """Grade every (question, model, turn) not yet in `judgment_file`; returns counts of what was done.

    model_answers: model name -> question id -> FastChat answer record. Questions a model has not answered are
    skipped and counted. reference_answers (question id -> answer record) must cover the math / reasoning /
    coding questions that are graded.
    """
    if not set(turns) <= {1, 2} or not turns:
        raise MTBenchError(f"turns must be a non-empty subset of (1, 2), got {turns}")
    judges = make_single_judges(backend.name, judge_prompts or load_judge_prompts())
    judgment_file = unpack_judgments(Path(judgment_file))
    done = _done_keys(judgment_file)

    pending, skipped_done, missing = [], 0, {}
    for model in sorted(model_answers):
        for q in questions:
            answer = model_answers[model].get(q["question_id"])
            if answer is None:
                missing[model] = missing.get(model, 0) + 1
                continue
            for turn in turns:
                if turn == 2 and len(q["turns"]) < 2:
                    continue
                judge = pick_judge(judges, q["category"], turn)
                if (q["question_id"], model, judge.key, turn) in done:
                    skipped_done += 1
                    continue
                ref = None
                if judge.ref_based:
                    ref = (reference_answers or {}).get(q["question_id"])
                    if ref is None:
                        raise MTBenchError(f"no reference answer for question {q['question_id']} "
                                           f"({q['category']}); single-math-v1 grading needs one")
                pending.append((q, model, answer, judge, ref, turn))

    with tqdm(total=len(pending), desc=f"MT-bench judge ({backend.name})", unit="item",
              disable=not progress) as bar:
        for first in range(0, len(pending), backend.batch_size):
            chunk = pending[first: first + backend.batch_size]
            prompts = [build_user_prompt(q, answer, judge, ref) for q, _, answer, judge, ref, _ in chunk]
            replies = backend.complete_batch([judge_messages(item[3], p) for item, p in zip(chunk, prompts)])
            for (q, model, _, judge, _, turn), prompt, reply in zip(chunk, prompts, replies):
                append_jsonl(judgment_file, {"question_id": q["question_id"], "model": model,
                                             "judge": list(judge.key), "user_prompt": prompt, "judgment": reply,
                                             "score": parse_rating(reply), "turn": turn, "tstamp": time.time()})
            bar.update(len(chunk))
    return {"judge": backend.name, "judgment_file": str(judgment_file), "judged": len(pending),
            "skipped_done": skipped_done, "missing_answers": missing}
