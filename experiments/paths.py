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
