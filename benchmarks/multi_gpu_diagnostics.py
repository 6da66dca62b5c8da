"""Where a data-parallel step's time goes, from the per-rank, per-step timings that a `benchmarks/multi_gpu.py --mode
ddp --compare-single R` result keeps (every step of every phase on every rank).

    python benchmarks/multi_gpu_diagnostics.py results/bench/multi_gpu_h100x2_ddp/*_vs1x5.json

Every phase restarts BAdam's schedule, so step i trains the same block in every phase and round; comparisons are
made step by step ("paired"), which takes the block-to-block spread of the backward (8-100 ms at Llama 3-8B, batch 2,
K = 1) out of the differences. Medians over all timed steps of all rounds unless said otherwise:
  * per phase kind and rank: step, forward, backward, update (GPU time, CUDA events); host forward / backward (wall
    time of the issuing thread: about the GPU time when the step is launch-bound, well below it when the GPU is the
    bottleneck); CPU forward (that thread's CPU time: below its wall time when it was descheduled); involuntary context
    switches per step; under ddp the all-reduce's window (first bucket launched -> end of the backward's own work) and
    tail (end of backward work -> every gradient averaged: the exposed all-reduce, waiting for the other rank included);
    the cyclic garbage collector's full collections and milliseconds inside the timed steps (totals); the hypervisor's
    steal time during the timed steps (total, and per step in the slower and the faster half of the forwards) and the
    issuing CPU's clock (median), where the host exposes them;
  * coupling: the ddp step as reported (per step the slower rank, then the median) against the larger of the ranks'
    own medians: equal when the ranks wait for each other every step (they meet in the all-reduce), so the reported
    figure is not a max taken over independent noise;
  * paired excess over single (rank 0 alone): ddp step - single step; each rank's forward; the smaller of the ranks'
    backward (the rank that arrives last waits least: the communication it could not hide plus its own slowdown);
    alone (every rank on its own, at the same time, nothing averaged) - single: what the processes cost each other
    without communicating;
  * noise cost of waiting: for the same step of two different single rounds, the mean of max(a, b) - a: what waiting
    for the slower of two ranks costs on average if each rank's noise were like rank 0's between single rounds;
  * throughput: per round single / ddp of the mean step times (an epoch's tokens/s ratio, spikes included), of the
    median step times, and the median per-step ratio; median [min-max] over rounds. Each ratio is already the scaling
    (ddp tokens/s over N x single tokens/s); times N it is the speed-up;
  * by active block: forward and backward medians per quarter of the block indices (BAdam's backward reaches the
    active layer and those above it; layers below it run forward without autograd, which is less host work: a
    forward that changes with the active block while its matmuls do not is launch-bound).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for the protocol's statistics
from badam.data_parallel import MAX_IN_FLIGHT  # noqa: E402
from experiments.repeats import band  # noqa: E402

KINDS = ("single", "alone", "ddp")
FIELDS = ("ms", "forward_ms", "backward_ms", "update_ms", "host_forward_ms", "host_backward_ms", "cpu_forward_ms",
          "involuntary_switches", "reduce_window_ms", "reduce_tail_ms", "cpu_mhz")


def _median(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _total(values) -> float | None:
    """Sum of the recorded values, None when no step recorded any (a result from before the field existed)."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def spread(values: list[float]) -> dict | None:
    """median, min, max and count of values (None when there are none): the protocol's band (experiments.repeats)
    under this benchmark's JSON keys."""
    b = band(values)
    return None if b is None else {"median": b.median, "min": b.low, "max": b.high, "n": b.n}


def timed_rounds(result: dict, kind: str, rank: int) -> list[list[dict]]:
    """Per round, in round order: the timed steps of phase `kind` on `rank`."""
    phases = sorted((p for p in result["per_rank"][rank]["phases"] if p["kind"] == kind), key=lambda p: p["round"])
    return [p["steps"][result["warmup"]:] for p in phases]


def rank_medians(result: dict) -> list[dict]:
    rows = []
    for kind in KINDS:
        for rank in range(len(result["per_rank"])):
            steps = [s for round_steps in timed_rounds(result, kind, rank) for s in round_steps]
            if steps:
                rows.append({"kind": kind, "rank": rank, "steps": len(steps),
                             **{field: _median(s.get(field) for s in steps) for field in FIELDS},
                             "gc_full_total": _total(s.get("gc_full") for s in steps),
                             "gc_ms_total": _total(s.get("gc_ms") for s in steps),
                             "steal_ms_total": _total(s.get("steal_ms") for s in steps), **_steal_by_speed(steps)})
    return rows


