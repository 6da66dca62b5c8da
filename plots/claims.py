"""One line per table or figure: which of the paper's claims hold at the scale of the runs, computed from them.

Every verdict is computed here from the same runs the table or figure shows (plots.select); nothing is typed in.
The criteria are stated in each line: "close" means within CLOSE_LOSS (relative) for losses, CLOSE_POINTS for
accuracies in percent, CLOSE_MTBENCH for MT-bench points; with two or more seeds on both sides the line adds the
seed noise of the difference (2 x its standard error), so a reader sees whether a gap is larger than the noise.
MT-bench scores carry the judge's own noise: each score is a mean over ~160 judgments with a standard error (one
seed: over its judgments; several: over the seeds), and a difference below 2 x the combined standard error
sqrt(SE_a² + SE_b²) is reported as "not separable by this judge" instead of a verdict. Math accuracies of a single
seed carry the benchmarks' item-sampling noise (binomial standard error over the items scored) and are reported
the same way ("not separable by the benchmarks' item sampling").
Where the runs are missing the line says so and names the claims it could not check.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable

from plots import mapping, select, timing
from plots.judges import agreement_text as judge_agreement
from plots.runs import PAPER_MATH_DATASETS, Run
from plots.seeds import MeanSE, MeanStd, SeedGroup, by_seed, summarize

CLOSE_LOSS = 0.02       # final eval loss: within 2% of the reference method's
CLOSE_POINTS = 2.0      # accuracy / SuperGLUE score: within 2 percentage points
CLOSE_MTBENCH = 0.25    # MT-bench (1-10 scale): within 0.25 points
JUDGE_NOISE = "this judge"
SAMPLING_NOISE = "the benchmarks' item sampling"
UNPARSEABLE_SHARE = 0.10  # named in the T5 line above this share of judgments without a rating
SUPERGLUE_NAMES = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "wsc": "WSC", "rte": "RTE", "multirc": "MultiRC",
                   "wic": "WiC"}
TUNED = "SuperGLUE, own best lr"   # T11's claims at each method's lr from a sweep (the others: the config's lr)
RANK_FRACTION = 0.8     # "BAdam's effective rank >= 0.8 x Adam's"
NAMES = {"adam": "Adam", "badam": "BAdam", "lora": "LoRA", "lomo": "LOMO", "galore": "GaLore", "sgd": "SGD",
         "bsgd": "BSGD", "base": "the base model"}


def name(method: str) -> str:
    return NAMES.get(method, method)


def _num(value: MeanStd | MeanSE) -> str:
    if isinstance(value, MeanSE):
        return value.short(3)
    return value.short(3) if value.std is not None else f"{value.mean:.4g}"


def _noise(a: MeanStd | MeanSE, b: MeanStd | MeanSE) -> str:
    if not (isinstance(a, MeanStd) and isinstance(b, MeanStd)) or a.std is None or b.std is None:
        return ""
    return f", seed noise 2·SE {2 * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n):.2g}"


def standard_error(value: MeanStd | MeanSE) -> float | None:
    """The standard error of a value's mean: a MeanSE's own, a MeanStd's std / sqrt(n) over its seeds."""
    if isinstance(value, MeanSE):
        return value.se
    return None if value.std is None else value.std / math.sqrt(value.n)


def _not_separable(a: MeanStd | MeanSE, b: MeanStd | MeanSE, noise: str) -> str | None:
    """'not separable by <noise> (difference +0.025, 2·SE 0.76; ...)' when |a - b| < 2 x sqrt(SE_a² + SE_b²);
    `noise` names where the standard errors come from ('this judge', 'the benchmarks' item sampling')."""
    se_a, se_b = standard_error(a), standard_error(b)
    if se_a is None or se_b is None:
        return None
    two_se, diff = 2 * math.hypot(se_a, se_b), a.mean - b.mean
    if abs(diff) >= two_se:
        return None
    return f"not separable by {noise} (difference {diff:+.3g}, 2·SE {two_se:.2g}; {_num(a)} vs {_num(b)})"


