"""Sharded checkpoints of an FSDP2 run with torch.distributed.checkpoint (DCP): each rank writes only its shards.

A checkpoint is a directory:
    <dir>/            DCP files: the model's sharded weights under "model.*", the method's tensors under "method.*"
    <dir>/layout.json the method state's structure (dicts, lists, numbers, strings) with each tensor replaced by a
                      reference (key, shape, dtype, sharding), plus the loop's position (step, epoch, ...) and the
                      world size; written by rank 0
    <dir>/rank<r>.pt  what differs per rank (RNG states), torch.save, loaded with weights_only=True

Why the layout file: DCP loads in place, into tensors of the right shape and sharding. A freshly built method has no
optimizer state yet (torch optimizers create it at the first step, BAdam only for the active block), so the tensors
to load into are built from the layout: a DTensor saved with Shard(0) becomes an empty DTensor with Shard(0) on this
job's mesh, a plain tensor an empty tensor. The rebuilt nested state goes through method.load_state_dict unchanged, so
BAdam's schedule (replicated: order, position, generator) and its sharded active-block masters and Adam moments come
back exactly, as for any other method. DCP stores a replicated plain tensor once.

The directory is written under a temporary name and renamed when every rank has finished, so a crash mid-save leaves
the previous checkpoint intact.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from experiments.distributed import DistContext
from experiments.results import SHARDED_CHECKPOINT_DIR

LAYOUT_FILE = "layout.json"
FORMAT = "badam-bench/fsdp2-checkpoint/1"
CHECKPOINT_DIR = SHARDED_CHECKPOINT_DIR  # inside a run directory


# --- nested state <-> flat tensors + JSON layout ------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _placements(t: torch.Tensor) -> list[str] | None:
    placements = getattr(t, "placements", None)
    if placements is None:
        return None
    names = []
    for p in placements:
        if p.is_shard():
            names.append(f"shard{p.dim}")
        elif p.is_replicate():
            names.append("replicate")
        else:  # a Partial tensor holds unreduced sums: saving it would save a wrong value
            raise TypeError(f"cannot checkpoint a DTensor with placement {p}; reduce it first")
    return names


def flatten_state(obj, prefix: str = "", flat: dict | None = None):
    """(layout, flat): `flat` maps "prefix.path" -> tensor; `layout` is obj with tensors replaced by references and
    containers tagged, so that unflatten_state(layout, flat) rebuilds obj (dict keys keep their int/str type)."""
    flat = {} if flat is None else flat
    if isinstance(obj, torch.Tensor):
        key = prefix or "value"
        flat[key] = obj
        return {"__tensor__": key, "shape": list(obj.shape), "dtype": _dtype_name(obj.dtype),
                "device": obj.device.type, "placements": _placements(obj)}, flat
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot checkpoint {prefix or 'state'}: dict key {k!r} is not a str or int")
            child, _ = flatten_state(v, f"{prefix}.{k}" if prefix else str(k), flat)
            items.append([k, child])
        return {"__dict__": items}, flat
    if isinstance(obj, (list, tuple)):
        children = [flatten_state(v, f"{prefix}.{i}" if prefix else str(i), flat)[0] for i, v in enumerate(obj)]
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": children}, flat
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, flat
    raise TypeError(f"cannot checkpoint {prefix or 'state'}: value of type {type(obj).__name__} (valid: tensors, "
                    "dicts, lists, tuples, numbers, strings, None)")


def unflatten_state(layout, flat: dict):
    if isinstance(layout, dict):
        if "__tensor__" in layout:
            return flat[layout["__tensor__"]]
        if "__dict__" in layout:
            return {k: unflatten_state(v, flat) for k, v in layout["__dict__"]}
        if "__list__" in layout:
            return [unflatten_state(v, flat) for v in layout["__list__"]]
        if "__tuple__" in layout:
            return tuple(unflatten_state(v, flat) for v in layout["__tuple__"])
        raise ValueError(f"corrupt checkpoint layout entry: {sorted(layout)}")
    return layout


def _tensor_refs(layout):
    if isinstance(layout, dict):
        if "__tensor__" in layout:
            yield layout
            return
        for key in ("__dict__", "__list__", "__tuple__"):
            if key in layout:
                for child in layout[key]:
                    yield from _tensor_refs(child[1] if key == "__dict__" else child)
    return


def empty_like_ref(ref: dict, ctx: DistContext) -> torch.Tensor:
    """An uninitialised tensor matching a layout reference, on this job's mesh when it was a DTensor."""
    dtype = getattr(torch, ref["dtype"])
    device = ctx.device if ref["device"] != "cpu" else torch.device("cpu")
    if ref["placements"] is None:
        return torch.empty(ref["shape"], dtype=dtype, device=device)
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor import empty as dtensor_empty

    placements = [Replicate() if name == "replicate" else Shard(int(name[len("shard"):])) for name in ref["placements"]]
    if len(placements) != ctx.mesh.ndim:
        raise ValueError(f"checkpoint tensor {ref['__tensor__']} was sharded over a {len(placements)}-D mesh, this job "
                         f"uses a {ctx.mesh.ndim}-D one")
    return dtensor_empty(ref["shape"], dtype=dtype, device_mesh=ctx.mesh, placements=placements)


