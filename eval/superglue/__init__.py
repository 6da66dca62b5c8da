"""SuperGLUE evaluator: fine-tune an encoder on BoolQ, CB, COPA, MultiRC, RTE, WiC and WSC through the harness with any
registered method, select the checkpoint on validation and report test metrics (the BAdam paper's protocol).

Python API:
    from eval.superglue import paper_splits, task_metrics, run_task, main
    splits = paper_splits("rte")                       # train / validation / test Examples (splits.py)
    task_metrics("multirc", predictions, labels, groups)  # SuperGLUE metrics in percent (metrics.py)
    entry = run_task("rte", cfg, Path("runs/x/tasks"))  # fine-tune + select + score one task (finetune.py)
    main(["--model", "minilm", "--tasks", "rte"])      # the CLI (cli.py)
    evaluate_runs([run_dir], tasks="rte")             # the evaluators' common entry (run directories, below)
"""
from eval.superglue.metrics import task_metrics
from eval.superglue.splits import TaskSplits, paper_splits
from eval.superglue.tasks import Example, SuperGlueDataError, TaskSpec, get_task, parse_tasks, task_names


def run_task(*args, **kwargs):
    """Fine-tune and score one task (eval.superglue.finetune.run_task); imported lazily because it loads the
    training harness and transformers."""
    from eval.superglue.finetune import run_task as _run_task

    return _run_task(*args, **kwargs)


def evaluate_runs(run_dirs, *, jobs: int = 1, gpus: str | list | None = None, **options) -> str:
    """The evaluator protocol (experiments.run_all calls it through `python -m eval superglue`). Each run directory
    holds the config.yaml of a SuperGLUE config (data.format superglue; run_all writes it for such a group instead of
    training it, since fine-tuning per task with checkpoint selection is this evaluator's work); its tasks are
    fine-tuned and scored there: <run_dir>/tasks/<task>/ and <run_dir>/eval/superglue.json. Options are the CLI's
    flags (tasks, max_eval, epochs, max_steps, ...; true for a flag without value, e.g. force). Returns a short note.

    jobs > 1: the run directories are fine-tuned in that many child processes at once (`python -m eval.superglue`,
    output in <run_dir>/eval/superglue.log), spread over the GPUs `gpus` ("0,1" or [0, 1]; default: every visible
    one), as run_all spreads training runs: one small encoder leaves a GPU mostly idle. Every run directory is
    tried; the ones that did not run are named at the end."""
    import json
    import sys

    from eval.common import run_in_children, visible_gpus
    from eval.superglue.cli import main as cli_main
    from experiments.rundir import RunDir

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    flags = [f"--{key.replace('_', '-')}" + ("" if value is True else f"={value}")
             for key, value in options.items() if value is not False and value is not None]
    run_dirs = list(map(RunDir, run_dirs))
    for run_dir in run_dirs:
        if not run_dir.config.is_file():
            raise FileNotFoundError(f"{run_dir.path} holds no config.yaml of a SuperGLUE config to fine-tune from")
    argvs = [["--config", str(run_dir.config), "--out", str(run_dir.path), "--no-progress", *flags]
             for run_dir in run_dirs]
    if jobs > 1 and len(run_dirs) > 1:
        listed = gpus.split(",") if isinstance(gpus, str) else gpus
        devices = [str(g).strip() for g in listed if str(g).strip()] if listed else visible_gpus()
        codes = run_in_children([([sys.executable, "-m", "eval.superglue", *argv], run_dir.eval_dir / "superglue.log")
                                 for argv, run_dir in zip(argvs, run_dirs)], jobs=jobs, gpus=devices)
    else:
        codes = [cli_main(argv) for argv in argvs]
    notes, failed = [], []
    for run_dir, code in zip(run_dirs, codes):
        results_file = run_dir.eval_file("superglue.json")
        if code == 2 or not results_file.is_file():
            log = f", log {run_dir.eval_dir / 'superglue.log'}" if jobs > 1 and len(run_dirs) > 1 else ""
            failed.append(f"{run_dir.path} (exit code {code}{log})")
            continue
        overall = json.loads(results_file.read_text(encoding="utf-8")).get("overall") or {}
        score = overall.get("score")
        notes.append(f"{run_dir.path.name} {'n/a' if score is None else f'{score:.1f}'}"
                     + (f" (failed: {', '.join(overall['tasks_failed'])})" if overall.get("tasks_failed") else ""))
    if failed:
        raise RuntimeError(f"SuperGLUE did not run for {', '.join(failed)}; the reason is above or in the log")
    return "; superglue mean score " + ", ".join(notes) if notes else ""


def main(argv=None) -> int:
    from eval.superglue.cli import main as _main

    return _main(argv)


__all__ = ["Example", "SuperGlueDataError", "TaskSpec", "TaskSplits", "evaluate_runs", "get_task", "main", "paper_splits",
           "parse_tasks", "run_task", "task_metrics", "task_names"]