def _steal_by_speed(steps: list[dict]) -> dict:
    """Median hypervisor steal per step in the steps whose forward is slower than the median forward, and in the
    others: a host stretch the hypervisor causes shows as more steal in the slow half."""
    timed = [s for s in steps if s.get("steal_ms") is not None and s.get("forward_ms") is not None]
    if not timed:
        return {"steal_slow_ms": None, "steal_fast_ms": None}
    middle = statistics.median(s["forward_ms"] for s in timed)
    return {"steal_slow_ms": _median(s["steal_ms"] for s in timed if s["forward_ms"] > middle),
            "steal_fast_ms": _median(s["steal_ms"] for s in timed if s["forward_ms"] <= middle)}


def _pairs(result: dict, kind: str) -> list[tuple[dict, list[dict]]]:
    """(rank 0's single step, that step of `kind` on every rank), over the rounds that ran both."""
    single = timed_rounds(result, "single", 0)
    other = [timed_rounds(result, kind, rank) for rank in range(len(result["per_rank"]))]
    rounds = min([len(single)] + [len(o) for o in other])
    return [(single[r][i], [o[r][i] for o in other]) for r in range(rounds) for i in range(len(single[r]))]


def paired_excess(result: dict, kind: str) -> dict | None:
    """Medians of `kind` - single, step by step (see the module docstring)."""
    pairs = _pairs(result, kind)
    if not pairs:
        return None

    def median(diff) -> float | None:
        return _median(diff(s, ranks) for s, ranks in pairs)

    out = {"steps": len(pairs),
           "same_blocks": all(s.get("active_block") == x.get("active_block") for s, ranks in pairs for x in ranks),
           "step_ms": median(lambda s, ranks: max(x["ms"] for x in ranks) - s["ms"]),
           "forward_max_ms": median(lambda s, ranks: max(x["forward_ms"] for x in ranks) - s["forward_ms"]),
           "backward_min_ms": median(lambda s, ranks: min(x["backward_ms"] for x in ranks) - s["backward_ms"])}
    for rank in range(len(pairs[0][1])):
        own = timed_rounds(result, "single", rank)  # this GPU's own single phases (--single-every-rank), else rank 0's
        reference, steps = own or timed_rounds(result, "single", 0), timed_rounds(result, kind, rank)
        out[f"rank{rank}_reference"] = "own single" if own else "rank 0 single"
        for name in ("ms", "forward_ms", "backward_ms", "host_forward_ms", "host_backward_ms"):
            out[f"rank{rank}_{name}"] = _median(
                b[name] - a[name] for ref, this in zip(reference, steps) for a, b in zip(ref, this)
                if a.get(name) is not None and b.get(name) is not None)
    return out


def coupling(result: dict, kind: str = "ddp") -> dict | None:
    per_rank = [[s["ms"] for round_steps in timed_rounds(result, kind, rank) for s in round_steps]
                for rank in range(len(result["per_rank"]))]
    if not per_rank[0]:
        return None
    return {"median_of_max_ms": statistics.median(max(step) for step in zip(*per_rank)),
            "max_of_medians_ms": max(statistics.median(times) for times in per_rank)}


def noise_cost(result: dict) -> dict | None:
    """Mean of max(a, b) - a over the same step of two different single rounds (step and forward; a median would be
    0, as a is the larger one half of the time)."""
    single = timed_rounds(result, "single", 0)
    if len(single) < 2:
        return None
    out = {}
    for name in ("ms", "forward_ms"):
        diffs = [max(a[i][name], b[i][name]) - a[i][name]
                 for x, a in enumerate(single) for y, b in enumerate(single) if x != y for i in range(len(a))]
        out[name] = statistics.fmean(diffs)
    return out


def throughput(result: dict, kind: str = "ddp") -> dict | None:
    """single / kind per round: ratio of mean step times, of median step times, and the median per-step ratio (the
    slower rank's step for kind)."""
    single = timed_rounds(result, "single", 0)
    other = [timed_rounds(result, kind, rank) for rank in range(len(result["per_rank"]))]
    rounds = min([len(single)] + [len(o) for o in other])
    if not rounds:
        return None
    of_means, of_medians, per_step = [], [], []
    for r in range(rounds):
        one = [s["ms"] for s in single[r]]
        many = [max(steps) for steps in zip(*([s["ms"] for s in o[r]] for o in other))]
        of_means.append(statistics.fmean(one) / statistics.fmean(many))
        of_medians.append(statistics.median(one) / statistics.median(many))
        per_step += [a / b for a, b in zip(one, many)]
    return {"ratio_of_means": spread(of_means), "ratio_of_medians": spread(of_medians),
            "per_step_ratio_median": statistics.median(per_step)}


