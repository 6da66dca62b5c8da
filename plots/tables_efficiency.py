"""Memory and time tables: T1 (analytic memory), T2/T12 (memory split), T3/T13 (time per epoch), T4/T14 (backward
time by scheme). Paper-scale sections compare with the paper; other scales get sections of their own."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from experiments.memory_model import PAPER_METHODS, decoder_parameters, paper_formula  # torch-free
from experiments.repeats import band, format_band, ratio_band, scaled_band, split_repeat  # torch-free
from plots import mapping
from plots.paper import PaperCell, paper_cell
from plots.runs import Run
from plots.tables import (NO_RUN, NOT_APPLICABLE, NOT_IN_PAPER, Section, Table, add_compared, paper_display,
                          status_marker)

GB = 1e9  # the paper's GB: 16.1 GB of Llama 3-8B weights = 8.03e9 parameters x 2 bytes
ALPACA_GPT4_EXAMPLES = 52002  # rows of alpaca_gpt4_data.json (GPT-4-LLM); the paper's instruction-tuning set
DEFAULT_T1_MODELS = ("llama3-8b", "llama2-7b", "llama3-70b")
T1_METHODS = PAPER_METHODS
MEMORY_TABLES = {"llama3-8b": "T2", "llama2-7b": "T12"}
TIME_TABLES = {"llama3-8b": "T3", "llama2-7b": "T13"}
BACKWARD_TABLES = {"llama3-8b": "T4", "llama2-7b": "T14"}


# --- T1: analytic memory -------------------------------------------------------------------------------------

def analytic_memory_gb(method: str, params: int, layers: int, hidden: int) -> tuple[str, float]:
    """(formula, GB) of the paper's Table 1 (experiments/memory_model.py, the model shared with the benchmarks)."""
    estimate = paper_formula(method, params, layers, hidden)
    return estimate.formula, estimate.bytes / GB


