"""BAdam data parallelism on N GPUs, planned on paper from 2-GPU measurements (issue 18): the all-reduce volume per
step and the expected efficiency at 8 and 64 GPUs.

    python benchmarks/ddp_scaling_plan.py results/bench/multi_gpu_h100x2_compile2/*.json ... [--internode-gbps 400] \
        [--gpus 2 8 64] [--check results/bench/multi_gpu_h100x4_scale4/*.json ...] [--out PLAN.md]

Inputs: results of `benchmarks/multi_gpu.py --mode ddp --compare-single R` (R >= 2) of BAdam on >= 2 GPUs whose ddp
steps record the all-reduce timing (reduce_window_ms, reduce_tail_ms); read with benchmarks/multi_gpu_diagnostics.py.
Runs of the same model, batch, reduce dtype, compiled layers, checkpointing policy and CPU placement form one setting
(one table; with --by-folder also of the same folder, i.e. lent machine).

Per step and GPU, for N GPUs (weak scaling: the same per-GPU batch, so the per-GPU compute does not change with N):
  volume     the active block's gradient, S bytes = one decoder layer's parameters (total_params minus the embeddings,
             the head and the final norm, which the model config of experiments/model_configs.py gives, over the
             number of layers; BAdam's blocks here are the decoder layers) x the reduce dtype's size. A ring
             all-reduce sends and receives 2(N-1)/N x S per GPU: the factor NVIDIA's nccl-tests use to turn an
             all-reduce's algorithm bandwidth into its bus bandwidth (nccl-tests, doc/PERFORMANCE.md), so its time
             is 2(N-1)/N x S / bus bandwidth.
  bandwidth  MEASURED lower bound of the NVLink bus bandwidth: per ddp step the all-reduce runs between the first
             bucket's launch and the moment every gradient is averaged (window + tail); the rank with the shorter
             span arrived last and waited least, so its span, median over the steps, bounds the all-reduce's time
             from above. The span also holds the rest of the layer's backward (a larger batch stretches it for the same
             bytes), so each run only bounds the bandwidth from below; the plan takes the tightest bound of all runs
             given (--nvlink-gbs replaces it with an assumed figure). Not taken: the paired ddp - single step cost,
             which is mostly the wait for the slower rank (about the noise cost), not the transfer.
  8 GPUs     one node: the same NVLink bus bandwidth (ASSUMPTION: NVSwitch gives every GPU the same bandwidth).
  64 GPUs    8 nodes x 8 (--gpus-per-node): hierarchical all-reduce, estimated as reduce-scatter in the node
             (NVLink), all-reduce of each GPU's 1/8 shard across the nodes through its own NIC, all-gather in the
             node, the phases one after another (NCCL pipelines them, so this is the slower side). Network bandwidth
             per GPU: ASSUMPTION --internode-gbps (default one 400 Gb/s InfiniBand NIC per GPU at line rate).
  exposed    MEASURED at 2 GPUs: the diagnostics' paired backward excess of the rank that arrived last (ddp -
             single backward at the same step, the same block; median per run, median over the runs), not the tail
             alone: the window is not all overlap, the backward waits for a bucket whenever a third is in flight.
             ASSUMPTION carried to N: the backward time the all-reduce hides behind is per-GPU work, the same at any
             N, so the all-reduce's extra time over 2 GPUs is exposed in full.
  straggler  synchronous data parallelism waits for the slowest rank every step. From the MEASURED single-GPU step
             times (rank 0 alone, every round): per step index (the same block in every round) each time minus that
             step's mean over the rounds (rescaled: single_residuals), pooled over the setting's runs; cost =
             E[max of N draws] - E[one draw], exact for the pooled distribution (what resampling it converges to),
             with a 5-95 % interval from resampling the pool (--resamples, --seed). The max of N draws lives in the
             pool's top 1/N, so at 64 GPUs the figure rests on the pool's top few values (hence the wide interval).
             ASSUMPTION: the ranks' noise is independent and like GPU 0's alone; a shared host's contention between
             8 processes is not in it. Checked at N = 2 against the diagnostics' noise cost (mean of max(a, b) - a
             over the same step of two single rounds) and the measured ddp excess. Steps in which Dynamo compiled a
             graph, and the step after each, are left out of every figure (drop_compile_steps: one-time costs).
  predicted  step = mean single step + exposed + straggler; efficiency = single step / predicted step (tokens/s
             against N x one GPU), speed-up = N x efficiency. The check row holds the measured 2-GPU figures: mean
             single step / mean ddp step (slower rank per step), pooled over the setting's rounds.
  --check    results measured at another GPU count (typically 4), read and refused like the inputs but not fitted:
             nothing of them enters the bandwidth, the exposed time or the straggler pool, and a file may not be both.
             They form settings as the inputs do; each is predicted from the input setting that equals it but for the
             GPU count and the folder (benchmarks/ddp_scaling_check.py, match_key, says why the folder is ignored) by
             the rows above at its own N (listed in --gpus or not), and measured as the check rows measure the inputs.
             The last section sets the two side by side, with the measured straggler = ddp - single - exposed; a check
             setting without input runs gets its measured figures and no prediction. Give --check after the inputs.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for experiments.model_configs
from experiments.model_configs import RANDOM_MODELS  # noqa: E402
from ddp_scaling_check import checks_markdown, compare, match_key  # noqa: E402
from multi_gpu_diagnostics import (checkpointing_note, compile_backend, in_flight_note, noise_cost,  # noqa: E402
                                   overlap_note, paired_excess, throughput, timed_rounds)

GB = 1e9  # decimal, as NCCL reports bandwidth
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
EXPECTED = ("expected a `benchmarks/multi_gpu.py --mode ddp --compare-single R` result (R >= 2) of BAdam on >= 2 "
            "GPUs whose ddp steps record reduce_window_ms / reduce_tail_ms")


class PlanInputError(ValueError):
    """A result file the plan cannot read: the message names the file and what is expected."""


def ring_factor(gpus: int) -> float:
    """Bytes each GPU sends (and receives) in a ring all-reduce, per byte of the buffer: 2(N-1)/N."""
    return 2.0 * (gpus - 1) / gpus


def layer_params(result: dict) -> int:
    """Parameters of one decoder layer (= one BAdam block): total_params without the embeddings, the output head
    (untied) and the final norm, whose sizes the model config gives, over the number of layers."""
    config = RANDOM_MODELS[result["model"]].config
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    ends = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings") else 2) + hidden
    rest = result["total_params"] - ends
    if rest <= 0 or rest % layers:
        raise ValueError(f"total_params {result['total_params']} is not {layers} equal layers plus the ends "
                         f"({ends}) of {result['model']}")
    return rest // layers


def gradient_bytes(result: dict) -> int:
    """Bytes of the active block's gradient on the wire (the presence flags riding along, a few floats, left out)."""
    return layer_params(result) * DTYPE_BYTES[result["reduce_dtype"]]


