"""Checkpoints of the training loop and the checks that make resuming safe.

A checkpoint (train.save_every) holds the model weights, the method's state, the step, the data position (epoch and
micro-batches consumed in it) and every RNG state, so a resumed run continues exactly as an uninterrupted one would.
One device: <run_dir>/checkpoint.pt, written to a temporary file, fsynced, renamed into place and the directory
fsynced. FSDP2: <run_dir>/checkpoint.dcp (experiments/distributed_checkpoint.py), one shard per rank.

Resuming continues the run in the directory that holds the checkpoint. It is refused (one line naming the keys) when
the resolved config differs from that run's config.yaml in anything that changes what is trained; only
RESUMABLE_CHANGES may differ (a longer or shorter run, where the files go).
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from experiments import distributed_checkpoint as dist_ckpt
from experiments.config import dotted_keys
from experiments.distributed_modes import same_setting
from experiments.results import (CHECKPOINT_FILE, CONFIG_FILE, SHARDED_CHECKPOINT_DIR, RunDir, fsync_dir,
                                 read_metrics, replace_durably, truncate_metrics, write_metrics)

# Keys (dotted, as in config.yaml) a resume may change: how many steps, where the files go. train.resume_from is what
# starts a resume; run_name and output.* name the place, which a resume takes from the checkpoint.
# method.options.measure_rounding (BAdam/BSGD) only measures, it changes no number of the training.
RESUMABLE_CHANGES = ("train.max_steps", "train.stop_after_steps", "train.resume_from", "run_name",
                     "method.options.measure_rounding")
RESUMABLE_SECTIONS = ("output",)


class ResumeError(ValueError):
    """A resume that cannot or must not happen; the message names the problem (nothing on disk was changed)."""


@dataclasses.dataclass
class Position:
    step: int = 0          # optimizer steps completed
    epoch: int = 0
    micro: int = 0         # micro-batches of this epoch consumed by completed steps


# --- RNG state ------------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: store it as a tensor
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore every RNG. The tensors may arrive on the training device (the checkpoint is loaded with
    map_location=device); torch takes RNG states only as CPU byte tensors (on an H100 the resume failed with
    'RNG state must be a torch.ByteTensor' before this moved them back)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --- where a checkpoint is ------------------------------------------------------------------------------------------
def locate(resume_from: str) -> tuple[Path, str]:
    """(run directory holding the checkpoint, "single" | "sharded") for train.resume_from = a run directory, its
    checkpoint.pt or its checkpoint.dcp; ResumeError when there is none."""
    path = Path(resume_from)
    if path.is_file():
        return path.parent, "single"
    if dist_ckpt.is_checkpoint(path):
        return path.parent, "sharded"
    if (path / CHECKPOINT_FILE).is_file():
        return path, "single"
    if dist_ckpt.is_checkpoint(path / SHARDED_CHECKPOINT_DIR):
        return path, "sharded"
    what = "does not exist" if not path.exists() else f"holds no {CHECKPOINT_FILE} or {SHARDED_CHECKPOINT_DIR}"
    raise ResumeError(f"train.resume_from={resume_from!r} {what}; give a run directory that was saved with "
                      "train.save_every > 0, or its checkpoint file")


def checkpoint_file(resume_from: str) -> Path:
    path = Path(resume_from)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"train.resume_from={resume_from!r}: no checkpoint at {path}")
    return path


def sharded_directory(resume_from: str) -> Path:
    directory = Path(resume_from)
    if not dist_ckpt.is_checkpoint(directory) and dist_ckpt.is_checkpoint(directory / SHARDED_CHECKPOINT_DIR):
        directory = directory / SHARDED_CHECKPOINT_DIR
    return directory


def saved_step(resume_from: str) -> int:
    """The step a checkpoint was taken at, read without loading its tensors (memory-mapped / from the layout)."""
    run_dir, kind = locate(resume_from)
    if kind == "sharded":
        return int(dist_ckpt.read_layout(sharded_directory(resume_from))["position"]["step"])
    try:
        payload = torch.load(checkpoint_file(resume_from), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a torn or foreign file: say so in one line
        raise ResumeError(f"cannot read the checkpoint in {run_dir}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return int(payload["step"])


# --- comparing configs -----------------------------------------------------------------------------------------------
def config_differences(saved: dict, wanted: dict) -> list[str]:
    """'key: saved -> wanted' for every resolved-config key that differs, except RESUMABLE_CHANGES."""
    old, new = dotted_keys(saved), dotted_keys(wanted)
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_CHANGES or key.split(".", 1)[0] in RESUMABLE_SECTIONS:
            continue
        if not same_setting(key, old, new):  # auto stands for the mode (a config.yaml older than it reads as auto)
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def check_resume(run_dir: Path, wanted: dict, *, load_saved) -> dict:
    """The saved resolved config of the run in `run_dir` after checking that `wanted` (the new resolved config, as
    config_to_dict gives it) only changes RESUMABLE_CHANGES. load_saved(raw mapping) -> resolved dict (the current
    schema's defaults fill keys an older config.yaml lacks)."""
    import yaml

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ResumeError(f"cannot resume from {run_dir}: it has no {CONFIG_FILE}, so the settings the checkpoint was "
                          "trained with cannot be checked")
    try:
        saved = load_saved(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except Exception as exc:
        raise ResumeError(f"cannot resume from {run_dir}: its {CONFIG_FILE} does not load ({exc})") from None
    differences = config_differences(saved, wanted)
    if differences:
        raise ResumeError(f"resume refused: the config differs from the one {run_dir} was trained with in "
                          f"{'; '.join(differences)} (a resume may change only {', '.join(RESUMABLE_CHANGES[:2])} "
                          "and output settings; start a new run for other settings)")
    return saved


# --- single-device checkpoints ---------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model: nn.Module, method, position: Position, total_steps: int,
                    rank_rng: list[dict] | None = None, model_state: dict | None = None) -> None:
    """rank_rng: every rank's rng_state() (train.distributed=ddp: one file for identical replicas); model_state: the
    model's state dict when model.state_dict() does not hold it whole (frozen blocks sharded)."""
    payload = {"step": position.step, "epoch": position.epoch, "micro": position.micro, "total_steps": total_steps,
               "model": model.state_dict() if model_state is None else model_state, "method": method.state_dict(),
               "rng": rng_state()}
    if rank_rng is not None:
        payload["rng_per_rank"] = rank_rng
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    replace_durably(tmp, path)


def load_checkpoint(resume_from: str, model: nn.Module, method, device: torch.device, *, rank: int | None = None,
                    world_size: int | None = None, load_model_state=None) -> Position:
    """Restore model, method and RNG states in place; writes nothing (carry_metrics does, once the run starts).
    rank / world_size (train.distributed=ddp): take this rank's RNG states from a checkpoint saved by as many ranks;
    load_model_state: what loads the model's state dict (default model.load_state_dict)."""
    payload = torch.load(checkpoint_file(resume_from), map_location=device, weights_only=True)
    saved_ranks = len(payload.get("rng_per_rank") or [])
    if rank is not None and saved_ranks != world_size:
        saved = f"{saved_ranks} data-parallel ranks" if saved_ranks else "one process"
        raise ResumeError(f"cannot resume on {world_size} data-parallel ranks from a checkpoint saved by {saved}; "
                          "resume with the same number of ranks")
    (load_model_state or model.load_state_dict)(payload["model"])
    method.load_state_dict(payload["method"])
    position = Position(step=int(payload["step"]), epoch=int(payload["epoch"]), micro=int(payload["micro"]))
    # last, so nothing after it consumes random numbers before training resumes
    set_rng_state(payload["rng"] if rank is None else payload["rng_per_rank"][rank])
    return position


def carry_metrics(source_dir: Path, run_dir: Path, step: int) -> None:
    """The resumed run's metrics.jsonl: the history up to the checkpoint's step."""
    source_dir = source_dir.resolve()
    if source_dir == run_dir.resolve():
        truncate_metrics(run_dir, step)
    elif RunDir(source_dir).has_metrics():
        # resuming into another directory (the loop allows it): its metrics start as the history up to the checkpoint
        # (replacing anything there), so the summary covers the whole run
        write_metrics(run_dir, [r for r in read_metrics(source_dir) if int(r["step"]) <= step])


# --- sharded (FSDP2) checkpoints -------------------------------------------------------------------------------------
def save_sharded_checkpoint(run_dir: Path, model: nn.Module, method, position: Position, total_steps: int,
                            ctx) -> None:
    """train.distributed=fsdp2: every rank writes its shards into <run_dir>/checkpoint.dcp (and its RNG states)."""
    dist_ckpt.save_checkpoint(run_dir / SHARDED_CHECKPOINT_DIR, model, method, ctx,
                              position={"step": position.step, "epoch": position.epoch, "micro": position.micro,
                                        "total_steps": total_steps}, rank_state={"rng": rng_state()})
    if ctx.is_main:
        fsync_dir(run_dir)


def load_sharded_checkpoint(resume_from: str, model: nn.Module, method, ctx) -> Position:
    """resume_from: a checkpoint.dcp directory or the run directory holding one."""
    saved, rank_state = dist_ckpt.load_checkpoint(sharded_directory(resume_from), model, method, ctx)
    position = Position(step=int(saved["step"]), epoch=int(saved["epoch"]), micro=int(saved["micro"]))
    set_rng_state(rank_state["rng"])
    return position