def close(values: dict[str, MeanStd | MeanSE | None], method: str, reference: str, what: str, *,
          tolerance: float, relative: bool, noise: str | None = None) -> str:
    """'BAdam within 2% of Adam (final eval loss): holds (0.995 vs 0.990, +0.5%)'; an absolute tolerance is in
    points of the quantity ('within 2 points'). noise (e.g. 'this judge'): values that carry a standard error and
    differ by less than twice it are 'not separable by <noise>' instead of a verdict (module docstring)."""
    bound = f"{tolerance:.0%}" if relative else f"{tolerance:g} points"
    claim = f"{name(method)} within {bound} of {name(reference)} ({what})"
    a, b = values.get(method), values.get(reference)
    if a is None or b is None:
        missing = " and ".join(name(m) for m in (method, reference) if values.get(m) is None)
        return f"{claim}: not checked, no {missing} run"
    if noise and (inseparable := _not_separable(a, b, noise)):
        return f"{claim}: {inseparable}"
    diff = a.mean - b.mean
    limit = tolerance * abs(b.mean) if relative else tolerance
    verdict = "holds" if abs(diff) <= limit else "does not hold"
    shown = f"{diff / b.mean:+.1%}" if relative and b.mean else f"{diff:+.3g}"
    return f"{claim}: {verdict} ({_num(a)} vs {_num(b)}, {shown}{_noise(a, b)})"


def better(values: dict[str, MeanStd | MeanSE | None], method: str, other: str, what: str, *,
           lower_is_better: bool, noise: str | None = None) -> str:
    """'BAdam below LoRA (final eval loss): does not hold (0.995 vs 0.878)'; noise: as in close()."""
    claim = f"{name(method)} {'below' if lower_is_better else 'at or above'} {name(other)} ({what})"
    a, b = values.get(method), values.get(other)
    if a is None or b is None:
        missing = " and ".join(name(m) for m in (method, other) if values.get(m) is None)
        return f"{claim}: not checked, no {missing} run"
    if noise and (inseparable := _not_separable(a, b, noise)):
        return f"{claim}: {inseparable}"
    holds = a.mean < b.mean if lower_is_better else a.mean >= b.mean
    return f"{claim}: {'holds' if holds else 'does not hold'} ({_num(a)} vs {_num(b)}{_noise(a, b)})"


def ranking(values: dict[str, MeanStd | None], what: str, *, lower_is_better: bool = True) -> str:
    known = sorted(((m, v) for m, v in values.items() if v is not None), key=lambda mv: mv[1].mean,
                   reverse=not lower_is_better)
    if len(known) < 2:
        return ""
    return f"{what}, best first: " + ", ".join(f"{name(m)} {v.mean:.4g}" for m, v in known)


def _line(heading: str, parts: list[str]) -> str:
    scale = heading.split(" (")[0]
    return f"{scale}: " + "; ".join(p for p in parts if p) + "."


def _final_eval_losses(groups: dict[str, SeedGroup]) -> dict[str, MeanStd | None]:
    return {m: g.stat(lambda r: r.final_eval_loss) for m, g in groups.items()}


def _unchecked(what: str, claims: str) -> str:
    return f"No run of {what} yet: the paper's claims ({claims}) are not checked at any scale."


# --- figures -------------------------------------------------------------------------------------------------

def rank_by_type(run: Run) -> dict[str, dict]:
    """{matrix type: {count, changed, mean_effective_rank}} over the matrices the method changed (eval.rank's
    by_type; files written before it counted 'changed' are summarised from their matrices the same way)."""
    result = run.rank_result() or {}
    by_type = result.get("by_type") or {}
    if by_type and all(isinstance(v, dict) and "changed" in v for v in by_type.values()):
        return by_type
    out = {}
    for kind in sorted({m["matrix"] for m in result.get("matrices", [])}):
        rows = [m for m in result["matrices"] if m["matrix"] == kind]
        changed = [m for m in rows if m.get("delta_fro_norm", 0) > 0]
        out[kind] = {"count": len(rows), "changed": len(changed),
                     "mean_effective_rank": statistics.fmean(m["effective_rank"] for m in changed) if changed else 0.0}
    return out


def mean_rank_by_type(group: SeedGroup) -> dict[str, MeanStd]:
    """{matrix type: mean effective rank over changed matrices, as MeanStd over the group's seeds}."""
    per_run = [rank_by_type(r) for r in group.runs]
    kinds = sorted({k for d in per_run for k, v in d.items() if v.get("changed")})
    return {k: summarize(d[k]["mean_effective_rank"] for d in per_run if d.get(k, {}).get("changed"))
            for k in kinds}