def check_result(result, name: str) -> None:
    """PlanInputError (one line: the file, what it is, what is expected) unless the plan can read `result`."""
    def bad(what: str):
        raise PlanInputError(f"{name}: {what}; {EXPECTED}")

    if not isinstance(result, dict) or result.get("mode") != "ddp":
        mode = result.get("mode", "fsdp2") if isinstance(result, dict) else type(result).__name__
        bad(f"a {mode} result, not --mode ddp")
    if result.get("method") not in ("badam", "bsgd"):
        bad(f"method {result.get('method')}: its all-reduce is not one block's gradient")
    spec = RANDOM_MODELS.get(result.get("model"))
    if spec is None or spec.model_type != "llama":
        bad(f"model {result.get('model')}: layer sizes are read for the Llama configs of experiments/model_configs.py")
    if (result.get("gpus") or 0) < 2 or len(result.get("per_rank") or []) < 2:
        bad(f"{result.get('gpus')} GPU(s) with per-rank steps: no all-reduce between GPUs to time")
    if len(timed_rounds(result, "single", 0)) < 2:
        bad("fewer than 2 single-GPU rounds: no step-to-step noise to measure")
    ddp = [s for rank in range(len(result["per_rank"])) for steps in timed_rounds(result, "ddp", rank) for s in steps]
    if not ddp or any(s.get("reduce_window_ms") is None or s.get("reduce_tail_ms") is None for s in ddp):
        bad("ddp steps without reduce_window_ms / reduce_tail_ms (recorded before the all-reduce timing existed)")
    try:
        layer_params(result)
    except (KeyError, TypeError, ValueError) as exc:
        bad(f"no layer size from total_params {result.get('total_params')} ({exc})")
    layers = spec.config["num_hidden_layers"]
    if any(not isinstance(s.get("active_block"), int) or not 0 <= s["active_block"] < layers for s in ddp):
        bad(f"active blocks outside the {layers} decoder layers: the block is not one layer")


