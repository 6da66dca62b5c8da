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


LLAMA3_8B_PARAMS = 8_030_261_248  # total_params of random:llama3-8b as the benchmark records it


def stepped_ddp_result(single_ms: list[list[float]], ddp_ms: list[list[list[float]]], *,
                       window_ms: float | list[float] = 3.0, tail_ms: float = 1.0, backward_excess_ms: float = 0.0,
                       **extra) -> dict:
    """A --mode ddp --compare-single R run of llama3-8b (BAdam, fp32 all-reduce, no warm-up) with every step, as the
    diagnostics read it: single_ms[r][i] is rank 0 alone in round r at step i, ddp_ms[r][k][i] rank k under ddp.
    Each step trains block i; forward = half the step, backward = the other half - 1 ms (+ backward_excess_ms under
    ddp), update 1 ms; ddp steps record the reduce window (per rank when a list) and tail."""
    ranks = len(ddp_ms[0])
    windows = window_ms if isinstance(window_ms, list) else [window_ms] * ranks

    def step(i: int, ms: float, more_backward: float = 0.0, **fields) -> dict:
        return {"step": i + 1, "ms": ms, "forward_ms": ms / 2, "backward_ms": ms / 2 - 1 + more_backward,
                "update_ms": 1.0, "active_block": i, **fields}

    per_rank = [{"rank": k, "phases": []} for k in range(ranks)]
    for r, (alone, together) in enumerate(zip(single_ms, ddp_ms)):
        per_rank[0]["phases"].append({"kind": "single", "round": r + 1,
                                      "steps": [step(i, ms) for i, ms in enumerate(alone)]})
        for k, times in enumerate(together):
            per_rank[k]["phases"].append({"kind": "ddp", "round": r + 1, "steps": [
                step(i, ms, backward_excess_ms, reduce_window_ms=windows[k], reduce_tail_ms=tail_ms)
                for i, ms in enumerate(times)]})
    return {"model": "llama3-8b", "method": "badam", "mode": "ddp", "gpus": ranks, "batch_per_gpu": 2, "seq_len": 8,
            "reduce_dtype": "fp32", "warmup": 0, "rounds": len(single_ms), "total_params": LLAMA3_8B_PARAMS,
            "environment": environment(ranks), "per_rank": per_rank, **extra}
