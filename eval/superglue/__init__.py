"""SuperGLUE evaluator: fine-tune an encoder on BoolQ, CB, COPA, MultiRC, RTE, WiC and WSC through the harness with any
registered method, select the checkpoint on validation and report test metrics (the BAdam paper's protocol).

Python API:
    from eval.superglue import paper_splits, task_metrics, run_task, main
    splits = paper_splits("rte")                       # train / validation / test Examples (splits.py)
    task_metrics("multirc", predictions, labels, groups)  # SuperGLUE metrics in percent (metrics.py)
    entry = run_task("rte", cfg, Path("runs/x/tasks"))  # fine-tune + select + score one task (finetune.py)
    main(["--model", "minilm", "--tasks", "rte"])      # the CLI (cli.py)
"""
from eval.superglue.metrics import task_metrics
from eval.superglue.splits import TaskSplits, paper_splits
from eval.superglue.tasks import Example, SuperGlueDataError, TaskSpec, get_task, parse_tasks, task_names


def run_task(*args, **kwargs):
    """Fine-tune and score one task (eval.superglue.finetune.run_task); imported lazily because it loads the
    training harness and transformers."""
    from eval.superglue.finetune import run_task as _run_task

    return _run_task(*args, **kwargs)


def main(argv=None) -> int:
    from eval.superglue.cli import main as _main

    return _main(argv)


__all__ = ["Example", "SuperGlueDataError", "TaskSpec", "TaskSplits", "get_task", "main", "paper_splits",
           "parse_tasks", "run_task", "task_metrics", "task_names"]
