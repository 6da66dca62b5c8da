"""How runs map to the paper's tables and figures (documented for users in results/README.md).

* Group: a run belongs to results/<group>/ (or summary["group"]). A table reads the groups whose name starts with
  its prefix in GROUP_PREFIXES, e.g. results/paper_memory_llama3_8b/... feeds Table 2.
* Scale: a run of one of the paper's models (PAPER_MODELS, recognised by name) goes under "Paper scale"; any other
  model goes under its own "Other scale" heading and is never compared with the paper's numbers. A random-init
  model ("random:llama3-8b") counts as paper scale only where weights do not matter (memory, time).
* Row: the method name from summary.json; LoRA carries its rank where the paper's row does ("lora-rank8").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from plots.runs import Run

GROUP_PREFIXES = {
    # paper_memtime_* groups hold runs measured once for both memory and time (profiles/paper-gpu-1.yaml)
    "memory": ("paper_memory", "paper_memtime"),  # T1 (measured column), T2 / T12
    "time": ("paper_time", "paper_memtime"),      # T3 / T13
    "backward": "paper_backward",  # T4 / T14
    "mtbench": "paper_mtbench",    # T5, F2 (loss curves); its seed-0 Adam / BAdam also feed F3 and F4 (select.py)
    "math": "paper_math",          # T6
    "superglue": "paper_superglue",  # T11
    # F2 (explained variance, effective rank): runs with eval/rank.json, in a group of their own or where the
    # profile's rank evaluator wrote it (the seed-0 runs of paper_mtbench_*)
    "rank": ("paper_rank", "paper_mtbench"),
    "bsgd": "ablation_bsgd",       # F3
    "order": "ablation_order",     # F4 (a)
    "k": "ablation_k",             # F4 (b)
    "lr_sweep": "lr_sweep",        # LR (learning rates chosen by each method's sweep)
}

PAPER_MODELS = {"llama3-8b": "Llama 3-8B", "llama2-7b": "Llama 2-7B", "llama3-70b": "Llama 3-70B",
                "roberta-large": "RoBERTa-large"}
# Names under which the paper's (base, not instruct) checkpoints are known; matched against the last path part.
_ALIASES = (
    (re.compile(r"^(meta-)?llama-?3-8b$"), "llama3-8b"),
    (re.compile(r"^llama-?2-7b(-hf)?$"), "llama2-7b"),
    (re.compile(r"^(meta-)?llama-?3-70b$"), "llama3-70b"),
    (re.compile(r"^roberta-large$"), "roberta-large"),
)


@dataclass(frozen=True)
class Scale:
    key: str        # a PAPER_MODELS key, or the run's model string
    paper: bool     # rows may be compared with the paper's numbers
    heading: str


def canonical_model(model: str) -> tuple[str | None, bool]:
    """(paper model key or None, random_init) for a summary's model string."""
    text = model.strip().lower()
    random_init = text.startswith("random:")
    if random_init:
        text = text.split(":", 1)[1]
    last = text.rstrip("/").rsplit("/", 1)[-1]
    for pattern, key in _ALIASES:
        if pattern.match(last):
            return key, random_init
    return None, random_init


def scale_of(run: Run, *, needs_trained_weights: bool) -> Scale:
    key, random_init = canonical_model(run.model)
    if key is not None and not (random_init and needs_trained_weights):
        suffix = " (random-init weights: memory and time do not depend on their values)" if random_init else ""
        return Scale(key, True, f"Paper scale: {PAPER_MODELS[key]}{suffix}")
    if random_init:
        return Scale(run.model, False, f"Other scale: {run.model} (random-init weights, not comparable to the paper)")
    return Scale(run.model, False, f"Other scale: {run.model} (not the paper's model, not comparable)")


def pick_model(runs: list[Run], preferred: str, *, needs_trained_weights: bool) -> tuple[str, list[Run], bool]:
    """(heading, runs of one model, is the paper's scale): the paper's `preferred` model if it has runs, else the
    model with the most runs (figures show one model each)."""
    by_key: dict[str, tuple[str, list[Run], bool]] = {}
    for run in runs:
        scale = scale_of(run, needs_trained_weights=needs_trained_weights)
        by_key.setdefault(scale.key, (scale.heading, [], scale.paper))[1].append(run)
    if not by_key:
        return f"Paper scale: {PAPER_MODELS[preferred]}", [], True
    if preferred in by_key:
        return by_key[preferred]
    return max(by_key.values(), key=lambda item: len(item[1]))


def by_scale(runs: list[Run], *, needs_trained_weights: bool = True) -> dict[str, tuple[str, list[Run]]]:
    """{scale key: (heading, runs)}."""
    out: dict[str, tuple[str, list[Run]]] = {}
    for run in runs:
        scale = scale_of(run, needs_trained_weights=needs_trained_weights)
        out.setdefault(scale.key, (scale.heading, []))[1].append(run)
    return out


def runs_for(runs: list[Run], purpose: str) -> list[Run]:
    if purpose not in GROUP_PREFIXES:
        raise KeyError(f"unknown purpose {purpose!r}; valid: {', '.join(GROUP_PREFIXES)}")
    prefix = GROUP_PREFIXES[purpose]  # a str or a tuple of str: str.startswith takes both
    return [r for r in runs if r.group.startswith(prefix)]


def row_label(run: Run, *, with_lora_rank: bool = False) -> str:
    if run.method == "lora" and with_lora_rank:
        rank = run.method_options.get("rank")
        return f"lora-rank{int(rank)}" if rank is not None else "lora"
    return run.method


def backward_scheme(run: Run) -> str | None:
    """T4's scheme of a run: "all" (a full-parameter method backpropagates through every layer), "input" /
    "output" (BAdam with switch_mode "fixed" on the first / last block); tags["backward_scheme"] wins."""
    if "backward_scheme" in run.tags:
        return str(run.tags["backward_scheme"])
    if run.method in ("adam", "adam_bf16", "sgd"):
        return "all"
    options = run.method_options
    if run.method in ("badam", "bsgd") and options.get("switch_mode") == "fixed":
        start = options.get("start_block")
        blocks = ((run.summary.get("method_info") or {}).get("last_describe") or {}).get("num_blocks")
        if start == 0:
            return "input"
        if start is not None and (start == -1 or (blocks is not None and start == blocks - 1)):
            return "output"
    return None


def latest_by(runs: list[Run], key) -> dict:
    """{key(run): run}, keeping the most recent run (environment.date) when several share a key."""
    out: dict = {}
    for run in sorted(runs, key=lambda r: r.date):
        k = key(run)
        if k is not None:
            out[k] = run
    return out
