"""The one training loop every method runs through (contract in docs/DESIGN.md and baselines/base.py).

Per optimizer step: set the schedule's LR multiplier; for each of grad_accum micro-batches a timed forward (under
autocast when asked) and a timed `method.backward(loss / grad_accum)`; then a timed update = `clip_and_norm` +
`step`; then `zero_grad`. Methods whose update is fused into backward (LOMO) report an update time of 0. A method that
cannot accumulate gradients is refused when grad_accum > 1: the run ends with status "error" and says so, rather than
silently training with another effective batch size.

Checkpoints (train.save_every, experiments/checkpoint.py) hold the model weights, the method's state, the step, the
data position and every RNG state, so a resumed run continues exactly as an uninterrupted one would.
Out of memory (any allocation failure) ends the run with status "oom" and the bytes held; a non-finite loss or gradient
norm with status "diverged" at that step (its record is kept, no checkpoint or model of that state is saved); any other
exception with status "error". Ctrl-C (KeyboardInterrupt) once the run has started ends it with status "interrupted"
(its metrics.jsonl and checkpoint stay as they were) and is raised again as StoppedByCtrlC, so the caller stops too.

With a DistContext (train.distributed=fsdp2, experiments/distributed.py) the prepared model is sharded with FSDP2,
each rank trains on its round-robin share of the micro-batches, every step's record is merged over the ranks and only
rank 0 writes files; checkpoints are sharded (experiments/distributed_checkpoint.py). With train.distributed=ddp
(experiments/ddp.py) every rank holds the whole model, the method's gradients are averaged at the last micro-batch of
each step, and rank 0 writes an ordinary checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import random
import traceback
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from baselines.errors import MethodUnsupportedError, UnsupportedSetupError
from experiments import ddp as ddp_mod
from experiments.batch_stream import BatchesFn, BatchStream, plan_steps
from experiments import distributed as dist_mod
from experiments.checkpoint import (Position, carry_metrics, load_checkpoint, load_sharded_checkpoint, locate,
                                    save_checkpoint, save_sharded_checkpoint)
from experiments.config import TrainConfig
from experiments.flops import FlopCounter, backward_passes, utilization_summary
from experiments.layer_compile_run import LayerCompilation, compile_for_training
from experiments.lm_loss import model_loss
from experiments.measure import MemoryProbe, StepTimer, is_oom
from experiments.results import (MetricsWriter, atomic_write_text, environment_info, json_safe, read_metrics,
                                 summarize_metrics, write_summary)
from experiments.rundir import RunDir, RunSummary
from experiments.schedule import lr_multiplier, warmup_steps_for

class DivergedError(RuntimeError):
    """A step's loss or gradient norm is not finite: the run ends there with status "diverged"."""

    def __init__(self, step: int, values: dict[str, str]):
        self.step, self.values = step, values
        what = ", ".join(f"{key} {value}" for key, value in values.items())
        super().__init__(f"diverged at step {step}: non-finite {what}; the run was stopped there (no checkpoint or "
                         "model of the diverged state is saved)")


class RunNotStartedError(RuntimeError):
    """A run given an on_start hook failed before it started: nothing was written. `cause` is the original exception
    (None when the run was refused, e.g. a resume with nothing left to train)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


class StoppedByCtrlC(KeyboardInterrupt):
    """Ctrl-C stopped train() after the run had started: summary.json (status "interrupted", `summary`) is written,
    and this is raised so that the caller stops too (experiments.run says where the run is and how to go on)."""

    def __init__(self, summary: dict):
        super().__init__("stopped by Ctrl-C")
        self.summary = summary


# --- seeding and RNG state ----------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


# --- helpers ----------------------------------------------------------------------------------------------------
def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def count_tokens(batch: dict) -> int:
    """Non-padding input tokens (attention_mask when present, else every input id)."""
    if isinstance(batch.get("attention_mask"), torch.Tensor):
        return int(batch["attention_mask"].sum())
    if isinstance(batch.get("input_ids"), torch.Tensor):
        return int(batch["input_ids"].numel())
    return 0


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[dict], device: torch.device,
                  autocast_dtype: torch.dtype | None = None, progress: bool = True,
                  loss_chunk_tokens: int = 0) -> float | None:
    """Mean loss over the evaluation batches (model put back in train mode afterwards)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in tqdm(list(batches), desc="eval", unit="batch", leave=False, disable=not progress):
            with _autocast(device, autocast_dtype):
                loss = model_loss(model, _to_device(batch, device), loss_chunk_tokens)
            total += float(loss)
            count += 1
    finally:
        model.train(was_training)
    return total / count if count else None


