"""`python -m eval.superglue`: fine-tune and score an encoder on SuperGLUE tasks, one task after the other.

    python -m eval.superglue --model minilm --method badam --tasks rte,cb --epochs 3 --lr 1e-5 --batch-size 16 \
        --max-steps 200 --out runs/superglue/minilm-badam [method.switch_block_every=26 train.warmup_ratio=0]

Settings are a harness RunConfig (experiments/config.py): SuperGLUE defaults (below) < `--config FILE` < the flags <
dotted `section.key=value` overrides, validated by the harness (unknown keys and method options are refused).

Output (`--out DIR`, default runs/superglue/<model>-<method>):
  DIR/eval/superglue.json   per task: test metrics of the best-validation checkpoint, validation metrics, the
                            evaluation history, split sizes and protocol, training figures; overall: mean score
  DIR/tasks/<task>/         the harness run directory of that task's training (config.yaml, metrics.jsonl, summary)
A task already in superglue.json with status ok and the same settings is skipped on a rerun; different settings are
refused (use --force to replace the results, or another --out).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from baselines.registry import method_names
from eval.common import source_slug, write_json_atomic
from eval.superglue.finetune import ModelUnavailableError, run_task
from eval.superglue.splits import paper_splits
from eval.superglue.tasks import SuperGlueDataError, get_task, parse_tasks, task_names
from experiments.config import COMMON_METHOD_KEYS, ConfigError, RunConfig, apply_overrides, config_from_dict, \
    config_to_dict, load_yaml, parse_override
from experiments.paths import REPO_ROOT

RESULTS_FILE = Path("eval") / "superglue.json"
PAPER_TASKS = ("boolq", "copa", "multirc", "rte", "wic", "wsc")  # the six tasks the BAdam paper reports

# Defaults: the paper's SuperGLUE recipe where it is known (Ledzy/BAdam roberta-superglue README: lr 1e-5 (jiant
# default), batch 16, BAdam K = 100 in ascending order) and jiant's defaults (linear decay after
# warmup_steps_proportion = 0.1 in jiant/proj/main/scripts/configurator.py, max_grad_norm 1.0, max_seq_length 256).
# The paper trains 32 epochs; 3 here keeps a default run affordable, pass --epochs 32 for the paper's length.
SUPERGLUE_DEFAULTS = {
    "seed": 42,
    "model": {"source": "minilm"},
    "data": {"source": "superglue", "format": "superglue", "max_length": 256},
    "method": {"name": "badam", "lr": 1e-5, "weight_decay": 0.0,
               "badam": {"switch_block_every": 100, "switch_mode": "ascending"},
               "bsgd": {"switch_block_every": 100, "switch_mode": "ascending"}},
    "train": {"batch_size": 16, "epochs": 3, "lr_schedule": "linear", "warmup_ratio": 0.1, "max_grad_norm": 1.0,
              "eval_batch_size": 64},
}
# Keys that differ per task and are left out when checking that a rerun uses the same settings.
PER_TASK_KEYS = {("run_name",), ("data", "subset"), ("model", "task"), ("model", "num_labels"), ("output",)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.superglue", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False,  # "--forc" must not silently mean --force
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", help="model source for experiments.models.load_model (minilm, mpnet, "
                                   "random:roberta-large, random:tiny-bert, a folder, ...); default minilm")
    p.add_argument("--method", help=f"training method; one of {', '.join(method_names())}; default badam")
    p.add_argument("--tasks", help=f"comma-separated tasks or 'all' ({', '.join(task_names())}); default all")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-steps", type=int, help="optimizer steps per task (wins over --epochs)")
    p.add_argument("--eval-every", type=int, help="steps between validation/test scoring; default 0 = every epoch")
    p.add_argument("--max-length", type=int, help="tokens per input (pair), default 256")
    p.add_argument("--max-train", type=int, help="seeded subset of the training examples (short runs)")
    p.add_argument("--max-eval", type=int, help="first N validation and test examples only (short runs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", help="weight storage dtype: bf16 | fp32 (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--config", help="a harness YAML config to start from (data.subset may name the tasks)")
    p.add_argument("--out", help="run directory for the results; default runs/superglue/<model>-<method>")
    p.add_argument("--force", action="store_true", help="rerun tasks already done; replace results of other settings")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="harness config overrides, e.g. method.switch_block_every=26 method.rank=8")
    return p


def base_config_dict(args: argparse.Namespace) -> tuple[dict, set[str]]:
    """The settings as a raw config mapping (defaults < --config < flags < overrides) and the method options that
    were set explicitly (flags and overrides win over a method's own subsection)."""
    import torch

    data = copy.deepcopy(SUPERGLUE_DEFAULTS)  # apply_overrides writes into nested dicts of its input
    if args.config:
        data = apply_overrides(data, [(k, v) for k, v in _flatten(load_yaml(args.config))])
    flags = {"model.source": args.model, "method.name": args.method, "method.lr": args.lr,
             "method.weight_decay": args.weight_decay, "train.epochs": args.epochs,
             "train.batch_size": args.batch_size, "train.max_steps": args.max_steps,
             "train.eval_every": args.eval_every, "data.max_length": args.max_length,
             "data.max_samples": args.max_train, "seed": args.seed, "train.device": args.device,
             "model.dtype": args.dtype}
    parsed = [(k, v) for k, v in flags.items() if v is not None] + [parse_override(o) for o in args.overrides]
    data = apply_overrides(data, parsed)
    if "dtype" not in data.get("model", {}):
        device = str(data.get("train", {}).get("device", "auto"))
        gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        data["model"]["dtype"] = "bf16" if gpu else "fp32"
    explicit = {k.split(".", 1)[1] for k, _ in parsed if k.startswith("method.") and k.count(".") == 1}
    if args.config:
        method_section = load_yaml(args.config).get("method") or {}
        # a null option means "the method's default" (a resolved config.yaml lists every option, set or not). The
        # file's options win over SUPERGLUE_DEFAULTS' method subsections; its common lr / weight decay do not win over
        # its own subsections (`lora: {lr: 1e-4}`), as in every harness config (experiments/config.py)
        explicit |= {k for k, v in method_section.items()
                     if not isinstance(v, dict) and v is not None and k not in COMMON_METHOD_KEYS}
    return data, explicit - {"name"}


def _flatten(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict) and key != "method":
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, dict):  # method subsections (per-method options) stay whole
            for sub, sub_value in value.items():
                yield f"{prefix}{key}.{sub}", sub_value
        else:
            yield f"{prefix}{key}", value


