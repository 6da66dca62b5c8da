"""The evaluator protocol for MT-bench (experiments.run_all calls it through `python -m eval mtbench`): answers of
every run that saved its model, and optionally of the model the runs started from. Judging needs a judge (an API or a
local model) and stays a separate step: python -m eval.mtbench judge --run-dir <run dir> ...; answered_run_dirs finds
the run directories ready for it (python -m eval.mtbench.runs <root> [group glob] prints them)."""
from __future__ import annotations

import sys
from pathlib import Path

from eval.runs import base_model_source, base_run_dirs
from experiments.rundir import RunDir


def _device(options: dict) -> dict:
    if options.get("device") != "auto":
        return options
    import torch

    return {**options, "device": "cuda" if torch.cuda.is_available() else "cpu"}


def evaluate_runs(run_dirs, *, base: bool = False, **options) -> str:
    """Answers (`python -m eval.mtbench answer`, options are its flags: batch_size, max_new_tokens, device ("auto":
    CUDA when available), ...) of each run directory with a saved model into <run_dir>/eval/mtbench; runs without one
    are skipped. With base=True also the answers of each group's starting model, in a run directory
    <group>/<stem>-base whose summary says method "base" (the tables' untuned row; eval/runs.py); such a directory
    may also be given among run_dirs. Returns a short note."""
    from eval.mtbench.__main__ import main as mtbench_main

    options = _device(options)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]

    def answer_base(base_dir: Path) -> None:
        model = base_model_source(base_dir)
        if mtbench_main(["answer", "--model", model, "--out-dir", str(RunDir(base_dir).eval_file("mtbench")),
                         "--model-id", base_dir.name, *flags]) != 0:
            raise RuntimeError(f"MT-bench answers of the base model {model} failed")

    answered, given_bases = [], []
    for run_dir in map(RunDir, run_dirs):
        if base_model_source(run_dir.path) is not None:   # a base run directory handed over on its own
            answer_base(run_dir.path)
            given_bases.append(run_dir.path)
        elif run_dir.has_saved_model():
            if mtbench_main(["answer", "--model", str(run_dir.path), *flags]) != 0:
                raise RuntimeError(f"MT-bench answers of {run_dir.path} failed")
            answered.append(run_dir.path)
    bases = base_run_dirs(answered, note="untuned base model: MT-bench answers only") if base else []
    for base_dir in bases:
        if base_dir not in given_bases:
            answer_base(base_dir)
    total_bases = len(set(bases) | set(given_bases))
    return f"; answered {len(answered)} run(s)" + (f" and {total_bases} base model(s)" if total_bases else "")


def answered_run_dirs(root: str | Path, group_glob: str = "*", questions: list[dict] | None = None
                      ) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete): the run directories <root>/<group>/<run> (group matching group_glob) whose
    eval/mtbench/model_answer holds answer files, the <stem>-base directories of the base model included. Complete:
    every answer file answers every question (default: the shared question file); incomplete ones (answering still
    under way or cut off) are better judged once their answers are all there."""
    from eval.mtbench.data import load_questions

    wanted = {q["question_id"] for q in (questions if questions is not None else load_questions())}
    complete, incomplete = [], []
    for run_dir in sorted(p for p in Path(root).glob(f"{group_glob}/*") if p.is_dir()):
        done = answers_complete(run_dir, wanted)
        if done is not None:
            (complete if done else incomplete).append(run_dir)
    return complete, incomplete


def answers_complete(run_dir: str | Path, question_ids: set) -> bool | None:
    """Whether every answer file of a run directory answers every question id; None when it holds none."""
    from eval.mtbench.data import load_answers

    files = sorted(RunDir(Path(run_dir)).eval_file("mtbench").glob("model_answer/*.jsonl"))
    if not files:
        return None
    return all(question_ids <= set(load_answers(f)) for f in files)


def main(argv: list[str] | None = None) -> int:
    """Print the complete answered run directories, one a line; the incomplete ones go to stderr."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m eval.mtbench.runs <root> [group glob, default *]", file=sys.stderr)
        return 2
    complete, incomplete = answered_run_dirs(args[0], *args[1:])
    for run_dir in complete:
        print(run_dir)
    for run_dir in incomplete:
        print(f"not every question answered yet, not judged: {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
