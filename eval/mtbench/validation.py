"""How far an MT-bench judge agrees with GPT-4: its scores of five reference models beside their published scores.

The five official MT-bench answer files in <shared>/data/mt_bench/model_answer (gpt-4, gpt-3.5-turbo, vicuna-7b-v1.3,
alpaca-13b, llama-13b) have published GPT-4-judged scores (reference_scores.json beside this file, the source of each
value named there). `python -m eval.mtbench validate-judge` judges these answers with the judge under test through
the same code as `judge` (single-answer grading, FastChat's prompts, GPT-4 reference answers for math / reasoning /
coding), then this module compares: per model the judge's mean over its rated judgments ± standard error and the
share it left unrated; over the models Kendall's tau (tau-b, exact p-value), Spearman's rho and Pearson's r against
the published scores (scipy.stats); and one verdict line: does the judge order the models as GPT-4 did?
The result is judge_validation.json + judge_validation.md in the output folder; plots reads the JSON for T5.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from pathlib import Path

from eval.mtbench.data import MTBenchError, read_jsonl, safe_name, write_json_atomic

REFERENCE_SCORES_FILE = Path(__file__).with_name("reference_scores.json")
VALIDATION_JSON = "judge_validation.json"
VALIDATION_MD = "judge_validation.md"
MIN_MODELS = 3   # below this many rated models a rank correlation says nothing


def load_reference_scores(path: str | os.PathLike | None = None) -> dict:
    """The published scores file (see REFERENCE_SCORES_FILE), checked: every model has a numeric score and a known
    source."""
    path = Path(path or REFERENCE_SCORES_FILE)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MTBenchError(f"reference scores file {path} cannot be read: {err}") from None
    models, sources = doc.get("models"), doc.get("sources", {})
    if not isinstance(models, dict) or len(models) < MIN_MODELS:
        raise MTBenchError(f"reference scores file {path} must list at least {MIN_MODELS} models under 'models'")
    for model, entry in models.items():
        score = entry.get("score") if isinstance(entry, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or entry.get("source") not in sources:
            raise MTBenchError(f"reference scores file {path}: model {model!r} needs a numeric 'score' and a "
                               f"'source' among {sorted(sources)}")
    return doc


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pairs(models: list[str], ours: dict[str, float], published: dict[str, float]) -> tuple[list, list]:
    """(pairs in the published order, pairs swapped or tied by the judge), each pair (higher, lower) as published."""
    kept, swapped = [], []
    for a, b in itertools.combinations(models, 2):
        high, low = (a, b) if published[a] > published[b] else (b, a)
        (kept if ours[high] > ours[low] else swapped).append((high, low))
    return kept, swapped


def agreement(ours: dict[str, float], published: dict[str, float]) -> dict:
    """Rank and linear agreement of the judge's scores `ours` with `published` over the models both have.

    {"n_models", "kendall_tau", "kendall_p" (exact two-sided where scipy can), "spearman_rho", "pearson_r",
    "pairs", "pairs_in_order", "swapped_pairs"}; correlations are None below MIN_MODELS models or when the judge
    gave every model the same score (no order at all)."""
    try:
        from scipy import stats
    except ImportError:
        raise MTBenchError("the agreement needs scipy (pip install 'badam-bench[eval]'); the judgments are saved: "
                           "run the same command where scipy is installed, nothing is judged again") from None

    models = sorted(m for m in ours if m in published and ours[m] is not None)
    x, y = [ours[m] for m in models], [published[m] for m in models]
    kept, swapped = _pairs(models, ours, published)
    out = {"n_models": len(models), "pairs": len(kept) + len(swapped), "pairs_in_order": len(kept),
           "swapped_pairs": [list(p) for p in swapped], "kendall_tau": None, "kendall_p": None,
           "spearman_rho": None, "pearson_r": None}
    if len(models) < MIN_MODELS or len(set(x)) == 1 or len(set(y)) == 1:
        return out
    kendall = stats.kendalltau(x, y)
    out.update(kendall_tau=float(kendall.statistic), kendall_p=float(kendall.pvalue),
               spearman_rho=float(stats.spearmanr(x, y).statistic), pearson_r=float(stats.pearsonr(x, y).statistic))
    return out


def same_order(agree: dict, total: int) -> bool | None:
    """Whether the judge put every one of the `total` reference models in GPT-4's order (None: too few rated)."""
    if agree["n_models"] < MIN_MODELS:
        return None
    return not agree["swapped_pairs"] and agree["n_models"] == total