def task_config(base: dict, task: str, explicit: set[str]) -> RunConfig:
    """The RunConfig of one task: the shared settings plus this task's head (classification or multiple choice)."""
    spec = get_task(task)
    per_task = [("data.subset", spec.name), ("run_name", f"superglue-{spec.name}"),
                ("model.task", "multiple_choice" if spec.kind == "multiple_choice" else "sequence_classification"),
                ("model.num_labels", spec.num_labels if spec.kind == "classification" else None)]
    return config_from_dict(apply_overrides(copy.deepcopy(base), per_task), forced_method_keys=explicit,
                            stem="superglue")


def settings_of(cfg: RunConfig, max_eval: int | None) -> dict:
    """What must match for an earlier task result to be reused."""
    data = config_to_dict(cfg)
    for path in PER_TASK_KEYS:
        node = data
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    data["max_eval"] = max_eval
    return data


def overall(tasks: dict) -> dict:
    done = {name: entry for name, entry in tasks.items() if entry.get("status") == "ok"}
    scores = {name: entry["metrics"]["score"] for name, entry in sorted(done.items())}
    result = {"score": round(sum(scores.values()) / len(scores), 4) if scores else None, "scores": scores,
              "tasks_ok": sorted(done), "tasks_failed": sorted(set(tasks) - set(done)),
              "paper_tasks_missing": [t for t in PAPER_TASKS if t not in done]}
    if not result["paper_tasks_missing"]:
        result["paper_average"] = round(sum(scores[t] for t in PAPER_TASKS) / len(PAPER_TASKS), 4)
    return result


