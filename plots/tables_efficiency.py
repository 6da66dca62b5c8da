"""Memory and time tables: T1 (analytic memory), T2/T12 (memory split), T3/T13 (time per epoch), T4/T14 (backward
time by scheme). Paper-scale sections compare with the paper; other scales get sections of their own."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from experiments.memory_model import PAPER_METHODS, decoder_parameters, paper_formula  # torch-free
from plots import mapping
from plots.paper import paper_cell
from plots.runs import Run
from plots.tables import NO_RUN, NOT_APPLICABLE, Section, Table, add_compared, paper_display, status_marker

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


# --- T3 / T13: time per epoch ------------------------------------------------------------------------------

def _time_row(run: Run | None, examples: int) -> dict:
    labels = ("forward (h)", "backward (h)", "update (s)")
    if run is None or not run.ok:
        marker = NO_RUN if run is None else status_marker(run.status)
        return {label: marker for label in labels}
    batch = int(run.train.get("batch_size", 1)) * int(run.train.get("grad_accum", 1))
    steps = math.ceil(examples / batch)
    fwd, bwd, upd = (run.timing_ms(p) for p in ("forward", "backward", "update"))
    fused = bool((run.summary.get("method_info") or {}).get("fused_backward"))
    return {"forward (h)": fwd * steps / 3.6e6 if fwd is not None else "not measured",
            "backward (h)": bwd * steps / 3.6e6 if bwd is not None else "not measured",
            "update (s)": NOT_APPLICABLE if fused else (upd * steps / 1e3 if upd is not None else "not measured"),
            "steps/epoch": steps}


def build_time(doc: dict, runs: list[Run], model: str, examples: int = ALPACA_GPT4_EXAMPLES) -> Table:
    table_id = TIME_TABLES[model]
    return _paper_and_other(
        doc, table_id, model, mapping.runs_for(runs, "time"), key=lambda r: mapping.row_label(r, with_lora_rank=True),
        paper_rows=[rec["method"] for rec in doc["tables"][table_id]["records"]],
        measure=lambda r: _time_row(r, examples),
        compared=(("forward (h)", "forward"), ("backward (h)", "backward"), ("update (s)", "update")),
        extra=("steps/epoch",), slug=f"time_per_epoch_{model.replace('-', '_')}",
        title=f"Time per epoch on forward, backward and update, {mapping.PAPER_MODELS[model]} "
              f"(paper Table {table_id[1:]})",
        caption=(f"Derived, not timed over a whole epoch: epoch time = median per-optimizer-step time of the run "
                 f"(summary.json timing_ms, warm-up steps excluded) x steps per epoch, with steps per epoch = "
                 f"ceil(N / (batch_size x grad_accum)) and N = {examples} examples (Alpaca-GPT4). Backward includes "
                 f"the gradient-checkpointing re-forward, as in the paper. BAdam's per-step backward depends on the "
                 f"active block's depth; its median over a run that visits every block estimates the mean. The "
                 f"paper averaged 3 real epochs on one RTX3090. LoRA rows carry their rank; the paper's Table 3 LoRA "
                 f"row prints none and is filed as rank 8 (rank 100 does not fit its GPU; plots/paper_values.json)."),
        include_other=model == "llama3-8b")


# --- T4 / T14: backward time by scheme ---------------------------------------------------------------------

def _backward_row(run: Run | None) -> dict:
    if run is None or not run.ok:
        return {"backward (s)": NO_RUN if run is None else status_marker(run.status)}
    bwd = run.timing_ms("backward")
    accum = int(run.train.get("grad_accum", 1))
    return {"backward (s)": bwd / accum / 1e3 if bwd is not None else "not measured",
            "batch size": int(run.train.get("batch_size", 1))}


def build_backward(doc: dict, runs: list[Run], model: str) -> Table:
    table_id = BACKWARD_TABLES[model]
    return _paper_and_other(
        doc, table_id, model, mapping.runs_for(runs, "backward"), key=mapping.backward_scheme,
        paper_rows=["all", "input", "output"], measure=_backward_row,
        compared=(("backward (s)", "backward"),), extra=("batch size",), row_name="scheme",
        slug=f"backward_by_scheme_{model.replace('-', '_')}",
        title=f"Backward time by scheme, {mapping.PAPER_MODELS[model]} (paper Table {table_id[1:]})",
        caption=("Median time of one backward pass (per micro-batch: the step's backward / grad_accum). Schemes: "
                 "'all' = a full-parameter method (gradients of every layer), 'input' / 'output' = BAdam with "
                 "switch_mode fixed on the first / last block. The paper averaged 100 passes on one RTX3090."),
        include_other=model == "llama3-8b", digits=3)


# --- shared layout ---------------------------------------------------------------------------------------------

def _paper_and_other(doc, table_id, model, group_runs, *, key, paper_rows, measure, compared, extra, slug, title,
                     caption, include_other, row_name="method", digits=2) -> Table:
    """A paper-scale section (every paper row, 'no run' where none) and one section per other-scale model."""
    by_scale: dict[str, list[Run]] = {}
    headings: dict[str, str] = {}
    for run in group_runs:
        scale = mapping.scale_of(run, needs_trained_weights=False)
        by_scale.setdefault(scale.key, []).append(run)
        headings[scale.key] = scale.heading
    sections = []
    paper_runs = mapping.latest_by(by_scale.get(model, []), key)
    rows = []
    for label in list(paper_rows) + sorted(set(paper_runs) - set(paper_rows)):
        run = paper_runs.get(label)
        ours = measure(run)
        variants = sorted(k for k in paper_runs if k.startswith(f"{label}-"))
        if run is None and variants:  # e.g. the paper's unranked "lora" beside our lora-rank8 / lora-rank100 rows
            ours = {name: f"see {' / '.join(variants)}" for name in ours}
        row = {row_name: label}
        for ours_label, paper_field in compared:
            add_compared(row, ours_label, ours.get(ours_label, NO_RUN),
                         paper_cell(doc, table_id, paper_field, **{row_name: label}))
        row.update({name: ours.get(name, NOT_APPLICABLE) for name in extra})
        row["device"] = run.device_name if run is not None else NOT_APPLICABLE
        rows.append(row)
    sections.append(Section(headings.get(model, f"Paper scale: {mapping.PAPER_MODELS[model]}"), pd.DataFrame(rows)))
    if include_other:
        for scale_key in sorted(k for k in by_scale if k not in mapping.PAPER_MODELS):
            other = mapping.latest_by(by_scale[scale_key], key)
            rows = [{row_name: label, **measure(run), "device": run.device_name}
                    for label, run in sorted(other.items())]
            sections.append(Section(headings[scale_key], pd.DataFrame(rows)))
    return Table(table_id, slug, title, caption, sections, digits=digits)