def by_block_range(result: dict, parts: int = 4) -> list[dict]:
    """Per phase kind and rank, forward and backward medians for each `parts`-th of the active block indices."""
    rows = []
    for kind in KINDS:
        for rank in range(len(result["per_rank"])):
            steps = [s for round_steps in timed_rounds(result, kind, rank) for s in round_steps
                     if isinstance(s.get("active_block"), int)]
            if not steps:
                continue
            blocks = max(s["active_block"] for s in steps) + 1
            for k in range(parts):
                low, high = k * blocks // parts, (k + 1) * blocks // parts
                part = [s for s in steps if low <= s["active_block"] < high]
                if part:
                    rows.append({"kind": kind, "rank": rank, "blocks": [low, high - 1],
                                 "forward_ms": _median(s["forward_ms"] for s in part),
                                 "backward_ms": _median(s["backward_ms"] for s in part)})
    return rows


def diagnose(result: dict) -> dict:
    """Everything above for one result (the JSON keeps it under "diagnostics")."""
    return {"rank_medians": rank_medians(result), "by_block_range": by_block_range(result),
            "paired": {kind: paired_excess(result, kind) for kind in ("alone", "ddp")},
            "coupling": coupling(result), "noise_cost": noise_cost(result),
            "throughput": {kind: throughput(result, kind) for kind in ("alone", "ddp")}}


def compile_backend(result: dict) -> str | None:
    """The --compile-layers backend a result JSON records (None: eager layers, also for JSONs from before the flag)."""
    return (result.get("compile_layers") or {}).get("backend")


def in_flight_note(result: dict) -> str:
    """', B in flight' for a run whose --max-in-flight was not the library's default (older JSONs: the default)."""
    value = result.get("max_in_flight", MAX_IN_FLIGHT)
    return "" if value == MAX_IN_FLIGHT else f", {value} in flight"


def checkpointing_note(policy: str | None) -> str:
    """What a run's setting label adds for a checkpointing policy other than the default (non-reentrant; results
    written before the option have none and used it)."""
    return "" if policy in (None, "non-reentrant") else f", {policy} checkpointing"


def compiled_suffix(backend: str | None) -> str:
    """Result-name part of --compile-layers: _compiled for inductor, _compiled-<backend> for a checking backend."""
    return "" if not backend else "_compiled" if backend == "inductor" else f"_compiled-{backend}"


def compiled_note(backend: str | None) -> str:
    """What the summary's FSDP groups / reduce columns add for --compile-layers."""
    return "" if not backend else ", layers compiled" + ("" if backend == "inductor" else f" ({backend})")


def overlap_note(result: dict) -> str:
    """', update overlapped' for a run with --overlap-update (BlockOptimizer.overlap_update), ', frozen blocks
    sharded' with --shard-frozen (BlockOptimizer.shard_frozen_blocks)."""
    shard = result.get("shard_frozen")
    options = shard if isinstance(shard, dict) else {}
    detail = ([f"{options['prefetch']} ahead"] if options.get("prefetch", 1) != 1 else []) \
        + (["gathers from a side stream"] if options.get("gather_stream") else [])
    return (", update overlapped" if result.get("overlap_update") else "") \
        + (", frozen blocks sharded" if shard else "") + (f" ({', '.join(detail)})" if detail else "")


def _label(result: dict) -> str:
    backend = compile_backend(result)
    compiled = "" if not backend else " compiled" + ("" if backend == "inductor" else f" ({backend})")
    extra = in_flight_note(result).replace(",", "") \
        + (" CPUs split" if result.get("cpu_affinity") == "split" else "") + compiled \
        + checkpointing_note(result.get("checkpointing")).replace(",", "") + overlap_note(result).replace(",", "") + (
        f" {result['tag']}" if result.get("tag") else "")
    return f"{result['model']} {result['method']} {result['batch_per_gpu']}x{result['seq_len']} " \
           f"{result['reduce_dtype']}{extra}"


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _gc(row: dict) -> str:
    full, ms = row.get("gc_full_total"), row.get("gc_ms_total")
    return "-" if full is None else f"{full:.0f} ({_f(ms, 0)})"


def _steal(row: dict) -> str:
    total = row.get("steal_ms_total")
    return "-" if total is None else \
        f"{total:.0f} ({_f(row.get('steal_slow_ms'), 2)} / {_f(row.get('steal_fast_ms'), 2)})"


def _s(spread: dict | None) -> str:
    return "-" if not spread else f"{spread['median']:.3f} [{spread['min']:.3f}-{spread['max']:.3f}]"