def _rank_claim(rank_groups: dict[str, SeedGroup], method: str, reference: str, fraction: float | None) -> str:
    if method not in rank_groups or reference not in rank_groups:
        missing = " and ".join(name(m) for m in (method, reference) if m not in rank_groups)
        what = f"≥ {fraction:g} × {name(reference)}'s" if fraction else f"above {name(reference)}'s"
        return f"{name(method)}'s effective rank {what}: not checked, no rank.json of {missing}"
    ours, theirs = mean_rank_by_type(rank_groups[method]), mean_rank_by_type(rank_groups[reference])
    kinds = [k for k in ours if k in theirs]
    if fraction:
        hits = [k for k in kinds if ours[k].mean >= fraction * theirs[k].mean]
        claim = f"{name(method)}'s effective rank ≥ {fraction:g} × {name(reference)}'s"
    else:
        hits = [k for k in kinds if ours[k].mean > theirs[k].mean]
        claim = f"{name(method)}'s effective rank above {name(reference)}'s"
    return f"{claim} in {len(hits)} of {len(kinds)} matrix types (means over changed matrices)"


def f2(runs: list[Run]) -> str:
    data = select.f2(runs)
    if not data.loss_groups and not data.rank_groups:
        return _unchecked("paper_mtbench_* (and no eval/rank.json)",
                          "BAdam's loss close to Adam's and below LoRA's; BAdam's update as high-rank as Adam's")
    parts = []
    if data.loss_groups:
        losses = _final_eval_losses(select.best_per_method(data.loss_groups))
        parts += [close(losses, "badam", "adam", "final eval loss", tolerance=CLOSE_LOSS, relative=True),
                  better(losses, "badam", "lora", "final eval loss", lower_is_better=True),
                  ranking(losses, "final eval loss")]
    else:
        parts.append("loss claims not checked: no run of paper_mtbench_*")
    if data.rank_groups:
        parts += [_rank_claim(data.rank_groups, "badam", "adam", RANK_FRACTION),
                  _rank_claim(data.rank_groups, "badam", "lora", None)]
    else:
        parts.append("rank claims not checked: no rank.json")
    return _line(data.heading if data.loss_groups else data.rank_heading, parts)


def _hours(run: Run) -> float | None:
    curve = run.curve()
    hours = None if curve.empty else float(curve["hours"].iloc[-1])
    return None if hours is None or math.isnan(hours) else hours


def _solo_faster(groups: dict[str, SeedGroup], block: str, full: str, shared: int) -> str:
    """'BAdam faster than Adam (median step time of solo timing runs on <device>): holds (0.61×: ...)' for runs that
    shared their GPU (plots.timing); of several timings the pair on one device measured closest in time
    (timing.closest_pair); not checked without a solo timing run of both on one device."""
    found = {m: list({t.run: t for r in groups[m].ok_runs for t in r.step_timings}.values())
             for m in (block, full) if m in groups}
    claim = f"{name(block)} faster than {name(full)}"
    pair = timing.closest_pair(found.get(block, []), found.get(full, []))
    if pair is None:
        devices = lambda m: "/".join(sorted({t.device for t in found.get(m, [])}))  # noqa: E731
        why = (f"solo timing runs on different devices ({devices(block)}, {devices(full)})"
               if found.get(block) and found.get(full)
               else "no solo timing run of " + " and ".join(name(m) for m in (block, full) if not found.get(m)))
        return (f"{claim}: not checked (up to {shared} runs shared a GPU: their step times are not measurements; "
                f"{why})")
    a, b = pair
    ratio = a.step_ms / b.step_ms
    verdict = "holds" if ratio < 1 else "does not hold"
    return (f"{claim} (median step time of solo timing runs on {a.device}): {verdict} "
            f"({ratio:.2f}×: {a.step_ms:.1f} vs {b.step_ms:.1f} ms)")