def _describe(entry: dict) -> str:
    if entry["status"] != "ok":
        return f"{entry['task']}: {entry['status']}: {entry['error']}"
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in entry["metrics"].items() if k not in ("n", "score"))
    chosen = entry["selected"]
    return (f"{entry['task']}: test {metrics} (n={entry['metrics']['n']}; validation score "
            f"{entry['validation']['score']:.2f} at step {chosen['step']}) [{entry['wall_seconds']:.0f} s]")


def default_out(base: dict, cfg: RunConfig) -> Path:
    """<output.dir of --config>/superglue-<model>-<method>, else runs/superglue/<model>-<method>."""
    name = f"{source_slug(cfg.model.source)}-{cfg.method.name}"
    config_dir = (base.get("output") or {}).get("dir")
    return Path(config_dir) / f"superglue-{name}" if config_dir else REPO_ROOT / "runs" / "superglue" / name


def run(args: argparse.Namespace) -> int:
    base, explicit = base_config_dict(args)
    tasks = parse_tasks(args.tasks or (base.get("data", {}).get("subset") or "all"))
    configs = {task: task_config(base, task, explicit) for task in tasks}  # validates everything before any work
    first = configs[tasks[0]]
    for task in tasks:  # missing data is reported before any model is loaded
        paper_splits(task, max_train=1, max_eval=1)
    out = Path(args.out) if args.out else default_out(base, first)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; it must be a directory (created if missing)")
    results_path = out / RESULTS_FILE
    settings = settings_of(first, args.max_eval)
    results = _load_results(results_path, force=args.force)
    if results is not None and results.get("settings") != settings:
        if not args.force:
            raise ConfigError(f"{results_path} holds results made with other settings; pass --force to replace them "
                              "or choose another --out")
        results = None
    if results is None:
        results = {"evaluator": "superglue", "units": "percent", "model": first.model.source,
                   "method": first.method.name, "settings": settings, "tasks": {}}
    failed = False
    for task in tasks:
        previous = results["tasks"].get(task)
        if previous and previous.get("status") == "ok" and not args.force:
            print(f"{task}: already done in {results_path}, skipped")
            continue
        entry = run_task(task, configs[task], out / "tasks", max_eval=args.max_eval, explicit_options=explicit,
                         progress=not args.no_progress)
        results["tasks"][task] = entry
        results["overall"] = overall(results["tasks"])
        write_json_atomic(results_path, results)
        failed |= entry["status"] != "ok"
        print(_describe(entry))
    results["overall"] = overall(results["tasks"])
    write_json_atomic(results_path, results)
    score = results["overall"]["score"]
    print(f"overall score {'n/a' if score is None else f'{score:.2f}'} over {results['overall']['tasks_ok']}: "
          f"{results_path}")
    return 1 if failed else 0


def _load_results(path: Path, *, force: bool = False) -> dict | None:
    """The results of earlier tasks; an unreadable file is refused (its tasks would be lost), unless --force."""
    import json

    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
            raise ValueError("expected an object with a 'tasks' mapping")
    except (OSError, ValueError) as exc:
        if force:
            return None
        raise ConfigError(f"{path} cannot be read ({exc}); move it away, or pass --force to start the results "
                          "over") from None
    return results


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 every task ok; 1 a task failed (oom, error) or the work could not be written; 2 usage or input
    errors (bad flags, config, task names, missing data or model). Failures are one line on stderr."""
    args = build_parser().parse_intermixed_args(argv)  # flags may follow the overrides
    try:
        return run(args)
    except (ConfigError, ValueError, SuperGlueDataError, ModelUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the output cannot be written (read-only, disk full)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
