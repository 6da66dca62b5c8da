"""F2 (paper Figure 2): optimization capability.

Row 1, from the main instruction-tuning group (paper_mtbench_*): the online training loss against optimizer steps
and against training time, and the held-out eval loss, of every method (mean and min-max band over seeds).
Row 2, from every run with eval/rank.json: the cumulative explained variance of each method's ΔW for one up_proj
(the layer at the paper's relative depth, its layer 25 of 32, among the layers the method changed), and the mean
effective rank per matrix type over the matrices each method changed ("k/n": changed of all).
Row 3: the effective rank per layer of each matrix type (changed matrices only: an untouched matrix has rank 0).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402

from plots import claims, select, style  # noqa: E402
from plots.figure_common import claim_footer, draw_seed_curves, no_run, wrap  # noqa: E402
from plots.seeds import SeedGroup  # noqa: E402

PAPER_CVAR_LAYER, PAPER_LAYERS = 25, 32  # Figure 2 (middle): layer 25's up_proj of Llama 3-8B (32 layers)
MATRIX_ORDER = ("q", "k", "v", "o", "gate", "up", "down")  # the paper's legend has q, k, v, gate, down, up


def _loss_items(groups: list[SeedGroup]) -> list[tuple[str, str, SeedGroup]]:
    several = {m for m in {g.method for g in groups} if sum(g.method == m for g in groups) > 1}
    return [(claims.name(g.method) + (f" lr={g.lr:g}" if g.method in several and g.lr is not None else ""),
             style.method_color(g.method), g) for g in groups]


def _changed(run) -> list[dict]:
    return [m for m in (run.rank_result() or {}).get("matrices", []) if m.get("delta_fro_norm", 0) > 0]


def _cvar_panel(ax, rank_groups: dict[str, SeedGroup]) -> None:
    title = "cumulative explained variance of ΔW (up_proj)"
    drawn, threshold = [], None
    for method, group in rank_groups.items():
        run = group.first
        rows = [m for m in _changed(run) if m["matrix"] == "up"]
        if not rows:
            continue
        layers = max(m["layer"] for m in (run.rank_result() or {})["matrices"]) + 1
        target = round(PAPER_CVAR_LAYER / (PAPER_LAYERS - 1) * (layers - 1))  # the paper's relative depth
        row = min(rows, key=lambda m: (abs(m["layer"] - target), m["layer"]))
        color = style.method_color(method)
        ax.plot(row["curve"]["r"], row["curve"]["cvar"], color=color, lw=1.5,
                label=f"{claims.name(method)}: layer {row['layer']}, effective rank {row['effective_rank']} "
                      f"of {min(row['shape'])}")
        ax.axvline(row["effective_rank"], ls=":", color=color, lw=1)
        threshold = (run.rank_result() or {}).get("threshold", threshold)
        drawn.append(method)
    if not drawn:
        no_run(ax, title, "no rank.json with a changed up_proj")
        return
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="0.5", lw=1)
    ax.set_xlabel("number of singular values")
    ax.set_ylabel("cumulative explained variance")
    ax.set_title(wrap(f"{title}\nat the paper's relative depth (its layer 25 of 32)"), fontsize=9)
    ax.legend(fontsize=7)


def _kinds(rank_groups: dict[str, SeedGroup]) -> list[str]:
    found = {m["matrix"] for g in rank_groups.values() for m in _changed(g.first)}
    return [k for k in MATRIX_ORDER if k in found] + sorted(found - set(MATRIX_ORDER))


def _mean_rank_panel(ax, rank_groups: dict[str, SeedGroup], kinds: list[str]) -> None:
    title = "mean effective rank over the matrices each method changed"
    if not kinds:
        no_run(ax, title, "no rank.json")
        return
    width = 0.8 / len(rank_groups)
    for i, (method, group) in enumerate(rank_groups.items()):
        means = claims.mean_rank_by_type(group)
        counts = claims.rank_by_type(group.first)
        xs = [k + (i - (len(rank_groups) - 1) / 2) * width for k in range(len(kinds))]
        values = [means[k].mean if k in means else 0.0 for k in kinds]
        errors = [(means[k].std or 0.0) if k in means else 0.0 for k in kinds]
        n = max((v.n for v in means.values()), default=1)
        ax.bar(xs, values, width, yerr=errors if n > 1 else None, color=style.method_color(method), capsize=2,
               label=claims.name(method) + (f" (mean of {n} seeds)" if n > 1 else ""))
        for x, kind, value in zip(xs, kinds, values):
            count = counts.get(kind, {})
            ax.text(x, value, f"{count.get('changed', 0)}/{count.get('count', 0)}", ha="center", va="bottom",
                    fontsize=5, rotation=90)
    ax.set_xticks(list(range(len(kinds))), [f"{k}_proj" for k in kinds], fontsize=8)
    ax.set_ylabel("effective rank (90% of the variance)")
    ax.set_title(wrap(f"{title}\n(k/n above a bar: matrices changed of all)", 70), fontsize=9)
    ax.legend(fontsize=7)


def _per_layer_panels(axes, rank_groups: dict[str, SeedGroup], kinds: list[str]) -> None:
    for ax, kind in zip(axes, kinds):
        for method, group in rank_groups.items():
            rows = sorted((m for m in _changed(group.first) if m["matrix"] == kind), key=lambda m: m["layer"])
            if rows:
                ax.plot([m["layer"] for m in rows], [m["effective_rank"] for m in rows], marker="o", ms=2.5,
                        lw=1, color=style.method_color(method), label=claims.name(method))
        ax.set_title(f"{kind}_proj: effective rank per layer", fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
    if kinds:
        axes[0].set_ylabel("effective rank (changed matrices)", fontsize=8)
        axes[0].legend(fontsize=6)


def figure_f2(runs) -> plt.Figure:
    data = select.f2(runs)
    kinds = _kinds(data.rank_groups)
    fig = plt.figure(figsize=(17, 13))
    grid = fig.add_gridspec(3, 1, height_ratios=(1, 1, 0.75))
    top = [fig.add_subplot(cell) for cell in grid[0].subgridspec(1, 3)]
    middle = [fig.add_subplot(cell) for cell in grid[1].subgridspec(1, 2)]
    bottom = [fig.add_subplot(cell) for cell in grid[2].subgridspec(1, max(1, len(kinds)))]
    items = _loss_items(data.loss_groups)
    draw_seed_curves(top[0], items, "loss", "step", f"online training loss\n{data.heading}")
    draw_seed_curves(top[1], items, "loss", "hours", "online training loss against training time")
    draw_seed_curves(top[2], items, "eval_loss", "step", "held-out eval loss")
    _cvar_panel(middle[0], data.rank_groups)
    _mean_rank_panel(middle[1], data.rank_groups, kinds)
    if kinds:
        _per_layer_panels(bottom, data.rank_groups, kinds)
    else:
        no_run(bottom[0], "effective rank per layer", "no rank.json")
    fig.suptitle(wrap(f"F2 (paper Figure 2): optimization capability. Rank panels: {data.rank_heading}", 150),
                 fontsize=10)
    claim_footer(fig, claims.f2(runs))
    return fig
