"""MT-bench evaluation (Zheng et al. 2023, FastChat's llm_judge) as used in the BAdam paper.

Three steps, each a function and a CLI command (python -m eval.mtbench {answer,judge,show}):
  generate_answers   a local HF chat model answers the 80 two-turn questions (FastChat answer JSONL)
  judge_answers      a judge (OpenAI-compatible endpoint or local HF model) grades each turn 1-10
  summarize_single   per-model turn-1 / turn-2 / overall / per-category means, as FastChat's show_result
and `evaluate_runs(run_dirs, base=False, **options)`, the evaluators' common entry (eval/mtbench/runs.py).
Heavy imports (torch, transformers, requests, pandas) happen in the submodules, so importing this package is cheap.
"""
from __future__ import annotations

from eval.mtbench.data import (FASTCHAT_TEMPERATURES, NEED_REF_CATS, MTBenchError, load_answers,
                               load_judge_prompts, load_questions, output_dir)

__all__ = ["FASTCHAT_TEMPERATURES", "NEED_REF_CATS", "MTBenchError", "load_answers", "load_judge_prompts",
           "load_questions", "output_dir", "generate_answers", "judge_answers", "summarize_single",
           "OpenAIChatClient", "JudgeEndpointError", "HTTPJudge", "LocalHFJudge", "parse_rating", "evaluate_runs"]

_LAZY = {"generate_answers": "eval.mtbench.answer", "judge_answers": "eval.mtbench.judge",
         "HTTPJudge": "eval.mtbench.judge", "LocalHFJudge": "eval.mtbench.judge", "parse_rating": "eval.mtbench.judge",
         "summarize_single": "eval.mtbench.aggregate", "OpenAIChatClient": "eval.mtbench.chat_api",
         "JudgeEndpointError": "eval.mtbench.chat_api"}


def evaluate_runs(run_dirs, **options) -> str:
    """The evaluator protocol (eval/mtbench/runs.py): answers of every run that saved its model, optionally of the
    base model too (base=True)."""
    from eval.mtbench.runs import evaluate_runs as answer_runs

    return answer_runs(run_dirs, **options)


def __getattr__(name: str):
    # Lazy so `import eval.mtbench` (e.g. for the CLI's `show`) does not pull in torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eval.mtbench' has no attribute {name!r}")