def load_result(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanInputError(f"{path}: unreadable ({exc}); {EXPECTED}") from None
    check_result(result, path)
    return drop_compile_steps(result)


def drop_compile_steps(result: dict) -> dict:
    """Leave out, in every phase of every rank, the timed step indexes in which Dynamo compiled a graph on any of
    them (``new_graphs``, --compile-layers) and the step after each (where the other ranks wait for it at the next
    collective, a step later when the update overlaps): a one-time cost, not step noise (one such step of 1.2 s made a
    64-GPU straggler of it). Same indexes everywhere, so the phases stay aligned step by step; the count goes to
    ``compile_steps_dropped``."""
    warmup = result["warmup"]
    compiled = {i + after for rank in result["per_rank"] for phase in rank["phases"]
                for i, step in enumerate(phase["steps"]) if i >= warmup and (step.get("new_graphs") or 0) > 0
                for after in (0, 1)}
    for rank in result["per_rank"]:
        for phase in rank["phases"]:
            phase["steps"] = [step for i, step in enumerate(phase["steps"]) if i not in compiled]
    result["compile_steps_dropped"] = len(compiled)
    return result


def reduce_spans(result: dict) -> list[tuple[float, float]]:
    """(window, tail) ms per timed ddp step, of the rank whose span window + tail is shorter (it arrived last)."""
    per_rank = [timed_rounds(result, "ddp", rank) for rank in range(len(result["per_rank"]))]
    out = []
    for rounds in zip(*per_rank):  # one round on every rank
        for steps in zip(*rounds):  # step i on every rank
            last = min(steps, key=lambda s: s["reduce_window_ms"] + s["reduce_tail_ms"])
            out.append((last["reduce_window_ms"], last["reduce_tail_ms"]))
    return out


def bus_bandwidth_bound(result: dict) -> float:
    """GB/s: ring volume per GPU over the median span; a lower bound of the bus bandwidth (module docstring)."""
    span_ms = statistics.median(w + t for w, t in reduce_spans(result))
    return ring_factor(result["gpus"]) * gradient_bytes(result) / GB / (span_ms / 1000.0)


def single_residuals(result: dict) -> list[float]:
    """Rank 0's single-GPU step times minus the mean of the same step index over the R rounds (the same block trains
    at step i in every round, so the block-to-block spread drops out), times sqrt(R / (R - 1)): a residual from a mean
    fitted to the same R values keeps only (R - 1) / R of their variance."""
    out = []
    for steps in zip(*timed_rounds(result, "single", 0)):
        times = [s["ms"] for s in steps]
        mean, scale = statistics.fmean(times), (len(times) / (len(times) - 1)) ** 0.5
        out += [(t - mean) * scale for t in times]
    return out


def _max_weights(m: int, n: int) -> list[float]:
    """P(the k-th smallest of m values is the max of n draws with replacement), k = 1..m."""
    return [(k / m) ** n - ((k - 1) / m) ** n for k in range(1, m + 1)]


def expected_max_excess(pool: list[float], n: int) -> float:
    """E[max of n independent draws from pool] - E[one draw], exact for the empirical distribution."""
    ordered = sorted(pool)
    return sum(w * x for w, x in zip(_max_weights(len(ordered), n), ordered)) - statistics.fmean(ordered)


def straggler_ms(pool: list[float], n: int, resamples: int, seed: int) -> tuple[float, float, float]:
    """(estimate, 5 %, 95 %): expected_max_excess and its spread over `resamples` resamplings of the pool."""
    rng, weights = random.Random(seed), _max_weights(len(pool), n)
    draws = []
    for _ in range(resamples):
        sample = sorted(rng.choices(pool, k=len(pool)))
        draws.append(sum(w * x for w, x in zip(weights, sample)) - statistics.fmean(sample))
    draws.sort()
    return expected_max_excess(pool, n), draws[round(0.05 * (resamples - 1))], draws[round(0.95 * (resamples - 1))]


def allreduce_ms(grad_bytes: float, gpus: int, nvlink_gbs: float, net_gbs: float,
                 per_node: int) -> tuple[float, float, float]:
    """(ms, bytes sent per GPU over NVLink, over the network) of one all-reduce of grad_bytes on `gpus` GPUs: a ring
    in one node, hierarchical across nodes (module docstring)."""
    if gpus <= per_node:
        nvlink = ring_factor(gpus) * grad_bytes
        return nvlink / GB / nvlink_gbs * 1000.0, nvlink, 0.0
    if gpus % per_node:
        raise ValueError(f"{gpus} GPUs are not whole nodes of {per_node}")
    nvlink = ring_factor(per_node) * grad_bytes  # reduce-scatter + all-gather in the node
    net = ring_factor(gpus // per_node) * grad_bytes / per_node  # each GPU's shard across the nodes
    return (nvlink / GB / nvlink_gbs + net / GB / net_gbs) * 1000.0, nvlink, net


def setting_key(result: dict, folder: str = "") -> tuple:
    """What makes runs one setting; `folder` (--by-folder) keeps the machines (one folder each) apart."""
    return (result["model"], result["method"], result["gpus"], result["batch_per_gpu"], result["seq_len"],
            result["reduce_dtype"], compile_backend(result), result.get("cpu_affinity") == "split",
            in_flight_note(result) + checkpointing_note(result.get("checkpointing")) + overlap_note(result), folder)


def setting_label(key: tuple) -> str:
    model, method, _gpus, batch, seq, dtype, backend, split, in_flight, folder = key
    return (f"{model} {method}, batch {batch} x {seq} per GPU, {dtype} all-reduce{in_flight}, "
            f"{'layers compiled (' + backend + ')' if backend else 'eager layers'}{', CPUs split' if split else ''}"
            f"{', ' + folder if folder else ''}")


def _pooled_mean(results: list[dict], kind: str) -> float:
    """Mean step time of `kind` over every timed step of every round of every run (ddp: the slower rank)."""
    steps = []
    for r in results:
        ranks = [0] if kind == "single" else range(len(r["per_rank"]))
        for rounds in zip(*(timed_rounds(r, kind, rank) for rank in ranks)):
            steps += [max(s["ms"] for s in step) for step in zip(*rounds)]
    return statistics.fmean(steps)


def measure(results: list[dict]) -> dict:
    """The 2-GPU figures of one setting's runs."""
    spans = [span for r in results for span in reduce_spans(r)]
    single, ddp = _pooled_mean(results, "single"), _pooled_mean(results, "ddp")
    rounds = [throughput(r)["ratio_of_means"] for r in results]  # single / ddp of each round's mean step
    return {"runs": len(results), "gpus": results[0]["gpus"], "layer_params": layer_params(results[0]),
            "grad_bytes": gradient_bytes(results[0]), "single_ms": single, "ddp_ms": ddp,
            "window_ms": statistics.median(w for w, _ in spans), "tail_ms": statistics.median(t for _, t in spans),
            "span_ms": statistics.median(w + t for w, t in spans),
            "bound_gbs": max(bus_bandwidth_bound(r) for r in results),
            "exposed_ms": statistics.median(paired_excess(r, "ddp")["backward_min_ms"] for r in results),
            "noise_ms": statistics.fmean(noise_cost(r)["ms"] for r in results),
            "round_ratios": (min(b["min"] for b in rounds), max(b["max"] for b in rounds)),
            "pool": [x for r in results for x in single_residuals(r)],
            "compile_steps_dropped": sum(r.get("compile_steps_dropped", 0) for r in results)}


def plan_rows(m: dict, args, nvlink_gbs: float, counts: list[int] | None = None) -> list[dict]:
    """One row per N of `counts` (default args.gpus; --check asks for a check's N alone). The check row against the
    measurement: setting_markdown."""
    base_ms = allreduce_ms(m["grad_bytes"], m["gpus"], nvlink_gbs, args.internode_gbps / 8.0, args.gpus_per_node)[0]
    rows = []
    for n in args.gpus if counts is None else counts:
        ms, nvlink, net = allreduce_ms(m["grad_bytes"], n, nvlink_gbs, args.internode_gbps / 8.0, args.gpus_per_node)
        # what hid at the measured N stays hidden (per-GPU work); the all-reduce's extra time is exposed in full
        exposed = m["exposed_ms"] + max(0.0, ms - base_ms)
        straggler = straggler_ms(m["pool"], n, args.resamples, args.seed)
        step = m["single_ms"] + exposed + straggler[0]
        rows.append({"n": n, "nvlink": nvlink, "net": net, "allreduce_ms": ms, "exposed_ms": exposed,
                     "straggler": straggler, "step_ms": step, "efficiency": m["single_ms"] / step})
    return rows


def _gb(nvlink: float, net: float) -> str:
    return f"{nvlink / GB:.3f} GB NVLink" + (f" + {net / GB:.3f} GB network" if net else "")


def setting_markdown(label: str, names: list[str], m: dict, rows: list[dict]) -> list[str]:
    lines = [f"### {label}", "",
             f"Measured on {m['gpus']} GPUs ({m['runs']} run(s): {', '.join(names)}): one layer = "
             f"{m['layer_params']:,} parameters, {m['grad_bytes'] / GB:.3f} GB per all-reduce; mean step "
             f"{m['single_ms']:.1f} ms alone, {m['ddp_ms']:.1f} ms under ddp; all-reduce span (rank that arrived "
             f"last, median) {m['span_ms']:.2f} ms = window {m['window_ms']:.2f} + tail {m['tail_ms']:.2f} ms "
             f"({m['tail_ms'] / m['span_ms']:.0%} of the span after the backward's own work; bus bandwidth bound of "
             f"these runs {m['bound_gbs']:.0f} GB/s); paired backward excess (exposed) {m['exposed_ms']:.2f} ms; "
             f"noise cost {m['noise_ms']:.1f} ms; {len(m['pool'])} single-GPU step residuals"
             + (f"; {m['compile_steps_dropped']} step index(es) left out, a graph compiled in them or the step before"
                if m.get("compile_steps_dropped") else "") + ".", "",
             "| N | sent per GPU per step | all-reduce ms | exposed ms | straggler ms [5-95 %] | predicted step ms | "
             "predicted efficiency | predicted speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        est, low, high = r["straggler"]
        lines.append(f"| {r['n']} | {_gb(r['nvlink'], r['net'])} | {r['allreduce_ms']:.2f} | {r['exposed_ms']:.2f} | "
                     f"{est:.1f} [{low:.1f}-{high:.1f}] | {r['step_ms']:.1f} | {r['efficiency']:.3f} | "
                     f"{r['n'] * r['efficiency']:.2f}x |")
    measured = m["single_ms"] / m["ddp_ms"]
    predicted = next((r for r in rows if r["n"] == m["gpus"]), None)
    lines.append(f"| check: {m['gpus']} measured | {m['grad_bytes'] * ring_factor(m['gpus']) / GB:.3f} GB | "
                 f"span {m['span_ms']:.2f} | {m['exposed_ms']:.2f} | ddp - single {m['ddp_ms'] - m['single_ms']:.1f} "
                 f"(noise cost {m['noise_ms']:.1f}) | {m['ddp_ms']:.1f} | {measured:.3f} (rounds "
                 f"{m['round_ratios'][0]:.3f}-{m['round_ratios'][1]:.3f}) | {m['gpus'] * measured:.2f}x |")
    if predicted:
        lines += ["", f"Check: predicted {m['gpus']}-GPU efficiency {predicted['efficiency']:.3f} against "
                      f"{measured:.3f} measured ({predicted['efficiency'] - measured:+.3f}); straggler "
                      f"{predicted['straggler'][0]:.1f} ms against the noise cost {m['noise_ms']:.1f} ms."]
    return lines + [""]


def _order(key: tuple) -> tuple:
    """Tables in reading order: per model and batch, eager before compiled, fp32 before bf16, OS placement first."""
    model, method, gpus, batch, seq, dtype, backend, split, in_flight, folder = key
    return model, method, gpus, batch, seq, backend or "", dtype != "fp32", split, in_flight, folder


def _short(path: str) -> str:
    return f"{Path(path).parent.name}/{Path(path).name}"


def _devices(results: dict[str, dict]) -> str:
    return "; ".join(sorted({f"{r['gpus']} x {r.get('environment', {}).get('device', '?')} "
                             f"(NCCL {r.get('environment', {}).get('nccl', '?')})" for r in results.values()}))


def header_markdown(results: dict[str, dict], args, argv: list[str], nvlink_gbs: float, best: str,
                    checks: dict[str, dict]) -> list[str]:
    """What generated the plan, what it measured, what it assumed (each assumption by its parameter)."""
    folders = ", ".join(sorted({str(Path(p).parent) for p in results}))
    checked = (f" Checks (--check; not used for fitting, only compared with the prediction in the last section): "
               f"{', '.join(_short(p) for p in checks)}; device {_devices(checks)}." if checks else "")
    return ["# BAdam data parallelism: all-reduce per step and expected efficiency on N GPUs (issue 18)", "",
            "Generated by (the model, its formulas and why: the docstring of benchmarks/ddp_scaling_plan.py):", "",
            "```bash", f"python benchmarks/ddp_scaling_plan.py {shlex.join(argv)}", "```", "",
            f"**Measured** (read from the JSONs): folders {folders}; device {_devices(results)}"
            f"{', ' + args.interconnect if args.interconnect else ''}. Taken from them: the step times alone and "
            "under ddp, the all-reduce span (window + tail), the paired backward excess, the single-GPU step noise. "
            + ("One table per folder (machine) and setting." if args.by_folder else
               "A setting pools its runs from every folder given (lent machines differ): each run's step noise is "
               "taken within the run, so machine offsets stay out of it; the means and the check mix the machines "
               "(--by-folder keeps them apart).") + checked,
            "", "**Assumed** (command-line parameters, not measured):",
            f"- NVLink bus bandwidth {nvlink_gbs:.0f} GB/s: " + (
                "--nvlink-gbs" if args.nvlink_gbs else
                f"the tightest MEASURED lower bound ({_short(best)}; the link may be faster)") +
            f", ASSUMED the same at every N in one node of --gpus-per-node {args.gpus_per_node} GPUs (NVSwitch "
            "gives every GPU the same bandwidth); ring all-reduce in the node.",
            f"- Network {args.internode_gbps:g} Gb/s = {args.internode_gbps / 8:g} GB/s per GPU (--internode-gbps; "
            "default: one 400 Gb/s InfiniBand NIC per GPU at line rate); hierarchical all-reduce across nodes, the "
            "in-node and the network phases one after the other.",
            "- Overlap: the backward time the all-reduce hides behind at 2 GPUs is per-GPU work, the same at N; the "
            "all-reduce's extra time over 2 GPUs is exposed in full.",
            "- Stragglers: every rank's step noise independent and distributed like GPU 0's alone (no contention "
            "between the processes of one host beyond what 2 GPUs show).",
            f"- Weak scaling: the per-GPU batch and compute do not change with N. Straggler intervals: "
            f"{args.resamples} resamplings (--resamples), seed {args.seed} (--seed).", ""]


def group_settings(results: dict[str, dict], args) -> dict[tuple, list[str]]:
    """The result paths of each setting (setting_key; with --by-folder also per folder, i.e. lent machine)."""
    groups: dict[tuple, list[str]] = {}
    for path, r in results.items():
        groups.setdefault(setting_key(r, Path(path).parent.name if args.by_folder else ""), []).append(path)
    return groups


def check_entries(checks: dict[str, dict], plans: dict[tuple, tuple], args, nvlink_gbs: float) -> list[dict]:
    """checks_markdown's entries: the check runs grouped into settings as the inputs are, each set against every
    input setting that matches it but for the GPU count and the folder (match_key; plans: key -> (paths, measure))."""
    groups = group_settings(checks, args)
    entries = []
    for key in sorted(groups, key=_order):
        m = measure([checks[p] for p in groups[key]])
        own = expected_max_excess(m["pool"], m["gpus"])
        base = {"label": setting_label(key), "files": [_short(p) for p in groups[key]]}
        fits = [k for k in sorted(plans, key=_order) if match_key(k) == match_key(key)]
        if not fits:
            entries.append({**base, "check": compare(m, None, None, own),
                            "why": "no input run of this setting (at any GPU count)"})
        for plan_key in fits:
            paths, plan = plans[plan_key]
            try:  # the prediction at the check's N, whether or not --gpus lists it
                row = plan_rows(plan, args, nvlink_gbs, [m["gpus"]])[0]
            except ValueError as exc:  # N above --gpus-per-node and not whole nodes: no all-reduce model for it
                entries.append({**base, "check": compare(m, None, None, own), "why": f"{exc} (--gpus-per-node)"})
                continue
            entries.append({**base, "check": compare(m, plan, row, own), "plan_label": setting_label(plan_key),
                            "plan_runs": len(paths), "plan_gpus": plan["gpus"]})
    return entries


def plan_markdown(paths: list[str], args, argv: list[str], check_paths: list[str] = ()) -> list[str]:
    fitted = {Path(p).resolve() for p in paths}
    for path in check_paths:  # a run that fits the plan cannot also check it
        if Path(path).resolve() in fitted:
            raise PlanInputError(f"{path}: given both as an input and with --check; a check run must not be fitted")
    results = {path: load_result(path) for path in paths}
    checks = {path: load_result(path) for path in check_paths}
    bounds = {path: bus_bandwidth_bound(r) for path, r in results.items()}
    best = max(bounds, key=bounds.get)  # each run bounds the bandwidth from below: the largest bound is the tightest
    nvlink_gbs = args.nvlink_gbs or bounds[best]
    settings = group_settings(results, args)
    plans = []
    for key in sorted(settings, key=_order):
        m = measure([results[p] for p in settings[key]])
        plans.append((key, m, plan_rows(m, args, nvlink_gbs)))
    lines = header_markdown(results, args, argv, nvlink_gbs, best, checks)
    lines += ["Predicted efficiency (speed-up) per setting; measured: the 2-GPU runs, mean single step / mean ddp "
              "step:", "", "| setting | measured | " + " | ".join(f"{n} GPUs" for n in args.gpus) + " |",
              "|---|---|" + "---|" * len(args.gpus)]
    for key, m, rows in plans:
        measured = m["single_ms"] / m["ddp_ms"]
        lines.append(f"| {setting_label(key)} | N={m['gpus']}: {measured:.3f} ({m['gpus'] * measured:.2f}x) | " +
                     " | ".join(f"{r['efficiency']:.3f} ({r['n'] * r['efficiency']:.2f}x)" for r in rows) + " |")
    lines.append("")
    for key, m, rows in plans:
        lines += setting_markdown(setting_label(key), [_short(p) for p in settings[key]], m, rows)
    if checks:
        lines += checks_markdown(check_entries(checks, {key: (settings[key], m) for key, m, _ in plans}, args,
                                               nvlink_gbs))
    return lines


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result JSONs of benchmarks/multi_gpu.py --mode ddp --compare-single R")
    p.add_argument("--gpus", type=int, nargs="+", default=[2, 8, 64], help="GPU counts to plan for")
    p.add_argument("--gpus-per-node", type=int, default=8, help="ASSUMPTION: GPUs per node (NVSwitch inside)")
    p.add_argument("--internode-gbps", type=float, default=400.0,
                   help="ASSUMPTION: network bandwidth per GPU in Gb/s (default: one 400 Gb/s InfiniBand NIC per GPU)")
    p.add_argument("--nvlink-gbs", type=float, default=None,
                   help="ASSUMPTION replacing the measured bound: NVLink all-reduce bus bandwidth in GB/s")
    p.add_argument("--interconnect", default="", help="how the measured GPUs were linked (the JSONs do not record it)")
    p.add_argument("--resamples", type=int, default=400, help="resamplings for the straggler interval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--by-folder", action="store_true",
                   help="one table per folder and setting (each folder one lent machine) instead of pooling them")
    p.add_argument("--check", nargs="+", default=[], metavar="RESULT",
                   help="results at another GPU count, not fitted: compared with the plan's prediction for their N")
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    if min(args.gpus) < 2 or min(args.gpus_per_node, args.resamples) < 1 or args.internode_gbps <= 0 or \
            (args.nvlink_gbs is not None and args.nvlink_gbs <= 0):
        p.error("GPU counts must be >= 2, --gpus-per-node and --resamples >= 1, bandwidths > 0")
    if any(n > args.gpus_per_node and n % args.gpus_per_node for n in args.gpus):
        p.error(f"GPU counts above --gpus-per-node {args.gpus_per_node} must be whole nodes")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        text = "\n".join(plan_markdown(args.results, args, argv, args.check)) + "\n"
    except PlanInputError as exc:  # one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
