"""Which runs each comparison figure, and its claim line, reads: one place, so a figure and its line never disagree.

* F2: the main instruction-tuning group (paper_mtbench_*) of one model, every method in it (several seeds of a
  setting are one curve with a band); the rank panels read every run with eval/rank.json in paper_rank_* or
  paper_mtbench_* (the quality profile writes it into the seed-0 runs), or, when there is none, in any group.
* F3: the BSGD ablation group (ablation_bsgd_*), plus the paper's references for it (Adam, BAdam) from the main group
  of the same model when the ablation did not re-run them, at the ablation's seed (else the lowest seed).
* F4: the block-order and K ablation groups, plus BAdam of the main group (its own order, random, and its own K)
  when the ablation lacks that variant.
* T11: the SuperGLUE runs of paper_superglue_* groups, and of lr_sweep_* groups at the lr each sweep chose (tuned
  settings, shown apart from those at the config's lr).
A model is shown when it has runs in the figure's own group; the paper's model first, else the model with most runs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from experiments.lr_selection import LrSelectionError, recorded_selection, select_lr  # file reading, no torch
from experiments.rundir import RunDir
from plots import mapping
from plots.runs import Run
from plots.seeds import SeedGroup, by_seed

PREFERRED_MODEL = "llama3-8b"  # the paper's model for Figures 2-4
F3_REFERENCE_METHODS = ("adam", "badam")  # Figure 3 sets SGD and BSGD beside Adam and BAdam


def training_groups(runs: list[Run]) -> list[SeedGroup]:
    """Seed groups of training runs (the untuned 'base' rows have no training to draw)."""
    return by_seed([r for r in runs if r.method != "base"])


def best_per_method(groups: list[SeedGroup]) -> dict[str, SeedGroup]:
    """{method: its seed group with the lowest mean final eval loss} (without an eval loss: the one with most
    finished seeds); one setting per method, for comparisons between methods."""
    def rank(group: SeedGroup):
        loss = group.stat(lambda r: r.final_eval_loss)
        return (loss is None, loss.mean if loss else 0.0, -len(group.ok_runs))

    out: dict[str, SeedGroup] = {}
    for group in sorted(groups, key=rank, reverse=True):
        out[group.method] = group  # the best comes last and wins
    return dict(sorted(out.items()))


def _borrow(ablation: list[Run], main: list[Run], methods, label) -> list[Run]:
    """Runs of `methods` from the main group, of the ablation's model, whose label the ablation lacks; one run per
    label, at the ablation's most common seed (else the lowest seed of the best setting)."""
    if not ablation:
        return []
    key = next(iter(mapping.by_scale(ablation)))
    have = {label(r) for r in ablation}
    seeds = Counter(r.seed for r in ablation)
    seed = seeds.most_common(1)[0][0] if seeds else None
    candidates = [r for r in mapping.by_scale(main).get(key, ("", []))[1] if r.method in methods and r.ok
                  and label(r) not in have]
    borrowed = []
    for group in best_per_method(training_groups(candidates)).values():
        runs = group.ok_runs
        chosen = next((r for r in runs if r.seed == seed), runs[0] if runs else None)
        if chosen is not None:
            borrowed.append(chosen)
    return borrowed


@dataclass
class F2Data:
    heading: str
    loss_groups: list[SeedGroup]
    rank_heading: str
    rank_groups: dict[str, SeedGroup] = field(default_factory=dict)  # method -> its runs with eval/rank.json


def f2(runs: list[Run]) -> F2Data:
    heading, main, _ = mapping.pick_model(mapping.runs_for(runs, "mtbench"), PREFERRED_MODEL,
                                          needs_trained_weights=True)
    groups = sorted(training_groups(main), key=lambda g: (g.method, g.lr or 0.0))
    def has_rank(run: Run) -> bool:
        return run.ok and RunDir(run.path).eval_file("rank.json").is_file()

    # rank.json where the paper's groups keep it; failing that, wherever an evaluator wrote it (any group)
    with_rank = [r for r in mapping.runs_for(runs, "rank") if has_rank(r)] or [r for r in runs if has_rank(r)]
    rank_heading, rank_runs, _ = mapping.pick_model(with_rank, PREFERRED_MODEL, needs_trained_weights=True)
    rank_groups: dict[str, SeedGroup] = {}
    for group in sorted(by_seed(rank_runs), key=lambda g: (-len(g.runs), g.seeds[0] is None, g.seeds[0] or 0)):
        rank_groups.setdefault(group.method, group)
    return F2Data(heading, groups, rank_heading, dict(sorted(rank_groups.items())))


def f3(runs: list[Run]) -> tuple[str, bool, dict[str, SeedGroup]]:
    """(heading, paper scale, {method: seed group})."""
    heading, ablation, paper_scale = mapping.pick_model(mapping.runs_for(runs, "bsgd"), PREFERRED_MODEL,
                                                        needs_trained_weights=True)
    borrowed = _borrow(ablation, mapping.runs_for(runs, "mtbench"), F3_REFERENCE_METHODS, lambda r: r.method)
    return heading, paper_scale, best_per_method(training_groups(ablation + borrowed))


@dataclass
class Variant:
    label: str          # legend text
    value: object       # the option's value: a block order, or K
    group: SeedGroup


ORDER_OPTION, K_OPTION = "switch_mode", "switch_block_every"