# --- save / load ------------------------------------------------------------------------------------------------
def _model_state(model: nn.Module) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)  # sharded DTensors that share storage with the parameters


def save_checkpoint(directory, model: nn.Module, method, ctx: DistContext, *, position: dict,
                    rank_state: dict | None = None) -> Path:
    """Write model shards, method state and the loop's `position` (JSON-able, same on every rank) to `directory`;
    `rank_state` (e.g. RNG states) is saved per rank. Every rank must call this."""
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    layout, flat = flatten_state(method.state_dict(), "method")
    dcp.save({"model": _model_state(model), **flat}, checkpoint_id=str(tmp))
    torch.save(rank_state or {}, tmp / f"rank{ctx.rank}.pt")
    if ctx.is_main:
        meta = {"format": FORMAT, "world_size": ctx.world_size, "position": position, "method": layout}
        (tmp / LAYOUT_FILE).write_text(json.dumps(meta))
    ctx.barrier()
    if ctx.is_main:  # swap in the complete new checkpoint, then drop the old one
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return directory


def is_checkpoint(path) -> bool:
    return (Path(path) / LAYOUT_FILE).is_file()


def read_layout(directory) -> dict:
    path = Path(directory) / LAYOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a sharded (fsdp2) checkpoint: {LAYOUT_FILE} is missing")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def load_checkpoint(directory, model: nn.Module, method, ctx: DistContext) -> tuple[dict, dict]:
    """Restore the model's shards and the method's state in place; returns (position, this rank's rank_state).
    The model must be sharded as it was when saved, and the method built (build_optimizer) on it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    directory = Path(directory)
    meta = read_layout(directory)
    if meta["world_size"] != ctx.world_size:
        raise ValueError(f"{directory} was saved by {meta['world_size']} processes, this job has {ctx.world_size}: "
                         "each rank's data stream and RNG continue only on as many ranks; relaunch with "
                         f"--nproc_per_node {meta['world_size']}")
    layout = meta["method"]
    flat = {ref["__tensor__"]: empty_like_ref(ref, ctx) for ref in _tensor_refs(layout)}
    model_state = _model_state(model)
    state = {"model": model_state, **flat}
    dcp.load(state, checkpoint_id=str(directory))
    set_model_state_dict(model, state["model"])
    method.load_state_dict(unflatten_state(layout, {k: state[k] for k in flat}))
    rank_file = directory / f"rank{ctx.rank}.pt"
    rank_state = torch.load(rank_file, map_location="cpu", weights_only=True) if rank_file.is_file() else {}
    return meta["position"], rank_state