def model_configs(extra: dict[str, Path] | None = None) -> dict[str, dict]:
    """Config numbers of the paper's models (experiments/model_configs.py, from their published config.json)
    plus any `name -> config.json` given by the user."""
    from experiments.model_configs import RANDOM_MODELS  # plain data, no torch import

    configs = {name: dict(RANDOM_MODELS[name].config) for name in DEFAULT_T1_MODELS}
    for name, path in (extra or {}).items():
        try:
            configs[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--model-config {name}={path}: cannot read a config.json ({exc})") from exc
    return configs


def _peak_gb(run: Run | None):
    if run is None:
        return NO_RUN
    if not run.ok:
        return status_marker(run.status)
    value = run.memory_bytes("peak_reserved")
    return value / GB if value is not None else "not measured"


def build_t1(doc: dict, runs: list[Run], configs: dict[str, dict]) -> Table:
    memory_runs = mapping.runs_for(runs, "memory")
    by_cell = mapping.latest_by(memory_runs, lambda r: (mapping.scale_of(r, needs_trained_weights=False).key,
                                                       mapping.row_label(r, with_lora_rank=True)))
    sections = []
    for name, cfg in configs.items():
        params = decoder_parameters(cfg)
        rows = []
        for method in T1_METHODS:
            formula, gb = analytic_memory_gb(method, params, cfg["num_hidden_layers"], cfg["hidden_size"])
            run = by_cell.get((name, method))
            measured = _peak_gb(run)
            paper_total = paper_cell(doc, MEMORY_TABLES[name], "total", method=method) \
                if name in MEMORY_TABLES else None
            rows.append({
                "method": method, "M (B params)": params / 1e9, "formula (paper Table 1)": formula,
                "analytic GB": gb, "measured peak GB": measured,
                "measured / analytic": measured / gb if isinstance(measured, float) else NOT_APPLICABLE,
                "paper measured GB": paper_display(paper_total),
                "device": run.device_name if run is not None else NOT_APPLICABLE,
            })
        heading = (f"Paper scale: {mapping.PAPER_MODELS[name]}" if name in mapping.PAPER_MODELS
                   else f"Other scale: {name} (formulas only; not a paper row)")
        sections.append(Section(heading, pd.DataFrame(rows)))
    caption = ("Analytic memory of Table 1 (weights, gradients and optimizer states only; M = parameters in "
               "billions counted from each config: q/k/v/o, 3 MLP matrices, 2 norms per layer, embeddings, final "
               "norm and an untied LM head; D = transformer layers; LoRA's m = hidden size, as the paper's formula "
               "assumes square matrices). 'measured peak GB' = peak reserved CUDA memory of the matching run in "
               "results/paper_memory_*/ (10^9 bytes); it also holds activations, so it exceeds the formula. "
               "'paper measured GB' = total of the paper's Table 2 / Table 12 (RTX3090), for reference.")
    return Table("T1", "analytic_memory", "Analytic memory per method (paper Table 1) beside measured peaks", caption,
                 sections)


# --- T2 / T12: memory split --------------------------------------------------------------------------------

_SPLIT = (("parameters", "parameters"), ("gradients", "gradients"), ("optimizer states", "optimizer_states"))


def _memory_row(run: Run | None) -> dict:
    """Our GB per part, or the marker for a missing / failed run."""
    if run is None or not run.ok:
        marker = NO_RUN if run is None else status_marker(run.status)
        return {label: marker for label in ("parameters", "gradients", "optimizer states", "total", "peak allocated")}
    row = {}
    for label, part in _SPLIT:
        value = run.memory_bytes(part)
        row[label] = value / GB if value is not None else "not measured"
    for label, part in (("total", "peak_reserved"), ("peak allocated", "peak_allocated")):
        value = run.memory_bytes(part)
        row[label] = value / GB if value is not None else "not measured"
    return row


def build_memory_split(doc: dict, runs: list[Run], model: str) -> Table:
    table_id = MEMORY_TABLES[model]
    memory_runs = mapping.runs_for(runs, "memory")
    return _paper_and_other(
        doc, table_id, model, memory_runs, key=lambda r: mapping.row_label(r, with_lora_rank=True),
        paper_rows=[rec["method"] for rec in doc["tables"][table_id]["records"]],
        measure=_memory_row, compared=(("parameters", "parameters"), ("gradients", "gradients"),
                                       ("optimizer states", "optimizer_states"), ("total", "total")),
        extra=("peak allocated",), slug=f"memory_split_{model.replace('-', '_')}",
        title=f"Memory split per method, {mapping.PAPER_MODELS[model]} (paper Table {table_id[1:]})",
        caption=("GB = 10^9 bytes. Parameters, gradients and optimizer states (fp32 master copies included, as in "
                 "the paper) are the harness's split at the peak step; 'total' = peak reserved CUDA memory, "
                 "compared with the paper's measured total; 'peak allocated' = peak of live tensors. The paper "
                 "measured on one RTX3090 (seq. length 728); our device is in the 'device' column."),
        include_other=model == "llama3-8b")


# --- repeated runs (the benchmark protocol, experiments/repeats.py) ---------------------------------------------

def repeats_by_row(runs: list[Run], key) -> dict[str, dict[int, Run]]:
    """Per row: the repeats of its configuration (runs named <name>-rep<i>, benchmarks/time_protocol.py) from the
    group holding the most of them (the latest run when a repeat index appears twice); a row without repeats gets
    its latest single run under index 0."""
    repeated: dict[str, dict[tuple[str, str], dict[int, Run]]] = {}
    single: list[Run] = []
    for run in sorted(runs, key=lambda r: r.date):
        label = key(run)
        if label is None:
            continue
        base, index = split_repeat(run.name)
        if index is None:
            single.append(run)
        else:
            repeated.setdefault(label, {}).setdefault((run.group, base), {})[index] = run
    out = {label: {0: run} for label, run in mapping.latest_by(single, key).items()}
    for label, by_config in repeated.items():
        out[label] = max(by_config.values(), key=lambda reps: (len(reps), max(r.date for r in reps.values())))
    return out


def _ok(runs: dict[int, Run] | None) -> dict[int, Run]:
    return {i: r for i, r in (runs or {}).items() if r.ok}


def _marker(runs: dict[int, Run] | None) -> str:
    if not runs:
        return NO_RUN
    return status_marker(max(runs.values(), key=lambda r: r.date).status)


def _per_repeat(runs: dict[int, Run], value) -> dict[int, float]:
    out = {}
    for index, run in runs.items():
        v = value(run)
        if isinstance(v, (int, float)):
            out[index] = float(v)
    return out


def _ours_and_ratio(values: dict[int, float], paper: PaperCell | None):
    """(median of our repeats, the paper's cell, ours / paper: a band when there are repeats)."""
    ours = band(values.values())
    paper_shown = paper_display(paper)
    if ours is None:
        return "not measured", paper_shown, NOT_APPLICABLE
    if paper is None or paper.value in (None, 0):
        return ours.median, paper_shown, NOT_APPLICABLE
    ratio = scaled_band(values.values(), paper.value)
    return ours.median, paper_shown, ratio.median if ratio.n == 1 else format_band(ratio)


# --- T3 / T13: time per epoch ------------------------------------------------------------------------------

# The paper's LoRA baseline (the LLaMA-Factory copy in Ledzy/BAdam): dropout 0.1, 16-bit adapters with fp32 masters
# (what its Table 2 LoRA memory implies; baselines/lora.py); other settings are shown as variants of the row.
PAPER_LORA = {"adapter_dtype": "bf16", "dropout": 0.1}


def norm_pass(run: Run) -> bool:
    """LOMO with clipping runs a gradient-norm backward pass before the one that updates."""
    described = ((run.summary.get("method_info") or {}).get("last_describe") or {}).get("norm_pass")
    if described is not None:
        return bool(described)
    clip = run.train.get("max_grad_norm", 1.0)
    return clip is not None and float(clip) > 0


def time_row_label(run: Run) -> str:
    """The row of a time table: the method (LoRA with its rank), and the setting where it is not the paper's."""
    label = mapping.row_label(run, with_lora_rank=True)
    notes = []
    if run.method in ("lomo", "adalomo") and norm_pass(run):
        notes.append("norm pass")
    if run.method == "lora":
        options = run.method_options
        dtype = options.get("adapter_dtype", "fp32")
        if dtype != PAPER_LORA["adapter_dtype"]:
            notes.append(f"{dtype} adapters")
        dropout = float(options.get("dropout", 0.1))
        if dropout != PAPER_LORA["dropout"]:
            notes.append(f"dropout {dropout:g}")
    return f"{label} ({', '.join(notes)})" if notes else label


def _epoch_steps(run: Run, examples: int) -> int:
    return math.ceil(examples / (int(run.train.get("batch_size", 1)) * int(run.train.get("grad_accum", 1))))


TIME_PHASES = (("forward (h)", "forward", 3.6e6), ("backward (h)", "backward", 3.6e6), ("update (s)", "update", 1e3))


def _time_row(runs, rows, examples: int, doc: dict, table_id: str | None, label: str, reference: str) -> dict:
    ok = _ok(runs)
    row = {}
    fused = any((r.summary.get("method_info") or {}).get("fused_backward") for r in ok.values())
    for name, phase, unit in TIME_PHASES:
        paper = paper_cell(doc, table_id, phase, method=label) if table_id else None
        values = _per_repeat(ok, lambda r: None if r.timing_ms(phase) is None
                             else r.timing_ms(phase) * _epoch_steps(r, examples) / unit)
        if not ok:
            cells = _marker(runs), paper_display(paper), NOT_APPLICABLE
        elif name == "update (s)" and fused:
            cells = NOT_APPLICABLE, paper_display(paper), NOT_APPLICABLE
        else:
            cells = _ours_and_ratio(values, paper)
        if table_id:
            row[name], row[f"{name} (paper)"], row[f"{name} ratio"] = cells
        else:
            row[name] = cells[0]
    reference_runs = _ok(rows.get(reference))
    row[f"step / {reference}"] = _step_ratio(ok, reference_runs) if label != reference else (1.0 if ok else NO_RUN)
    if table_id:
        row[f"step / {reference} (paper)"] = _paper_step_ratio(doc, table_id, label, reference)
    if not ok:
        row[f"step / {reference}"] = _marker(runs)
        return row
    mfu = band(_per_repeat(ok, lambda r: (r.summary.get("compute") or {}).get("mfu")).values())
    rate = band(_per_repeat(ok, lambda r: (r.summary.get("compute") or {}).get("model_tflops_per_s")).values())
    flops = band(_per_repeat(ok, lambda r: (r.summary.get("compute") or {}).get("model_flops_per_step")).values())
    row["model TFLOP/step"] = flops.median / 1e12 if flops else "not measured"
    row["MFU %"] = mfu.median * 100 if mfu else "not measured"
    row["model TFLOP/s"] = rate.median if rate else "not measured"
    row["repeats"] = len(ok) if 0 not in ok else 1
    row["steps/epoch"] = _epoch_steps(next(iter(ok.values())), examples)
    return row


def _step_ratio(ok: dict[int, Run], reference: dict[int, Run]):
    """Step time over the reference row's: per repeat when both have repeats (a band), else of the medians; only
    between runs on the same device."""
    if not ok or not reference:
        return NO_RUN
    ours_devices, ref_devices = ({r.device_name for r in runs.values()} for runs in (ok, reference))
    if ours_devices != ref_devices:
        return f"other device ({', '.join(sorted(ours_devices))})"
    steps, reference_steps = (_per_repeat(runs, lambda r: r.timing_ms("step")) for runs in (ok, reference))
    paired = ratio_band(steps, reference_steps)
    if paired is None and steps and reference_steps:  # no common repeat: ratio of medians, without a band
        paired = band([band(steps.values()).median / band(reference_steps.values()).median])
    if paired is None:
        return "not measured"
    return paired.median if paired.n == 1 else format_band(paired)


def _paper_step_ratio(doc: dict, table_id: str, label: str, reference: str):
    """The paper's (forward + backward + update) per epoch of this row over the reference row's."""
    def epoch_s(method):
        cells = [paper_cell(doc, table_id, field, method=method) for field in ("forward", "backward", "update")]
        if cells[0] is None or cells[1] is None or cells[0].value is None or cells[1].value is None:
            return None
        update = cells[2].value if cells[2] is not None and cells[2].value is not None else 0.0
        return (cells[0].value + cells[1].value) * 3600 + update

    ours, ref = epoch_s(label), epoch_s(reference)
    return NOT_IN_PAPER if ours is None or not ref else ours / ref


def build_time(doc: dict, runs: list[Run], model: str, examples: int = ALPACA_GPT4_EXAMPLES) -> Table:
    table_id = TIME_TABLES[model]
    reference = "badam"
    return _paper_and_other(
        doc, table_id, model, mapping.runs_for(runs, "time"), select=lambda rs: repeats_by_row(rs, time_row_label),
        paper_rows=[rec["method"] for rec in doc["tables"][table_id]["records"]],
        measure=lambda rr, rows, label, paper: _time_row(rr, rows, examples, doc, table_id if paper else None,
                                                         label, reference),
        slug=f"time_per_epoch_{model.replace('-', '_')}",
        title=f"Time per epoch on forward, backward and update, {mapping.PAPER_MODELS[model]} "
              f"(paper Table {table_id[1:]})",
        caption=(f"Derived, not timed over a whole epoch: epoch time = median per-optimizer-step time of a run "
                 f"(summary.json timing_ms, warm-up steps excluded) x steps per epoch, with steps per epoch = "
                 f"ceil(N / (batch_size x grad_accum)) and N = {examples} examples (Alpaca-GPT4). Backward includes "
                 f"the gradient-checkpointing re-forward, as in the paper. BAdam's per-step backward depends on the "
                 f"active block's depth; its median over a run that visits every block estimates the mean. The "
                 f"paper averaged 3 real epochs on one RTX3090. Repeats: rows measured under the benchmark "
                 f"protocol (benchmarks/time_protocol.py: configurations alternating over repeats in one session) "
                 f"show the median over repeats; every ratio is then the median of the per-repeat ratios with its "
                 f"[min-max] band, and reads '≈ 1' when the band holds 1 ('step / {reference}' pairs each repeat "
                 f"with the {reference} run of the same repeat). model TFLOP/step = the median optimizer step's "
                 f"model FLOPs (BAdam's follows the active block: the median over a block-epoch); MFU % = model "
                 f"FLOPs / step time / the device's dense "
                 f"bf16 peak (summary.json compute block, experiments/flops.py: 6 N tokens for a full backward, the "
                 f"method's own count where the backward is partial, LOMO's norm pass as a second backward); the "
                 f"RTX3090's peak is 71 TFLOP/s, an H100's 989. Paper settings: LOMO without a gradient-norm pass "
                 f"(its backward per step, 0.51 s, is below the paper's own full backward pass of Table 4, 0.64 s), "
                 f"LoRA with 16-bit adapters and fp32 masters, dropout 0.1; other settings are labelled variants. "
                 f"LoRA rows carry their rank; the paper's Table 3 LoRA row prints none and is filed as rank 8 "
                 f"(rank 100 does not fit its GPU; plots/paper_values.json)."),
        include_other=model == "llama3-8b")


# --- T4 / T14: backward time by scheme ---------------------------------------------------------------------

def _backward_row(runs, rows, doc: dict, table_id: str | None, label: str) -> dict:
    ok = _ok(runs)
    paper = paper_cell(doc, table_id, "backward", scheme=label) if table_id else None
    values = _per_repeat(ok, lambda r: None if r.timing_ms("backward") is None
                         else r.timing_ms("backward") / int(r.train.get("grad_accum", 1)) / 1e3)
    cells = _ours_and_ratio(values, paper) if ok else (_marker(runs), paper_display(paper), NOT_APPLICABLE)
    row = {"backward (s)": cells[0]}
    if table_id:
        row["backward (s) (paper)"], row["backward (s) ratio"] = cells[1:]
    if not ok:
        return row
    row["repeats"] = len(ok) if 0 not in ok else 1
    row["batch size"] = int(next(iter(ok.values())).train.get("batch_size", 1))
    return row


def build_backward(doc: dict, runs: list[Run], model: str) -> Table:
    table_id = BACKWARD_TABLES[model]
    return _paper_and_other(
        doc, table_id, model, mapping.runs_for(runs, "backward"),
        select=lambda rs: repeats_by_row(rs, mapping.backward_scheme), paper_rows=["all", "input", "output"],
        measure=lambda rr, rows, label, paper: _backward_row(rr, rows, doc, table_id if paper else None, label),
        row_name="scheme", slug=f"backward_by_scheme_{model.replace('-', '_')}",
        title=f"Backward time by scheme, {mapping.PAPER_MODELS[model]} (paper Table {table_id[1:]})",
        caption=("Median time of one backward pass (per micro-batch: the step's backward / grad_accum). Schemes: "
                 "'all' = a full-parameter method (gradients of every layer), 'input' / 'output' = BAdam with "
                 "switch_mode fixed on the first / last block. The paper averaged 100 passes on one RTX3090. Rows "
                 "with repeats (benchmarks/time_protocol.py) show the median over repeats and the ratio's "
                 "[min-max] band ('≈ 1' when it holds 1)."),
        include_other=model == "llama3-8b", digits=3)


# --- shared layout ---------------------------------------------------------------------------------------------

def _latest_single(runs: list[Run], key) -> dict[str, dict[int, Run]]:
    return {label: {0: run} for label, run in mapping.latest_by(runs, key).items()}


def _compared_measure(measure, compared, extra, doc, table_id, row_name):
    """A layout measure from a single-run measure and (ours, paper field) pairs (the memory tables)."""
    def layout_measure(runs, rows, label, paper):
        run = max(runs.values(), key=lambda r: r.date) if runs else None
        ours = measure(run)
        row = {}
        for ours_label, paper_field in compared:
            cell = paper_cell(doc, table_id, paper_field, **{row_name: label}) if paper else None
            if paper:
                add_compared(row, ours_label, ours.get(ours_label, NO_RUN), cell)
            else:
                row[ours_label] = ours.get(ours_label, NO_RUN)
        row.update({name: ours.get(name, NOT_APPLICABLE) for name in extra})
        return row
    return layout_measure


def _device(runs: dict[int, Run] | None):
    if not runs:
        return NOT_APPLICABLE
    return ", ".join(sorted({r.device_name for r in runs.values()}))


def _paper_and_other(doc, table_id, model, group_runs, *, paper_rows, slug, title, caption, include_other,
                     select=None, key=None, measure, compared=None, extra=(), row_name="method", digits=2) -> Table:
    """A paper-scale section (every paper row, 'no run' where none) and one section per other-scale model.
    select(runs) -> {row label: {repeat: run}} (default: the latest run per key); measure(runs, rows, label, paper)
    -> the row's cells; with `compared`, measure is a single-run measure compared field by field with the paper."""
    if select is None:
        select = lambda rs: _latest_single(rs, key)  # noqa: E731
    if compared is not None:
        measure = _compared_measure(measure, compared, extra, doc, table_id, row_name)
    by_scale: dict[str, list[Run]] = {}
    headings: dict[str, str] = {}
    for run in group_runs:
        scale = mapping.scale_of(run, needs_trained_weights=False)
        by_scale.setdefault(scale.key, []).append(run)
        headings[scale.key] = scale.heading
    sections = []
    paper_rows_runs = select(by_scale.get(model, []))
    rows = []
    for label in list(paper_rows) + sorted(set(paper_rows_runs) - set(paper_rows)):
        runs = paper_rows_runs.get(label)
        ours = measure(runs, paper_rows_runs, label, True)
        variants = sorted(k for k in paper_rows_runs if k.startswith(f"{label}-"))
        if runs is None and variants:  # e.g. the paper's unranked "lora" beside our lora-rank8 / lora-rank100 rows
            ours = {name: (f"see {' / '.join(variants)}" if not name.endswith(("(paper)", "ratio")) else value)
                    for name, value in ours.items()}
        rows.append({row_name: label, **ours, "device": _device(runs)})
    sections.append(Section(headings.get(model, f"Paper scale: {mapping.PAPER_MODELS[model]}"), _frame(rows)))
    if include_other:
        for scale_key in sorted(k for k in by_scale if k not in mapping.PAPER_MODELS):
            other = select(by_scale[scale_key])
            rows = [{row_name: label, **measure(runs, other, label, False), "device": _device(runs)}
                    for label, runs in sorted(other.items())]
            sections.append(Section(headings[scale_key], _frame(rows)))
    return Table(table_id, slug, title, caption, sections, digits=digits)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a frame; a cell a row does not have (a failed run has no MFU) is '—', never blank or NaN."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    device_last = [c for c in columns if c != "device"] + (["device"] if "device" in columns else [])
    return pd.DataFrame([{c: row.get(c, NOT_APPLICABLE) for c in device_last} for row in rows], columns=device_last)