def _variants(ablation: list[Run], main: list[Run], option: str) -> list[Variant]:
    def label(run: Run):
        return run.method, run.method_options.get(option)

    ablation = [r for r in ablation if r.method != "base"]
    methods = {r.method for r in ablation}
    borrowed = _borrow(ablation, main, methods, label)
    chosen: dict[tuple, SeedGroup] = {}
    for group in training_groups(ablation + borrowed):
        chosen.setdefault(label(group.first), group)  # ablation runs first: they win over a borrowed duplicate
    out = []
    for (method, value), group in chosen.items():
        text = f"K={value}" if option == K_OPTION else f"{value} order"
        if len(methods) > 1:
            text = f"{method}, {text}"
        if group.first.group not in {r.group for r in ablation}:
            text += f" (seed {group.first.seed} of {group.first.group})"
        out.append(Variant(text, value, group))
    order = {"random": 0, "ascending": 1, "descending": 2}

    def position(v: Variant):
        numeric = v.value if isinstance(v.value, (int, float)) and not isinstance(v.value, bool) else float("inf")
        return v.group.method, order.get(v.value, 9) if option == ORDER_OPTION else 0, numeric, str(v.value)
    return sorted(out, key=position)


def f4(runs: list[Run]) -> tuple[str, list[Variant], str, list[Variant]]:
    """(heading of (a), block-order variants, heading of (b), K variants)."""
    main = mapping.runs_for(runs, "mtbench")
    heading_a, order_runs, _ = mapping.pick_model(mapping.runs_for(runs, "order"), PREFERRED_MODEL,
                                                  needs_trained_weights=True)
    heading_b, k_runs, _ = mapping.pick_model(mapping.runs_for(runs, "k"), PREFERRED_MODEL,
                                              needs_trained_weights=True)
    return heading_a, _variants(order_runs, main, ORDER_OPTION), heading_b, _variants(k_runs, main, K_OPTION)


def superglue_majority(runs: list[Run]) -> dict[str, float]:
    """{task: majority-class test score in percent}: the same for every run of a scale (one split per task); the
    latest run's value wins."""
    out: dict[str, float] = {}
    for run in sorted(runs, key=lambda r: r.date):
        out.update(run.superglue_majority())
    return out


@dataclass
class SuperglueSetting:
    """One method at one lr on SuperGLUE, with where its lr came from: `sweep` names the lr_sweep_* group whose
    choice (highest mean validation score, experiments/lr_selection.py) the lr is, None for the config's own lr."""
    method: str
    lr: float | None
    sweep: str | None
    per_seed: dict = field(default_factory=dict)   # {seed: {task: test score in percent, or the task's status}}
    groups: dict = field(default_factory=dict)     # {seed: the group its results came from}

    def seeds_text(self) -> str:
        """'0, 1, 2'; a seed that is the sweep's own run is marked: '0 (the sweep's run), 1, 2'."""
        return ", ".join(("—" if seed is None else str(seed)) +
                         (" (the sweep's run)" if self.sweep and self.groups.get(seed) == self.sweep else "")
                         for seed in sorted(self.per_seed, key=lambda s: (s is None, s or 0)))


def superglue_runs(runs: list[Run]) -> list[Run]:
    """T11's runs: those of paper_superglue_* groups and the SuperGLUE runs of lr_sweep_* groups (the latter
    count at the lr their sweep chose only, superglue_settings)."""
    sweeps = [r for r in mapping.runs_for(runs, "lr_sweep") if r.superglue_scores() is not None]
    return mapping.runs_for(runs, "superglue") + sweeps


def _same_lr(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def superglue_settings(runs: list[Run]) -> list[SuperglueSetting]:
    """The SuperGLUE settings of these runs (superglue_runs of one scale), config-lr ones first. A sweep run counts
    where its lr is the one its sweep chooses now; a run of another group counts as tuned where its group's
    lr_selection.json records that lr for its method. The seeds of a tuned setting come from the sweep (its run at
    the chosen lr) and from the groups that took the choice (a seed both hold: the latter's). Tasks of one seed may
    come from several files; of two results for a task and seed the latest wins."""
    choices: dict[tuple, float | None] = {}

    def sweep_choice(run: Run) -> float | None:
        key = (run.path.parent, run.method)
        if key not in choices:
            try:
                choices[key] = select_lr(run.path.parent.parent, run.path.parent.name, run.method)["chosen_lr"]
            except (LrSelectionError, OSError, ValueError):
                choices[key] = None   # the LR table says why
        return choices[key]

    is_sweep = {r.path: r.group.startswith(mapping.GROUP_PREFIXES["lr_sweep"]) for r in runs}
    out: dict[tuple, SuperglueSetting] = {}
    for run in sorted(runs, key=lambda r: (not is_sweep[r.path], r.date)):
        scores = run.superglue_scores()
        if scores is None:
            continue  # e.g. the per-task harness runs inside an eval.superglue output folder
        if is_sweep[run.path]:
            if not _same_lr(run.lr, sweep_choice(run)):
                continue
            sweep = run.group
        else:
            record = recorded_selection(run.path.parent, run.method)
            sweep = record["from_group"] if record and _same_lr(run.lr, float(record["chosen_lr"])) else None
        key = (run.method, None if run.lr is None else f"{run.lr:.6g}", sweep)
        setting = out.setdefault(key, SuperglueSetting(run.method, run.lr, sweep))
        setting.per_seed.setdefault(run.seed, {}).update(scores)
        setting.groups[run.seed] = run.group
    return sorted(out.values(), key=lambda s: (s.sweep is not None, s.sweep or "", s.method, s.lr or 0.0))


def superglue_by_method(settings: list[SuperglueSetting]) -> dict[str, dict]:
    """{method: {seed: {task: score or status}}} over these settings (the paper-scale rows: one per method)."""
    out: dict[str, dict] = {}
    for setting in settings:
        for seed, tasks in setting.per_seed.items():
            out.setdefault(setting.method, {}).setdefault(seed, {}).update(tasks)
    return out