def f3(runs: list[Run]) -> str:
    heading, _, groups = select.f3(runs)
    if not any(m in groups for m in ("sgd", "bsgd")):
        return _unchecked("ablation_bsgd_*", "BSGD close to SGD, BAdam close to Adam, block versions faster")
    losses = _final_eval_losses(groups)
    hours = {m: g.stat(_hours) for m, g in groups.items()}
    parts = [close(losses, "bsgd", "sgd", "final eval loss", tolerance=CLOSE_LOSS, relative=True),
             close(losses, "badam", "adam", "final eval loss", tolerance=CLOSE_LOSS, relative=True)]
    for block, full in (("bsgd", "sgd"), ("badam", "adam")):
        shared = max((r.shared_device_runs for m in (block, full) if m in groups for r in groups[m].runs), default=1)
        if shared > 1:  # their own step times measure the sharing: compare solo timing runs of the same settings
            parts.append(_solo_faster(groups, block, full, shared))
        elif hours.get(block) and hours.get(full) and hours[full].mean > 0:
            ratio = hours[block].mean / hours[full].mean
            parts.append(f"{name(block)} faster than {name(full)} (sum of step times): "
                         f"{'holds' if ratio < 1 else 'does not hold'} ({ratio:.2f}×)")
    return _line(heading, parts)


def _spread(variants: list[select.Variant], what: str) -> str:
    losses = {v.label: v.group.stat(lambda r: r.final_eval_loss) for v in variants}
    known = {k: v for k, v in losses.items() if v is not None}
    if len(known) < 2:
        return f"robust to {what}: not checked, {len(known)} variant(s) with an eval loss"
    best = min(known, key=lambda k: known[k].mean)
    spread = max(v.mean for v in known.values()) - known[best].mean
    verdict = "holds" if spread <= CLOSE_LOSS * known[best].mean else "does not hold"
    return (f"robust to {what} (final eval losses within {CLOSE_LOSS:.0%}): {verdict} (spread {spread:.3g} over "
            f"{len(known)} variants; best {best} {known[best].mean:.4g})")


def f4(runs: list[Run]) -> str:
    heading_a, orders, heading_b, ks = select.f4(runs)
    if not orders and not ks:
        return _unchecked("ablation_order_* or ablation_k_*", "BAdam robust to the block order and to K")
    parts = []
    if orders:
        parts.append(_line(heading_a, [_spread(orders, "the block order")]))
    if ks:
        parts.append(_line(heading_b, [_spread(ks, "K")]))
    return " ".join(parts)


FIGURES: dict[str, Callable[[list[Run]], str]] = {"F2": f2, "F3": f3, "F4": f4}


# --- tables --------------------------------------------------------------------------------------------------

def _per_scale(runs: list[Run], values: Callable[[list[Run]], dict[str, MeanStd | None]],
               parts: Callable[[dict[str, MeanStd | None]], list[str]], what: str, claims: str) -> str:
    """One clause per model scale with results ("Other scale: X: ...; ..."), or what was not checked."""
    lines = []
    for _key, (heading, scale_runs) in sorted(mapping.by_scale(runs).items()):
        found = values(scale_runs)
        if any(v is not None for v in found.values()):
            lines.append(_line(heading, parts(found)))
    return " ".join(lines) if lines else _unchecked(what, claims)


def _unparseable(groups: dict[str, SeedGroup], judge: str | None) -> str:
    """'142 of 640 judgments (22%) gave no rating' over the compared settings, when above UNPARSEABLE_SHARE."""
    counted = [s for g in groups.values() for s in g.judged(judge) if s.n_judged and s.n_scored is not None]
    judged = sum(s.n_judged for s in counted)
    missing = judged - sum(s.n_scored for s in counted)
    if not judged or missing <= UNPARSEABLE_SHARE * judged:
        return ""
    return f"{missing} of {judged} judgments ({missing / judged:.0%}) gave no rating and are left out"


def t5(runs: list[Run], validations: dict[str, dict] | None = None) -> str:
    """validations: plots.judges.load_judge_validations (None: none found); the line states the judge's agreement
    with GPT-4 measured there, or that the judge is unvalidated."""
    group = mapping.runs_for(runs, "mtbench")
    judges = [s[1] for r in group if r.ok and (s := r.mtbench_score()) is not None]
    judge = max(set(judges), key=judges.count) if judges else None
    scale: dict[str, dict[str, SeedGroup]] = {}  # _per_scale calls parts(found) right after values(): its groups

    def values(scale_runs):
        scale["groups"] = select.best_per_method(by_seed(scale_runs))
        return {m: g.mtbench(judge) for m, g in scale["groups"].items()}

    def parts(found):
        return [judge_agreement(judge, validations) or f"judge {judge}", _unparseable(scale["groups"], judge),
                better(found, "badam", "lora", "MT-bench", lower_is_better=False, noise=JUDGE_NOISE),
                close(found, "badam", "adam", "MT-bench", tolerance=CLOSE_MTBENCH, relative=False, noise=JUDGE_NOISE),
                better(found, "badam", "base", "MT-bench", lower_is_better=False, noise=JUDGE_NOISE)]
    return _per_scale(group, values, parts, "paper_mtbench_* with a judged MT-bench score",
                      "BAdam at or above LoRA, close to Adam, above the base model")