def markdown(results: list[dict]) -> list[str]:
    """The two diagnostics tables of summary.md for the ddp results that keep per-rank steps."""
    rows = [(r, diagnose(r)) for r in results if r.get("mode") == "ddp" and r.get("per_rank")]  # as of this code
    if not rows:
        return []
    lines = ["", "### Where the ddp step's time goes (benchmarks/multi_gpu_diagnostics.py)", "",
             "Medians over all timed steps of all rounds, per phase kind and rank; GPU ms from CUDA events, host ms "
             "the issuing thread's wall time, CPU the forward thread's CPU time; full GCs: the garbage collector's "
             "full collections in all timed steps (their ms); steal: CPU time the hypervisor gave to others during "
             "the timed steps, all vCPUs (ms; per step median in the slower / faster half of the forwards); CPU MHz: "
             "the issuing CPU's clock; '-' where this run did not record it.",
             "", "| run | phase | rank | step | forward | backward | update | host forward | CPU forward | "
             "host backward | invol. switches/step | reduce window | reduce tail | full GCs (ms) | steal (slow / "
             "fast) | CPU MHz |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, d in rows:
        for m in d["rank_medians"]:
            lines.append(f"| {_label(r)} | {m['kind']} | {m['rank']} | {_f(m['ms'])} | {_f(m['forward_ms'])} | "
                         f"{_f(m['backward_ms'])} | {_f(m['update_ms'])} | {_f(m['host_forward_ms'])} | "
                         f"{_f(m['cpu_forward_ms'])} | {_f(m['host_backward_ms'])} | "
                         f"{_f(m['involuntary_switches'])} | {_f(m['reduce_window_ms'], 2)} | "
                         f"{_f(m['reduce_tail_ms'], 2)} | {_gc(m)} | {_steal(m)} | {_f(m['cpu_mhz'], 0)} |")
    lines += ["", "Paired per step against rank 0 alone (same block), ms: ddp step (slower rank) - single; each "
                  "rank's forward (against its own single phases when measured); the smaller backward of the two "
                  "ranks; alone (every rank on its own at once) - single. Noise cost: the mean of max(a, b) - a for "
                  "the same step of two single rounds. Throughput single/ddp per round (= scaling; x N = speed-up): of "
                  "mean step times | of medians.", "",
              "| run | ddp - single step | forward r0 / r1 | min backward | alone - single step / forward r0 | "
              "noise cost step / forward | median of max / max of medians | ratio of means | ratio of medians |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r, d in rows:
        ddp, alone = d["paired"]["ddp"] or {}, d["paired"]["alone"] or {}
        noise, coupled, rate = d["noise_cost"] or {}, d["coupling"] or {}, d["throughput"]["ddp"] or {}
        lines.append(f"| {_label(r)} | {_f(ddp.get('step_ms'))} | {_f(ddp.get('rank0_forward_ms'))} / "
                     f"{_f(ddp.get('rank1_forward_ms'))} | {_f(ddp.get('backward_min_ms'))} | "
                     f"{_f(alone.get('step_ms'))} / {_f(alone.get('rank0_forward_ms'))} | {_f(noise.get('ms'))} / "
                     f"{_f(noise.get('forward_ms'))} | {_f(coupled.get('median_of_max_ms'))} / "
                     f"{_f(coupled.get('max_of_medians_ms'))} | {_s(rate.get('ratio_of_means'))} | "
                     f"{_s(rate.get('ratio_of_medians'))} |")
    lines += ["", "Forward / backward ms (medians) by active block, per phase kind and rank:", "",
              "| run | phase | rank | " + " | ".join(f"blocks {low}-{high}" for low, high in
                                                   _ranges(rows[0][1]["by_block_range"])) + " |",
              "|---|---|---|" + "---|" * len(_ranges(rows[0][1]["by_block_range"]))]
    for r, d in rows:
        groups: dict = {}
        for m in d.get("by_block_range", []):
            groups.setdefault((m["kind"], m["rank"]), []).append(f"{_f(m['forward_ms'])} / {_f(m['backward_ms'])}")
        for (kind, rank), cells in groups.items():
            lines.append(f"| {_label(r)} | {kind} | {rank} | " + " | ".join(cells) + " |")
    return lines


def _ranges(rows: list[dict]) -> list[tuple[int, int]]:
    first = rows[0] if rows else None
    return [tuple(m["blocks"]) for m in rows if first and (m["kind"], m["rank"]) == (first["kind"], first["rank"])]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Where a data-parallel step's time goes (module docstring).")
    parser.add_argument("results", nargs="+", metavar="RESULT.json",
                        help="results of benchmarks/multi_gpu.py --mode ddp --compare-single R")
    args = parser.parse_args(argv)
    results = []
    for name in args.results:
        try:
            result = json.loads(Path(name).read_text())
        except (OSError, ValueError) as exc:  # a missing or malformed file: one line, the rest still read
            print(f"{name}: not readable as a result JSON ({type(exc).__name__}: {exc}); skipped", file=sys.stderr)
            continue
        if not isinstance(result, dict) or result.get("mode") != "ddp" or not result.get("per_rank"):
            print(f"{name}: not a --mode ddp result with per-rank steps; skipped", file=sys.stderr)
            continue
        results.append(result)
    if not results:
        print("error: none of the files is a benchmarks/multi_gpu.py --mode ddp result", file=sys.stderr)
        return 2
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
