"""Where the suite finds shared data and keeps its caches. Environment variables override the defaults."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared datasets/models folder: $BADAM_SHARED, else ../shared beside the repository."""
    return Path(os.environ.get("BADAM_SHARED", REPO_ROOT.parent / "shared")).resolve()


def shared_data(*parts: str) -> Path:
    return shared_dir().joinpath("data", *parts)


def cache_dir() -> Path:
    """Cache for converted models and tokenized data: $BADAM_BENCH_CACHE, else <repo>/cache (git-ignored)."""
    path = Path(os.environ.get("BADAM_BENCH_CACHE", REPO_ROOT / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# A model folder carried to a machine that cannot install the model's packages (no registry there), made by
# scripts/gpu/carry_model.py and put here by scripts/gpu/quality_session.sh; this file in it names its source and the
# dtype of its weights (experiments.models falls back to such a copy and refuses to load it in another dtype).
CARRIED_FILE = "carried.json"


def carried_folder(name: str) -> Path:
    """Where a model folder carried in pieces is put on the machine that receives it: <cache>/carried/<name>."""
    return cache_dir() / "carried" / name
