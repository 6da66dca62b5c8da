"""train.distributed's values and what "auto" stands for when a recorded run is compared with a new config.

No imports from the project: experiments/config.py (validation, changed_settings), experiments/checkpoint.py (the
resume check) and experiments/launch_mode.py (which resolves auto before a run starts) share it.
"""
from __future__ import annotations

import os

MODES = ("auto", "none", "fsdp2", "ddp")  # auto: experiments/launch_mode.py


def world_size() -> int:
    """Processes in this launch (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def same_mode(recorded: object, wanted: object) -> bool:
    """Whether a run recorded with train.distributed=`recorded` fits a config asking for `wanted`: equal values, or
    "auto" on one side standing for what it resolves to in this launch: none on one process, ddp or fsdp2 (chosen by
    memory) under torchrun. Runs record the resolved mode; an older config.yaml without the key reads as auto."""
    if recorded == wanted:
        return True
    if "auto" not in (recorded, wanted):
        return False
    other = wanted if recorded == "auto" else recorded
    return other == "none" if world_size() <= 1 else other in ("ddp", "fsdp2")


def same_setting(key: str, recorded: dict, wanted: dict) -> bool:
    """Whether dotted config key `key` of a recorded run (`recorded`, dotted keys) fits `wanted`: train.distributed
    by same_mode; train.ddp_shard_frozen may differ where auto stands on one side under torchrun (auto shards the
    frozen blocks of a model that does not fit one GPU replicated, and records it); any other key by equality."""
    if key == "train.distributed":
        return same_mode(recorded.get(key), wanted.get(key))
    if key == "train.ddp_shard_frozen" and recorded.get(key) != wanted.get(key):
        return world_size() > 1 and "auto" in (recorded.get("train.distributed"), wanted.get("train.distributed"))
    return recorded.get(key) == wanted.get(key)
