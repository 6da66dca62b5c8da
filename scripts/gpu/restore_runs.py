"""Put a profile's finished runs committed under results/ into a fresh output directory, so that run_all on a new GPU
machine trains only what is missing (and a sweep committed earlier still decides the lrs of the runs after it).
SuperGLUE run directories come along with the tasks they finished (the evaluator does only the others).

A run that an evaluator of the profile reads, whose weights stayed on an earlier machine (they are never committed)
and whose evaluator outputs are not all committed, is left out: run_all trains it again, the same seed, config and
hardware giving the same weights (results/PROVENANCE_gpu_2026-11-25b.md), and the evaluators then read them.

    python3 scripts/gpu/restore_runs.py --profile quality-gpu --results results --output-dir runs/quality-gpu
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from eval.math import results_complete as math_results_complete
from eval.math.readers import MathDataError
from eval.mtbench.data import load_questions
from eval.mtbench.runs import answers_complete
from experiments.config import ConfigError
from experiments.lr_selection import EXTENSIONS_FILE, LR_SELECTION_FILE
from experiments.run_all import load_profile
from experiments.suite import select_groups


def _math_complete(run: Path, spec: dict) -> bool:
    """Whether the math evaluator's results in `run` cover what its options ask for. Without the math data here
    (a session that carried only another part's data) nothing can be checked and nothing could be evaluated either:
    the run is kept as it is, with a line saying so, rather than trained again or stopping the restore."""
    try:
        return math_results_complete(run / "eval", **(spec.get("options") or {}))
    except MathDataError as exc:
        print(f"{run}: math results kept unchecked ({exc})", file=sys.stderr)
        return True


def evaluator_outputs_complete(profile: dict, run: Path, group: str, method: str, question_ids: set) -> bool:
    """Whether every evaluator of the profile that reads (group, method) left its output in `run` (MT-bench: every
    question answered, eval.mtbench.runs.answers_complete; math: every dataset and item the evaluator's options ask
    for, eval.math.results_complete)."""
    for spec in profile.get("evaluators") or []:
        if group not in (spec.get("groups") or [group]) or method not in (spec.get("methods") or [method]):
            continue
        if spec["name"] == "rank" and not (run / "eval" / "rank.json").is_file():
            return False
        if spec["name"] == "mtbench" and not answers_complete(run, question_ids):
            return False
        if spec["name"] == "math" and not _math_complete(run, spec):
            return False
        if spec["name"] not in ("rank", "mtbench", "math") and not (run / "eval").is_dir():
            return False
    return True


def restore(profile: dict, results: Path, out: Path, question_ids: set | None = None,
            groups: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Copy finished runs of the profile's groups (or of those `groups` selects, experiments.suite.select_groups) from
    `results` into `out` (existing ones are kept); ConfigError when a pattern of `groups` selects no group.
    Returns the restored runs and the runs left out to be trained again for their evaluators, as 'group/run' names.
    question_ids: the MT-bench questions an answer set must cover (default: the shared question file's, read only
    when an MT-bench evaluator reads one of the groups)."""
    profile_groups = {entry["group"] for entry in profile["runs"]}
    # names or patterns such as '*_qwen25_coder_05b', selected as run_all's --groups selects them (the same function:
    # a pattern that selects no group of the profile is refused here as there, not taken for a folder of results/)
    where = f"profile {profile['name']}" if "name" in profile else "the profile"
    groups = select_groups(profile_groups, groups, where=where) if groups else sorted(profile_groups)
    if question_ids is None and any(spec["name"] == "mtbench" and set(spec.get("groups") or groups) & set(groups)
                                    for spec in profile.get("evaluators") or []):
        question_ids = {q["question_id"] for q in load_questions()}
    restored, retrain = [], []
    for group in groups:
        for summary_file in sorted((results / group).glob("*/summary.json")):
            run = summary_file.parent
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            if summary.get("status") != "ok" or (out / group / run.name).exists():
                continue
            method = str(summary.get("method"))
            kept_weights = bool(((summary.get("config") or {}).get("output") or {}).get("save_model"))
            if kept_weights and not evaluator_outputs_complete(profile, run, group, method, question_ids):
                retrain.append(f"{group}/{run.name}")
                continue
            shutil.copytree(run, out / group / run.name)
            restored.append(f"{group}/{run.name}")
        # run directories of a group the superglue evaluator trains: no summary.json of their own; the evaluator
        # skips the tasks their eval/superglue.json holds (same settings), so a session goes on where one stopped
        for scores in sorted((results / group).glob("*/eval/superglue.json")):
            run = scores.parent.parent
            if not (run / "summary.json").is_file() and not (out / group / run.name).exists():
                shutil.copytree(run, out / group / run.name)
                restored.append(f"{group}/{run.name}")
        # the lr choices a group recorded, and the lrs a sweep added past the edge of its grid (run_all plans their
        # runs again from this record); runs moved aside as stale (<group>/superseded/, one level deeper than the
        # patterns above) are never restored as runs
        for record in (LR_SELECTION_FILE, EXTENSIONS_FILE):
            if (results / group / record).is_file():
                (out / group).mkdir(parents=True, exist_ok=True)
                shutil.copy(results / group / record, out / group / record)
    return restored, retrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--groups", help="comma-separated groups or glob patterns to restore (default: every group of the profile)")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    try:
        restored, retrain = restore(load_profile(args.profile), args.results, args.output_dir, groups=groups)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"restored {len(restored)} finished run(s) from {args.results}; trained again for their evaluators: "
          f"{', '.join(retrain) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