def save_final_model(model: nn.Module, path: Path, state_dict: dict | None = None) -> None:
    """Write the trained model as a transformers folder. LoRA adapters are merged first so evaluators load one model;
    the merge is done (and saved) in fp32, because rounding W + BA to bf16 would add full-rank noise to the update.
    state_dict: the weights when the model does not hold them whole (frozen blocks sharded)."""
    if hasattr(model, "merge_and_unload"):
        model = model.float().merge_and_unload()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=state_dict)


def check_supported(method, cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, before anything is built, what the method's class declares it cannot do (baselines/base.py):
    MethodUnsupportedError when it cannot run here at all (missing package, CUDA only), UnsupportedSetupError when the
    requested setup does not fit it (accumulation or clipping with a fused update). run_all adapts its profiles'
    settings from the same declarations, so these refusals meet only hand-written configs."""
    missing = method.missing_requirements()
    if missing:
        default = "" if method.install_by_default else " (not installed by default)"
        raise MethodUnsupportedError(f"{method.name} needs {', '.join(missing)}, which is not installed here{default}; "
                                     f"install it with: {method.install_hint()}")
    if method.cuda_only and device.type != "cuda":
        raise MethodUnsupportedError(f"{method.name} needs CUDA ({method.cuda_only}); the device is {device}. Run it "
                                     "on a GPU machine, or pick a method that runs on CPU.")
    if cfg.grad_accum > 1 and not method.supports_grad_accumulation:
        raise UnsupportedSetupError(
            f"method {method.name!r} cannot accumulate gradients over micro-batches (its update is fused into "
            f"backward), but train.grad_accum={cfg.grad_accum}; set train.grad_accum=1 and multiply "
            f"train.batch_size by {cfg.grad_accum} to keep the same effective batch")
    if cfg.max_grad_norm is not None and cfg.max_grad_norm > 0 and not method.supports_clipping:
        raise UnsupportedSetupError(
            f"method {method.name!r} updates each parameter inside backward, before the global gradient norm exists, "
            f"so it cannot clip to train.max_grad_norm={cfg.max_grad_norm}; set train.max_grad_norm to null for it")


def error_kind_of(exc: BaseException) -> str:
    """unsupported: the method cannot run here (e.g. needs CUDA); setup: the requested setup does not fit the method
    (e.g. grad_accum with a fused update); exception: anything else."""
    if isinstance(exc, MethodUnsupportedError):
        return "unsupported"
    if isinstance(exc, UnsupportedSetupError):
        return "setup"
    return "exception"


def _method_info(method) -> dict:
    options = method.options
    return {"name": method.name, "lr": method.lr, "weight_decay": method.weight_decay,
            "options": dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {},
            "fused_backward": bool(method.fused_backward),
            "supports_grad_accumulation": bool(method.supports_grad_accumulation),
            "supports_clipping": bool(method.supports_clipping), "description": method.description,
            "grad_norm_over": getattr(method, "grad_norm_over", "trainable")}


# --- stopping on request (SIGTERM) ------------------------------------------------------------------------------------
_stop_requested = False


def _flop_counter(model: nn.Module, dist_ctx) -> FlopCounter | None:
    """The model's FLOP model for summary.json's compute block; None where it does not apply: distributed training
    (ddp or fsdp2: each rank sees only its own batches, and the per-step record is merged across ranks) or a model
    without a repeated layer stack."""
    if dist_ctx is not None:
        return None
    try:
        return FlopCounter(model)
    except (ValueError, KeyError, AttributeError, TypeError):  # not a stack of layers we can read: no count
        return None


def request_stop(*_args) -> None:
    """Ask the running train() to stop after the current step: it writes a checkpoint (also without save_every),
    ends with status "interrupted", and a later run with train.resume_from continues from there. Usable as a signal
    handler (experiments.run installs it for SIGTERM, which run_all sends at its deadline)."""
    global _stop_requested
    _stop_requested = True


def _memory_from_records(memory: dict, records: list[dict]) -> dict:
    """The memory block of a run finished by a resume that trained no step: the peaks its metrics.jsonl recorded."""
    def peak(key):
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        return max(values) if values else None

    return {**memory, "peak_allocated_bytes": peak("mem_peak_allocated_bytes"),
            "peak_reserved_bytes": peak("mem_peak_reserved_bytes"), "split_bytes": None, "split_step": None,
            "split_point": None, "split_note": "finished by a resume that trained no further step: peaks are the "
                                               "largest per-step peaks in metrics.jsonl; the split was not kept"}


# --- the loop ----------------------------------------------------------------------------------------------------
def _train_step(model, method, micro_batches, cfg, position, total_steps, warmup, device, autocast_dtype,
                timer: StepTimer, probe: MemoryProbe, data_parallel=None) -> dict:
    probe.begin_step()
    timer.start_step()
    scale = lr_multiplier(position.step, total_steps, cfg.lr_schedule, warmup)
    method.set_lr_scale(scale)
    grad_accum = len(micro_batches)
    losses, tokens = [], 0
    for index, batch in enumerate(micro_batches):
        tokens += count_tokens(batch)
        batch = _to_device(batch, device)
        last = index == grad_accum - 1
        with timer.phase("forward"), probe.forward_context(), _autocast(device, autocast_dtype):
            loss = model_loss(model, batch, cfg.loss_chunk_tokens)
        probe.sample("after_forward", model, method, batch)
        losses.append(loss.detach().float())
        # ddp: the last micro-batch's backward averages the gradients over the ranks, the others accumulate
        sync = data_parallel.micro_batch(last) if data_parallel is not None else contextlib.nullcontext()
        with sync, timer.phase("backward"):
            method.backward(loss / grad_accum, last_micro_batch=last)
        del loss
        probe.sample("after_backward", model, method, batch)
    update_phase = contextlib.nullcontext() if method.fused_backward else timer.phase("update")
    with update_phase:
        norm = method.clip_and_norm(cfg.max_grad_norm)
        method.step()
    probe.sample("after_update", model, method)
    method.zero_grad()
    times = timer.end_step()
    loss_value = float(torch.stack(losses).mean())
    record = {
        "step": position.step + 1, "epoch": position.epoch, "loss": loss_value, "lr": method.lr * scale,
        "grad_norm": None if norm is None else float(norm),
        "grad_norm_over": "none" if norm is None else getattr(method, "grad_norm_over", "trainable"),
        "tokens": tokens, "tokens_per_s": tokens / (times["step"] / 1000.0) if times["step"] > 0 else None,
        "t_forward_ms": times["forward"], "t_backward_ms": times["backward"],
        "t_update_ms": 0.0 if method.fused_backward else times["update"], "t_step_ms": times["step"],
    }
    if method.fused_backward:
        record["update_fused"] = True
    record.update(probe.end_step(position.step + 1))
    return record


def nonfinite_in(record: dict) -> dict[str, str]:
    """{"loss": "nan", "grad_norm": "inf", ...} for the step's loss or gradient norm when not finite (empty if fine)."""
    out = {}
    for key in ("loss", "grad_norm"):
        value = record.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return out


def train(model: nn.Module, method, batches_fn: BatchesFn, cfg: TrainConfig, run_dir, *,
          eval_batches_fn: Callable[[], Iterable[dict]] | None = None, autocast_dtype: torch.dtype | None = None,
          device: str | torch.device = "cpu", seed: int | None = None, meta: dict | None = None,
          save_model_dir: str | os.PathLike | None = None, progress: bool = True, dist_ctx=None,
          on_start: Callable[[], None] | None = None, resume_may_finish: bool = False) -> dict:
    """Train `model` with `method` (prepare_model and build_optimizer are called here) and return the summary that
    is also written to <run_dir>/summary.json. batches_fn(epoch) gives that epoch's micro-batches, identical for
    every method; eval_batches_fn() the held-out batches. `meta` carries run_name, model and config for the summary.
    dist_ctx: an experiments.distributed.DistContext to train sharded with FSDP2 (the model may then be on the meta
    device: it is materialised after sharding), None for one device.

    on_start: called once everything is set up (method prepared, optimizer built, checkpoint restored), right before
    the first file is written and the first step runs. With it, run_dir is not touched before that moment, and a
    failure before it raises RunNotStartedError instead of writing a summary: experiments.run replaces an old run
    (--overwrite) or updates a resumed run's config.yaml there, so a run that cannot start changes nothing on disk.

    A resume whose checkpoint is already at the last step is refused (RunNotStartedError) unless resume_may_finish:
    then (a run killed after its last checkpoint, before its summary) no step is trained, the model is saved if asked
    and the summary is written from metrics.jsonl, with the memory peaks of its records (no split)."""
    run_dir = Path(run_dir)
    device = torch.device(device)
    meta = dict(meta or {})
    probe = MemoryProbe(device, enabled=cfg.track_memory)
    timer = StepTimer(device)
    status, error, error_kind, writer, total_steps, stopped_early = "ok", None, None, None, None, False
    resumed_at = last_step = None
    stopped_by_ctrl_c = False
    held_at_oom, diverged = None, None
    main = dist_ctx is None or dist_ctx.is_main  # only rank 0 writes files
    ddp, data_parallel, compiling = dist_ctx is not None and dist_ctx.mode == "ddp", None, LayerCompilation()
    started = on_start is None
    if started:
        run_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_supported(method, cfg, device)
        if dist_ctx is not None:
            (ddp_mod if ddp else dist_mod).check_method_supported(method.name)
        if seed is not None:
            seed_everything(seed)
        if hasattr(method, "set_max_grad_norm"):
            # methods that clip inside a fused backward (LOMO) need the threshold before the first backward
            method.set_max_grad_norm(cfg.max_grad_norm)
        model = method.prepare_model(model)
        if ddp:
            model = ddp_mod.replicate(model, dist_ctx)
        elif dist_ctx is not None:
            model = dist_mod.shard_for_training(model, dist_ctx, seed or 0, cfg.fsdp_forward_prefetch,
                                                cfg.fsdp_keep_gathered_layers)
        if dist_ctx is not None:
            batches_fn = dist_mod.shard_batches_fn(batches_fn, dist_ctx)
        compiling = compile_for_training(model, method, cfg.compile_layers)  # sharded, before masters and ddp's sync
        method.build_optimizer(model)
        timer.stream_only = method.update_overlapped  # the update may overlap the next forward
        data_parallel = ddp_mod.data_parallel_for(model, method, dist_ctx, cfg, seed or 0)
        model.train()
        if getattr(getattr(model, "config", None), "use_cache", False):
            model.config.use_cache = False  # a KV cache is useless in training and costs memory
        position = Position()
        if cfg.resume_from and ddp:
            position = ddp_mod.load_checkpoint(cfg.resume_from, model, method, dist_ctx)
        elif cfg.resume_from and dist_ctx is not None:
            position = load_sharded_checkpoint(cfg.resume_from, model, method, dist_ctx)
        elif cfg.resume_from:
            position = load_checkpoint(cfg.resume_from, model, method, device)
        total_steps = plan_steps(cfg, batches_fn)
        warmup = warmup_steps_for(total_steps, cfg.warmup_steps, cfg.warmup_ratio)
        last_step = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps
        resumed_at = position.step if cfg.resume_from else None
        if resumed_at is not None and resumed_at >= last_step and not resume_may_finish:
            # training zero steps would only rewrite the finished run's summary with an empty measurement
            raise RunNotStartedError(f"the checkpoint is at step {position.step} and this run ends at step "
                                     f"{last_step}: nothing to train; raise train.max_steps (or "
                                     "train.stop_after_steps) to go on")
        if on_start is not None:
            on_start()
            run_dir.mkdir(parents=True, exist_ok=True)
            started = True
        if cfg.resume_from and main:
            carry_metrics(locate(cfg.resume_from)[0], run_dir, position.step)
        writer = MetricsWriter(run_dir) if main else None
        # Everything built so far (model, tokenized data, library modules) lives for the whole run: move it out of
        # the cyclic garbage collector's view, so that an automatic collection during a timed forward or backward
        # does not traverse it (same treatment for every method; undone in the finally clause below).
        gc.collect()
        gc.freeze()
        stream = BatchStream(batches_fn, cfg.grad_accum, position)
        flop_counter = _flop_counter(model, dist_ctx)
        bar = tqdm(total=last_step, initial=position.step, desc=f"train {method.name}", unit="step",
                   disable=not progress, dynamic_ncols=True)
        with bar:
            while position.step < last_step:
                micro_batches = stream.next_step()
                position.epoch = stream.epoch
                trainable = flop_counter.snapshot() if flop_counter is not None else None  # before a block switch
                graphs = compiling.graphs()
                record = _train_step(model, method, micro_batches, cfg, position, total_steps, warmup, device,
                                     autocast_dtype, timer, probe, data_parallel)
                record.update(compiling.step_record(graphs))  # a compiling step: out of the medians
                position.step, position.micro = record["step"], stream.micro
                is_last = position.step == last_step
                # one device: no evaluation of a diverged model; sharded, every rank must take part in the same
                # collectives, so the decision waits for the merged record
                diverged = nonfinite_in(record) if dist_ctx is None else {}
                if eval_batches_fn is not None and not diverged and (
                        (cfg.eval_every and position.step % cfg.eval_every == 0) or is_last):
                    record["eval_loss"] = evaluate_loss(model, eval_batches_fn(), device, autocast_dtype, progress,
                                                        cfg.loss_chunk_tokens)
                extras = method.describe()
                record.update({k: v for k, v in extras.items() if k not in record})
                if flop_counter is not None:
                    counted = flop_counter.count(trainable, micro_batches, backward_passes=backward_passes(extras),
                                                 labelled_head=bool(cfg.loss_chunk_tokens))
                    record["model_flops"], record["hardware_flops"] = counted.model, counted.hardware
                if dist_ctx is not None:
                    record = dist_mod.reduce_step_record(record, dist_ctx)
                    diverged = nonfinite_in(record)  # the merged record: every rank takes the same decision
                if writer is not None:
                    writer.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if diverged:  # no checkpoint of a diverged state (it would replace the last good one), no model
                    raise DivergedError(position.step, diverged)
                stop_now = _stop_requested and not is_last
                if stop_now or (cfg.save_every and (position.step % cfg.save_every == 0 or is_last)):
                    if ddp:
                        ddp_mod.save_checkpoint(run_dir, model, method, position, total_steps, dist_ctx)
                    elif dist_ctx is not None:
                        save_sharded_checkpoint(run_dir, model, method, position, total_steps, dist_ctx)
                    else:
                        save_checkpoint(RunDir(run_dir).checkpoint, model, method, position, total_steps)
                if stop_now:
                    status, error_kind = "interrupted", "interrupted"
                    error = f"stopped on request after step {position.step} of {last_step}; checkpoint written: " \
                            "resume with train.resume_from=<run dir>"
                    break
        stopped_early = last_step < total_steps
        if status == "interrupted":
            save_model_dir = None
        if save_model_dir is not None and ddp:
            ddp_mod.save_model(model, Path(save_model_dir), dist_ctx, method)
        elif save_model_dir is not None and dist_ctx is not None:
            dist_mod.save_full_model(model, Path(save_model_dir), dist_ctx)
        elif save_model_dir is not None:
            save_final_model(model, Path(save_model_dir))
    except KeyboardInterrupt:
        # Ctrl-C: nothing written is touched (metrics.jsonl holds whole lines, checkpoints are replaced atomically),
        # and the summary says how far the run got instead of leaving none (or, in a resumed run, the old one).
        # Not before the run started (the old run directory stays as it was) nor across ranks (no collective).
        if not started or dist_ctx is not None:
            raise
        stopped_by_ctrl_c = True
        status, error_kind = "interrupted", "interrupted"  # the error names the last step metrics.jsonl holds
    except Exception as exc:  # the suite goes on with the next method
        if isinstance(exc, RunNotStartedError):
            raise
        if not started:
            raise RunNotStartedError(f"{type(exc).__name__}: {exc}", cause=exc) from exc
        if isinstance(exc, DivergedError):
            status, error_kind, error = "diverged", "diverged", str(exc)
        elif is_oom(exc):
            status, error_kind = "oom", "oom"
            held_at_oom = probe.held_now()
            error = f"out of memory ({held_at_oom} bytes held when it happened): {exc}"
        else:
            status, error_kind = "error", error_kind_of(exc)
            error = f"{type(exc).__name__}: {exc}"
        if status != "diverged":
            error_file = RunDir(run_dir).error(None if main else dist_ctx.rank)
            atomic_write_text(error_file, "".join(traceback.format_exception(exc)))
    finally:
        gc.unfreeze()  # the next run in this process (run_all) may free this run's model
        if writer is not None:
            writer.close()
    memory = probe.summary(method.name)
    if dist_ctx is not None and status in ("ok", "diverged", "interrupted"):  # a failed rank must not wait
        # collective: also guarantees that rank 0 has written and closed metrics.jsonl before any rank reads it
        memory = dist_mod.reduce_memory_summary(memory, dist_ctx)
    records = read_metrics(run_dir)
    if stopped_by_ctrl_c:
        of = f" of {last_step}" if last_step else ""
        error = f"stopped by Ctrl-C after step {records[-1]['step'] if records else 0}{of}; " + (
            "resume from its checkpoint with train.resume_from=<run dir>" if RunDir(run_dir).has_checkpoint()
            else "no checkpoint (train.save_every): start it again")
    if resumed_at is not None and total_steps is not None and resumed_at >= last_step:
        memory = _memory_from_records(memory, records)
    info = _method_info(method)
    if method.fused_backward:
        info["update_note"] = "fused into backward: t_update_ms is reported as 0, the update time is in backward"
    try:
        info["last_describe"] = method.describe() if status == "ok" else {}
    except Exception:  # describe() of a method that failed half-way may itself fail; the summary must still be written
        info["last_describe"] = {}
    extras: dict = {}
    figures = summarize_metrics(records, cfg.timing_warmup_steps)
    if status == "diverged":
        # the diverged step's loss is null in metrics.jsonl (strict JSON); the summary must not fall back on the
        # last finite loss, so both figures stay non-finite (written as null + the "nonfinite" flag)
        extras.update({"diverged_at_step": position.step, "diverged_values": diverged})
        if "loss" in diverged:
            figures["final_loss"] = figures["mean_loss_last_10"] = float(diverged["loss"])
    if held_at_oom is not None:
        memory["held_at_oom_bytes"] = held_at_oom
        memory["held_at_oom_note"] = ("cuda: torch.cuda.memory_allocated when the allocation failed; cpu: the "
                                      "process's resident memory then")
    if meta.get("data_stats"):
        extras["data_stats"] = meta["data_stats"]
    environment = environment_info(str(device))
    extras["compute"] = utilization_summary(records, cfg.timing_warmup_steps, environment.get("device_name"))
    extras.update(method.summarize_records(records))
    extras.update(compiling.summary())
    if dist_ctx is not None:
        extras["distributed"] = {**dist_ctx.describe(), "note": dist_mod.method_note(method.name)}
        if data_parallel is not None:
            extras["distributed"].update(data_parallel.describe(), note=None)
    summary = RunSummary(status=status, error=error, error_kind=error_kind, run_name=meta.get("run_name", run_dir.name),
                         method=method.name, model=meta.get("model"), planned_steps=total_steps,
                         stopped_early=stopped_early, memory=memory, method_info=info, config=meta.get("config"),
                         environment=environment, extras=extras).with_metrics(figures).to_dict()
    summary = json_safe(summary)  # what is returned is what the file holds: strict JSON, no NaN
    if main or status != "ok":  # a failing rank other than 0 reports too: rank 0 may be stuck waiting for it
        write_summary(run_dir, summary)
    if stopped_by_ctrl_c:
        raise StoppedByCtrlC(summary)
    return summary