def verdict(doc: dict) -> str:
    """One plain line: whether the judge orders the reference models as GPT-4 did, with the numbers behind it."""
    agree, total = doc["agreement"], len(doc["models"])
    same = same_order(agree, total)
    if same is None:
        return (f"orders the {total} reference models as GPT-4 did: cannot tell (only {agree['n_models']} of "
                f"{total} got a rating)")
    if agree["kendall_tau"] is None:
        return f"orders the {total} reference models as GPT-4 did: no (it gave every rated model the same score)"
    numbers = (f"Kendall tau={agree['kendall_tau']:.2f}, Spearman rho={agree['spearman_rho']:.2f}, "
               f"{agree['pairs_in_order']} of {agree['pairs']} pairs in GPT-4's order")
    if agree["swapped_pairs"]:
        numbers += "; swapped or tied: " + ", ".join(f"{a} / {b}" for a, b in agree["swapped_pairs"])
    if agree["n_models"] < total:
        numbers += f"; only {agree['n_models']} of {total} got a rating"
    return f"orders the {total} reference models as GPT-4 did: {'yes' if same else 'no'} ({numbers})"


def build_validation(scores: dict, reference: dict, *, answer_files: dict[str, Path], questions: int,
                     turns: tuple[int, ...], settings: dict | None = None) -> dict:
    """The validation document from a scores summary (summarize_single's result for the reference models'
    judgments, as `judge` writes it) and the published scores."""
    rows, ours, published = [], {}, {}
    for model, entry in reference["models"].items():
        summary = scores["models"].get(model, {})
        rated, unrated = summary.get("n_scored", 0), summary.get("n_unparseable", 0)
        judged = rated + unrated
        ours[model], published[model] = summary.get("overall"), float(entry["score"])
        rows.append({"model": model, "score": summary.get("overall"), "se": summary.get("overall_se"),
                     "rated": rated, "judged": judged, "expected": questions * len(turns),
                     "unrated_share": unrated / judged if judged else None,
                     "published": {"score": float(entry["score"]), "label": reference["label"],
                                   "published_as": entry.get("published_as", model),
                                   "source": reference["sources"][entry["source"]]},
                     "answer_file": {"name": Path(answer_files[model]).name,
                                     "sha256": file_sha256(answer_files[model])}})
    judged = sum(r["judged"] for r in rows)
    doc = {"judge": scores["judge"], "what": "MT-bench judge validation: this judge's scores of the official "
           "answers of the reference models beside their published GPT-4-judged scores",
           "questions": questions, "turns": list(turns), "models": rows,
           "unrated_share": sum(r["judged"] - r["rated"] for r in rows) / judged if judged else None,
           "complete": all(r["judged"] == r["expected"] for r in rows),
           "agreement": agreement(ours, published), "settings": settings or {},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    doc["same_order"] = same_order(doc["agreement"], len(rows))
    doc["verdict"] = verdict(doc)
    return doc


def _number(value, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_markdown(doc: dict) -> str:
    judge, agree = doc["judge"], doc["agreement"]
    lines = [f"# MT-bench judge validation: {judge}", "",
             f"{judge} judged the official MT-bench answers of {len(doc['models'])} reference models "
             f"({doc['questions']} questions, turns {', '.join(map(str, doc['turns']))}; FastChat's single-answer "
             "grading, as `python -m eval.mtbench judge`). Beside each: its published score from GPT-4's judgments.",
             "", f"**Verdict: {judge} {doc['verdict']}.**", "",
             f"| model | {judge}: mean ± SE | rated of judged | unrated | published, GPT-4 judge | source |",
             "|---|---|---|---|---|---|"]
    for row in doc["models"]:
        ours = "no rating" if row["score"] is None else f"{row['score']:.2f} ± {_number(row['se'])}"
        share = "—" if row["unrated_share"] is None else f"{row['unrated_share']:.0%}"
        source = row["published"]["source"].split(":")[0]
        lines.append(f"| {row['model']} | {ours} | {row['rated']} of {row['judged']} | {share} | "
                     f"{row['published']['score']:.2f} ({row['published']['published_as']}) | {source} |")
    share = "—" if doc["unrated_share"] is None else f"{doc['unrated_share']:.0%}"
    lines += ["", f"Over the {agree['n_models']} rated models: Kendall tau-b {_number(agree['kendall_tau'])} "
              f"(exact two-sided p {_number(agree['kendall_p'], 3)}), Spearman rho {_number(agree['spearman_rho'])}, "
              f"Pearson r {_number(agree['pearson_r'])}; {agree['pairs_in_order']} of {agree['pairs']} pairs in "
              f"GPT-4's order. Judgments without a rating: {share} (left out of the means, as FastChat does)."]
    if not doc["complete"]:
        lines += ["", "Not every model has all its judgments: the numbers above cover what was judged."]
    lines += ["", "Sources of the published scores:"]
    lines += [f"- {text}" for text in sorted({row["published"]["source"] for row in doc["models"]})]
    lines += ["", "A judge that orders these models as GPT-4 did can still be too noisy to separate close "
              "fine-tuning runs: compare the differences in T5 with their standard errors."]
    return "\n".join(lines) + "\n"


def check_folder_is_for(out: Path, judge: str) -> None:
    """One folder holds one judge's validation: refuse a folder whose judge_validation.json is another judge's (it
    would be replaced; README: --out results/mtbench_judge_validation/<judge>)."""
    path = Path(out) / VALIDATION_JSON
    if not path.is_file():
        return
    other = read_validation(path)["judge"]
    if other != judge:
        raise MTBenchError(f"{path} is the validation of judge {other!r}, which this call for {judge!r} would "
                           f"replace; give each judge its own --out (e.g. {Path(out).parent / safe_name(judge)})")


def selected_judgments(judgment_file: Path, questions: list[dict], turns: tuple[int, ...]):
    """The judgments of `questions` and `turns` in the judgment file, as a frame for aggregate.summarize_single."""
    import pandas as pd

    ids = {q["question_id"] for q in questions}
    frame = pd.DataFrame(read_jsonl(judgment_file, "judgment file"))
    return frame[frame["question_id"].isin(ids) & frame["turn"].isin(turns)] if not frame.empty else frame


def write_validation(out: str | os.PathLike, doc: dict) -> tuple[Path, Path]:
    out = Path(out)
    write_json_atomic(out / VALIDATION_JSON, doc)
    markdown = out / VALIDATION_MD
    partial = markdown.with_name(markdown.name + ".partial")
    partial.write_text(format_markdown(doc))
    partial.replace(markdown)
    return out / VALIDATION_JSON, markdown


def read_validation(path: str | os.PathLike) -> dict:
    """A judge_validation.json, checked for the fields readers use (judge, verdict, agreement, models)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise MTBenchError(f"{path} cannot be read: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("judge"), str) or not isinstance(doc.get("verdict"), str) \
            or not isinstance(doc.get("agreement"), dict) or not isinstance(doc.get("models"), list):
        raise MTBenchError(f"{path} is not a judge validation (expected judge, verdict, agreement, models)")
    return doc
