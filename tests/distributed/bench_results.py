"""Synthetic result JSONs of benchmarks/multi_gpu.py for the summary tests: only the fields the summary reads, every
number chosen by the test that writes them."""
from __future__ import annotations


def environment(gpus: int) -> dict:
    return {"command": "c", "world_size": gpus, "device": "d", "torch": "t", "cuda": None, "nccl": None,
            "transformers": "x", "date": "now"}


def sharded_result(gpus: int, tokens_per_s: float, groups: str, **extra) -> dict:
    """An FSDP2 run (mode fsdp2 is the default of results without a mode) of model m, BAdam, batch 2 x 8."""
    return {"model": "m", "method": "badam", "gpus": gpus, "batch_per_gpu": 2, "seq_len": 8, "fsdp_groups": groups,
            "median_step_ms": 10.0, "median_forward_ms": 3.0, "median_backward_ms": 6.0, "median_update_ms": 1.0,
            "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / gpus, "peak_allocated_bytes_max": None,
            "predicted_bytes_per_gpu": None, "weights_bytes_per_rank": [None], "environment": environment(gpus),
            **extra}


def spread_of(median: float, low: float | None = None, high: float | None = None) -> dict:
    """A median [min-max] entry as the benchmark writes it (min and max default to the median)."""
    return {"median": median, "min": median if low is None else low, "max": median if high is None else high}


def replicated_result(gpus: int, ddp_tokens_per_s: dict, **extra) -> dict:
    """A --mode ddp run of model m, BAdam, batch 2 x 8, fp32 all-reduce, one round (extra: single phases, scaling,
    tag, compile_layers, ...)."""
    return {"model": "m", "method": "badam", "mode": "ddp", "gpus": gpus, "batch_per_gpu": 2, "seq_len": 8,
            "reduce_dtype": "fp32", "rounds": 1, "ddp_tokens_per_s": ddp_tokens_per_s,
            "ddp_median_forward_ms": 3.0, "ddp_median_backward_ms": 6.0, "ddp_median_update_ms": 1.0,
            "ddp_peak_allocated_bytes_max": None, "environment": environment(gpus), **extra}
