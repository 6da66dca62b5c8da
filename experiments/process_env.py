"""Process-wide settings the entry points (experiments.run, experiments.run_all) apply before torch is imported.

Each is a default: a value already in the environment wins. Both are recorded with every run (summary.json's
environment holds the allocator setting).
"""
from __future__ import annotations

import os

DEFAULTS = {
    # Idle OpenMP threads that spin (the default) stall every parallel op when another process holds a core; on a busy
    # 2-core machine a 576x576 SVD took 13 s instead of 0.16 s with passive waiting.
    "OMP_WAIT_POLICY": "PASSIVE",
    # The CUDA caching allocator otherwise keeps fixed-size segments. BAdam frees one block's fp32 copies and Adam
    # moments and allocates the next block's at every switch while activation sizes vary from batch to batch; fixed
    # segments then fragment (H100, Llama 3-8B, K=2: peak reserved 26.8 GB for 20.7 GB allocated; Llama 2-7B 29.9 GB
    # for 18.4 GB). Expandable segments grow one mapping instead. One setting for every method, so comparisons hold.
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}


def apply_defaults() -> None:
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
