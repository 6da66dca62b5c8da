"""How far each MT-bench judge of T5 can be trusted: its validation against GPT-4 on MT-bench's reference models.

`python -m eval.mtbench validate-judge --out results/mtbench_judge_validation/<judge> ...` writes
judge_validation.json there (eval/mtbench/validation.py): the judge's scores of the official answers of five models
beside their published GPT-4-judged scores, rank correlations and a verdict. T5's caption and claim line state that
agreement for each judge it shows, or that the judge is unvalidated, so that a reader can weigh "not separable by
this judge" and every score of that judge.
"""
from __future__ import annotations

from pathlib import Path

from eval.mtbench.data import MTBenchError, safe_name
from eval.mtbench.validation import VALIDATION_JSON, read_validation

VALIDATION_ROOT = "mtbench_judge_validation"   # results/<this>/<judge>/judge_validation.json
REFERENCE_JUDGES = ("gpt-4",)                     # the judge the published scores come from needs no validation


def load_judge_validations(results: str | Path, problems: list[str] | None = None) -> dict[str, dict]:
    """{judge name (as its judgments record it): validation document, with "where": its folder relative to
    `results`}; an unreadable file is skipped and named in `problems` (raised when no list is given)."""
    results, found = Path(results), {}
    for path in sorted((results / VALIDATION_ROOT).glob(f"*/{VALIDATION_JSON}")):
        try:
            doc = read_validation(path)
        except MTBenchError as err:
            if problems is None:
                raise
            problems.append(f"{path.parent} skipped: {err}")
            continue
        found[doc["judge"]] = {**doc, "where": path.parent.relative_to(results).as_posix()}
    return found


def _share(value) -> str:
    return "?" if value is None else f"{value:.0%}"


def agreement_text(judge: str, validations: dict[str, dict] | None) -> str:
    """One clause on the judge's agreement with GPT-4 (rank correlation over the reference models, unrated share),
    'unvalidated' with the command that measures it, or '' for GPT-4 itself."""
    if judge.lower().startswith(REFERENCE_JUDGES):
        return ""
    doc = (validations or {}).get(judge)
    if doc is None:
        return (f"judge {judge} is unvalidated: its agreement with GPT-4 was never measured (python -m eval.mtbench "
                f"validate-judge --local-judge {judge} --out results/{VALIDATION_ROOT}/{safe_name(judge)})")
    agree, total = doc["agreement"], len(doc["models"])
    if agree.get("kendall_tau") is None:
        measured = f"no rank correlation ({agree.get('n_models', 0)} of {total} models rated, or all scored alike)"
    else:
        measured = (f"Kendall tau {agree['kendall_tau']:.2f}, Spearman rho {agree['spearman_rho']:.2f}, "
                    f"{agree['pairs_in_order']} of {agree['pairs']} pairs in GPT-4's order")
    same = {True: "yes", False: "no"}.get(doc.get("same_order"), "cannot tell")
    return (f"judge {judge} against GPT-4 on MT-bench's {total} reference models ({doc['where']}): {measured}, "
            f"same order: {same}; {_share(doc.get('unrated_share'))} of its judgments there gave no rating")