def _common_mean(per_method: dict[str, dict[str, list[float]]]) -> dict[str, MeanStd | None]:
    """{method: mean over the items (datasets, tasks) that every method with results has, of the item's mean over
    seeds} from {method: {item: [value per seed]}}; items only some methods have would make the averages
    incomparable."""
    with_results = [p for p in per_method.values() if p]
    common = set.intersection(*(set(p) for p in with_results)) if with_results else set()
    # the spread over items is not a seed spread: the value carries no std
    return {m: (MeanStd(statistics.fmean(statistics.fmean(p[k]) for k in common), None, len(common))
                if common and p else None) for m, p in per_method.items()}


def _sampling_se(scores: dict[str, float], totals: dict[str, int], datasets: set[str]) -> float | None:
    """The binomial standard error (percentage points) of a run's mean accuracy over `datasets`:
    sqrt(sum_d p_d (1 - p_d) / n_d) / |datasets| with p_d its accuracy (`scores`, percent) and n_d its items
    (`totals`) on dataset d; None when a dataset's item count is not recorded. Across two models it treats their
    errors as independent, which overstates the noise of a comparison on the same items: a gap it calls separable
    is one."""
    if not datasets or any(d not in scores or d not in totals for d in datasets):
        return None
    variance = sum((p := scores[d] / 100) * (1 - p) / totals[d] for d in datasets)
    return 100 * math.sqrt(variance) / len(datasets)


def _math_values(scale_runs: list[Run]) -> dict[str, MeanStd | MeanSE | None]:
    """{method: mean accuracy over the paper's datasets every method has}; a method with one evaluated run carries
    the benchmarks' item-sampling standard error (MeanSE), the only noise one seed shows."""
    per_method, single = {}, {}
    for method, g in select.best_per_method(by_seed(scale_runs)).items():
        items: dict[str, list[float]] = {}
        evaluated = []
        for run in g.ok_runs:
            scores = run.math_scores()
            if scores:
                evaluated.append((run, scores))
            for dataset, value in (scores or {}).items():
                if dataset in PAPER_MATH_DATASETS:
                    items.setdefault(dataset, []).append(value)
        per_method[method] = items
        if len(evaluated) == 1:
            run, scores = evaluated[0]
            single[method] = (scores, run.math_totals())
    values: dict[str, MeanStd | MeanSE | None] = dict(_common_mean(per_method))
    with_results = [set(p) for p in per_method.values() if p]
    common = set.intersection(*with_results) if with_results else set()
    for method, (scores, totals) in single.items():
        se = _sampling_se(scores, totals, common)
        if values[method] is not None and se is not None:
            values[method] = MeanSE(values[method].mean, se, sum(totals[d] for d in common))
    return values


def _superglue_scores(settings: list[select.SuperglueSetting]) -> dict[str, dict[str, list[float]]]:
    """{method: {task: test score per seed}} over these settings, the tasks that finished only."""
    per_method = {}
    for method, per_seed in select.superglue_by_method(settings).items():
        items: dict[str, list[float]] = {}
        for tasks in per_seed.values():
            for task, value in tasks.items():
                if isinstance(value, float):
                    items.setdefault(task, []).append(value)
        per_method[method] = items
    return per_method


