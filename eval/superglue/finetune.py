"""Fine-tune an encoder on one SuperGLUE task through the harness and report the test score of the checkpoint that
scored best on validation (the paper's protocol, see splits.py).

Training is experiments.loop.train with any registered method; this module only supplies the batches and watches the
steps. Validation is scored at the end of every epoch (or every `train.eval_every` steps) while training runs, and
once more after the last step, and test wherever validation improved on every earlier score; the reported test
metrics are those of the evaluation with the highest validation score (the earliest on ties). This equals restoring
the best checkpoint and testing it, without holding a copy of the weights. Evaluation runs in eval mode under no_grad, so it draws no random numbers and leaves the training
trajectory unchanged.

The task head stays trainable throughout for every method, as in the paper: the classifier and, where the model feeds
it through one (BERT), the pooler. BAdam/BSGD keep them in `active_modules`, LoRA in `modules_to_save`; full-parameter
methods train them anyway.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import time
from pathlib import Path

import torch
from torch import nn

from baselines.model_parts import task_head_names
from eval.superglue.features import encode_examples, predict, train_batches
from eval.superglue.metrics import task_metrics
from eval.superglue.splits import TaskSplits, paper_splits
from eval.superglue.tasks import get_task
from experiments.config import RunConfig, build_method_options, config_to_dict
from experiments.loop import train
from experiments.measure import is_oom
from experiments.results import prepare_run_dir
from experiments.run import autocast_dtype, build_run_method, load_run_model, resolve_device, write_run_config

class ModelUnavailableError(RuntimeError):
    """The model source cannot be loaded (package not installed, folder missing, unknown alias)."""


# Option fields through which methods that train a subset of the model are told what must stay trainable.
HEAD_OPTION_FIELDS = ("active_modules", "modules_to_save")


def head_module_names(model: nn.Module) -> list[str]:
    """The freshly initialised task head plus the pooler feeding it, if the model has one."""
    names = list(task_head_names(model))
    names += [name for name, module in model.named_modules()
              if name.split(".")[-1] == "pooler" and module is not None and any(True for _ in module.parameters())]
    return names


def build_method(cfg: RunConfig, model: nn.Module, explicit_options: set[str] = frozenset()):
    """The method of `cfg` (the harness's build_run_method), with the task head kept trainable unless the user set
    the head option explicitly."""
    options = build_method_options(cfg.method)
    if dataclasses.is_dataclass(options):
        heads = head_module_names(model)
        for name in HEAD_OPTION_FIELDS:
            if hasattr(options, name) and name not in explicit_options and heads:
                setattr(options, name, heads)
    return build_run_method(cfg, options)


class CheckpointSelector:
    """Scores validation and test at chosen training steps and picks the step with the best validation score."""

    def __init__(self, task: str, model: nn.Module, tokenizer, splits: TaskSplits, *, max_length: int,
                 batch_size: int, device, autocast: torch.dtype | None, progress: bool = True):
        spec = get_task(task)
        self.task, self.model, self.tokenizer = task, model, tokenizer
        self.batch_size, self.device, self.autocast, self.progress = batch_size, device, autocast, progress
        self.parts = {name: (examples, encode_examples(examples, tokenizer, max_length=max_length, kind=spec.kind))
                      for name, examples in (("validation", splits.validation), ("test", splits.test))}
        self.history: list[dict] = []
        self.eval_seconds = 0.0

    def _score(self, part: str) -> tuple[dict, float]:
        examples, features = self.parts[part]
        predictions, loss = predict(self.model, features, self.tokenizer, batch_size=self.batch_size,
                                    device=self.device, autocast_dtype=self.autocast, desc=f"{self.task} {part}",
                                    progress=self.progress)
        metrics = task_metrics(self.task, predictions, [e.label for e in examples], [e.group for e in examples])
        return metrics, loss

    def evaluate(self, step: int, epoch: int) -> None:
        """Score validation; score test only when validation improves on every earlier checkpoint: the reported test
        is the best-validation checkpoint's (earliest on ties), so a test pass elsewhere would be thrown away (and
        test sets such as MultiRC's, ten times its validation part, dominate the evaluation time)."""
        if self.history and self.history[-1]["step"] == step:
            return
        start = time.perf_counter()
        validation, validation_loss = self._score("validation")
        leader = self.best()
        test, test_loss = (None, None)
        if leader is None or validation["score"] > leader["validation"]["score"]:
            test, test_loss = self._score("test")
        self.eval_seconds += time.perf_counter() - start
        self.history.append({"step": step, "epoch": epoch, "validation": validation, "test": test,
                             "validation_loss": round(validation_loss, 6),
                             "test_loss": None if test_loss is None else round(test_loss, 6)})

    def best(self) -> dict | None:
        if not self.history:
            return None
        return max(self.history, key=lambda h: (h["validation"]["score"], -h["step"]))


class ObservedEpoch:
    """One epoch of training batches that calls `on_step(epoch, step_in_epoch, end_of_epoch)` after each optimizer
    step. The loop asks for the next micro-batch only once the step holding the previous one is done, so resuming
    after every grad_accum-th batch is exactly "after a step". `len()` lets the loop plan steps without iterating."""

    def __init__(self, features, tokenizer, *, batch_size: int, seed: int, epoch: int, grad_accum: int, on_step):
        self.features, self.tokenizer, self.batch_size, self.seed = features, tokenizer, batch_size, seed
        self.epoch, self.grad_accum, self.on_step = epoch, grad_accum, on_step

    def __len__(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    def __iter__(self):
        steps_in_epoch = len(self) // self.grad_accum
        batches = train_batches(self.features, self.tokenizer, batch_size=self.batch_size, seed=self.seed,
                                epoch=self.epoch)
        for index, batch in enumerate(batches, start=1):
            yield batch
            if index % self.grad_accum == 0:
                step = index // self.grad_accum
                self.on_step(self.epoch, step, step == steps_in_epoch)


def _head_note(method, model) -> dict:
    options = method.options
    return {name: getattr(options, name) for name in HEAD_OPTION_FIELDS if hasattr(options, name)} or \
        {"all_parameters_trainable": True, "head": head_module_names(model)}


def run_task(task: str, cfg: RunConfig, tasks_dir: Path, *, max_eval: int | None = None,
             explicit_options: set[str] = frozenset(), progress: bool = True) -> dict:
    """Fine-tune `cfg.model.source` on `task` with `cfg.method` and return the task's result entry.

    `cfg` must already carry this task's model.task / model.num_labels (see cli.task_config). The harness run
    directory of the training is `tasks_dir/<task>` (config.yaml, metrics.jsonl, summary.json).
    """
    spec = get_task(task)
    started = time.perf_counter()
    splits = paper_splits(task, max_train=cfg.data.max_samples, max_eval=max_eval, seed=cfg.seed)
    device = resolve_device(cfg.train.device)
    run_dir = prepare_run_dir(tasks_dir, spec.name, overwrite=True)
    config_dict = config_to_dict(cfg)
    write_run_config(run_dir, config_dict)
    try:
        model, tokenizer = load_run_model(cfg, device)  # the harness's loading, seeded as every run is
    except (ImportError, OSError) as exc:  # OSError covers FileNotFoundError: package, folder or file missing
        raise ModelUnavailableError(f"model {cfg.model.source!r} cannot be loaded: {exc}") from exc
    except Exception as exc:
        if not is_oom(exc):
            raise
        # a model too large for the device is a result (as in the harness), not a crash: the next task may fit
        return {"task": spec.name, "status": "oom", "error": f"out of memory while loading the model: {exc}",
                "metrics": None, "validation": None, "selected": None, "history": [], "sizes": splits.sizes(),
                "split_protocol": splits.protocol, "wall_seconds": round(time.perf_counter() - started, 2)}
    if tokenizer is None:
        raise ValueError(f"model source {cfg.model.source!r} came without a tokenizer; SuperGLUE needs one")
    method = build_method(cfg, model, explicit_options)
    compute_dtype = autocast_dtype(cfg)
    features = encode_examples(splits.train, tokenizer, max_length=cfg.data.max_length, kind=spec.kind)
    selector = CheckpointSelector(task, model, tokenizer, splits, max_length=cfg.data.max_length,
                                  batch_size=cfg.train.eval_batch_size or cfg.train.batch_size, device=device,
                                  autocast=compute_dtype, progress=progress)
    grad_accum = cfg.train.grad_accum
    steps_per_epoch = math.ceil(len(features) / cfg.train.batch_size) // grad_accum

    def on_step(epoch: int, step_in_epoch: int, end_of_epoch: bool) -> None:
        step = epoch * steps_per_epoch + step_in_epoch
        every = cfg.train.eval_every
        if (every and step % every == 0) or (not every and end_of_epoch):
            selector.evaluate(step, epoch)

    def batches_fn(epoch: int) -> ObservedEpoch:
        return ObservedEpoch(features, tokenizer, batch_size=cfg.train.batch_size, seed=cfg.seed, epoch=epoch,
                             grad_accum=grad_accum, on_step=on_step)

    # The loop's own eval_loss hook stays off: selection uses the task metric, scored by the selector.
    train_cfg = dataclasses.replace(cfg.train, eval_every=0)
    meta = {"run_name": f"{cfg.run_name}", "model": cfg.model.source, "config": config_dict}
    summary = train(model, method, batches_fn, train_cfg, run_dir, autocast_dtype=compute_dtype, device=device,
                    seed=cfg.seed, meta=meta, progress=progress)
    if summary["status"] == "ok" and summary["steps"]:
        last_epoch = (summary["steps"] - 1) // max(steps_per_epoch, 1)
        selector.evaluate(summary["steps"], last_epoch)
    best = selector.best()
    entry = {
        "task": spec.name,
        "status": summary["status"] if best is not None or summary["status"] != "ok" else "error",
        "error": summary.get("error"),
        "metrics": best["test"] if best else None,
        "validation": best["validation"] if best else None,
        "selected": {"step": best["step"], "epoch": best["epoch"], "by": "best validation score, earliest on ties"}
        if best else None,
        "history": selector.history,
        "sizes": splits.sizes(),
        "majority_class_test": majority_class_metrics(spec.name, splits),
        "split_protocol": splits.protocol,
        "trainable_head": _head_note(method, model),
        "train": {"run_dir": str(run_dir), "steps": summary["steps"], "planned_steps": summary.get("planned_steps"),
                  "final_loss": summary["final_loss"], "timing_ms": summary["timing_ms"],
                  "peak_allocated_bytes": summary["memory"].get("peak_allocated_bytes"),
                  "device": str(device)},
        "eval_seconds": round(selector.eval_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if entry["status"] == "error" and entry["error"] is None:
        entry["error"] = "training ran no step, so nothing was evaluated"
    del model, method, selector, features
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return entry


def majority_class_metrics(task: str, splits: TaskSplits) -> dict:
    """Test metrics of always predicting the most frequent training label: the floor a fine-tuned model must beat
    (for COPA, whose label is a choice position, it is a position-bias floor)."""
    labels = [e.label for e in splits.train]
    majority = max(sorted(set(labels)), key=labels.count)
    test = splits.test
    return task_metrics(task, [majority] * len(test), [e.label for e in test], [e.group for e in test])