def _tuned_superglue(settings: list[select.SuperglueSetting], sweep: str) -> tuple[dict[str, MeanStd | None], list]:
    """({method: MeanStd over seeds of the seed's mean test score over the tasks}, the tasks) for the settings whose
    lr `sweep` chose: the tasks every method has a score for; a seed lacking one of them is left out."""
    tuned = {}
    for st in sorted((st for st in settings if st.sweep == sweep), key=lambda st: len(st.per_seed)):
        tuned[st.method] = st.per_seed   # of two lrs of one sweep and method (a choice that moved): most seeds
    scored = [{t for tasks in per_seed.values() for t, v in tasks.items() if isinstance(v, float)}
              for per_seed in tuned.values()]
    common = sorted(set.intersection(*scored)) if scored else []
    values = {m: summarize(statistics.fmean(tasks[t] for t in common) for tasks in per_seed.values()
                           if common and all(isinstance(tasks.get(t), float) for t in common))
              for m, per_seed in tuned.items()}
    return values, common


def t6(runs: list[Run]) -> str:
    def parts(found):
        return ["mean accuracy (%) over the paper's datasets every method was evaluated on",
                better(found, "badam", "lora", "math", lower_is_better=False, noise=SAMPLING_NOISE),
                close(found, "badam", "adam", "math", tolerance=CLOSE_POINTS, relative=False, noise=SAMPLING_NOISE),
                better(found, "badam", "base", "math", lower_is_better=False, noise=SAMPLING_NOISE)]
    return _per_scale(mapping.runs_for(runs, "math"), _math_values, parts, "paper_math_* with eval/math.json",
                      "BAdam at or above LoRA, close to Adam, above the base model")


def _not_learned(settings: list[select.SuperglueSetting], majority: dict[str, float]) -> str:
    """'no method beats the majority class by more than 2 points on: BoolQ, WSC' (such tasks cannot separate the
    methods at this budget; any lr counts), or '' when every task was learned or no majority score is recorded."""
    best: dict[str, float] = {}
    for st in settings:
        for items in _superglue_scores([st]).values():
            for task, values in items.items():
                best[task] = max(best.get(task, -math.inf), statistics.fmean(values))
    flat = sorted(t for t, score in best.items() if t in majority and score <= majority[t] + CLOSE_POINTS)
    if not flat:
        return ""
    return (f"no method beats the majority class by more than {CLOSE_POINTS:g} points (mean over seeds) on: "
            f"{', '.join(SUPERGLUE_NAMES.get(t, t) for t in flat)}")


def _superglue_tuned_parts(settings: list[select.SuperglueSetting]) -> list[str]:
    """Per sweep: BAdam at its own best lr against Adam and LoRA at theirs, on the sweep's tasks."""
    parts = [] if any(st.sweep for st in settings) else \
        ["at each method's own best lr: not checked, no SuperGLUE lr sweep (lr_sweep_*) with a choice"]
    for sweep in sorted({st.sweep for st in settings if st.sweep}):
        values, tasks = _tuned_superglue(settings, sweep)
        names = ", ".join(SUPERGLUE_NAMES.get(t, t) for t in tasks) or "no task every method has"
        parts += [f"each method at its own best lr from {sweep} (highest mean validation score), mean test score "
                  f"(%) over {names}",
                  close(values, "badam", "adam", TUNED, tolerance=CLOSE_POINTS, relative=False),
                  better(values, "badam", "lora", TUNED, lower_is_better=False)]
    return parts


def t11(runs: list[Run]) -> str:
    """Per scale: at the config's lr, BAdam close to Adam and at or above LoRA (mean over the tasks every method
    finished); the same at each method's own lr of a sweep (its tasks); the tasks nothing learned."""
    lines = []
    for _key, (heading, scale_runs) in sorted(mapping.by_scale(select.superglue_runs(runs)).items()):
        settings = select.superglue_settings(scale_runs)
        fixed = _common_mean(_superglue_scores([st for st in settings if st.sweep is None]))
        parts = ["at the config's lr, mean test score (%) over the tasks every method finished",
                 close(fixed, "badam", "adam", "SuperGLUE", tolerance=CLOSE_POINTS, relative=False),
                 better(fixed, "badam", "lora", "SuperGLUE", lower_is_better=False)] if fixed else []
        parts += _superglue_tuned_parts(settings) if settings else []
        if parts:
            lines.append(_line(heading, [*parts, _not_learned(settings, select.superglue_majority(scale_runs))]))
    return " ".join(lines) if lines else _unchecked("paper_superglue_* (or a SuperGLUE lr_sweep_*)",
                                                    "BAdam close to Adam and at or above LoRA")
