"""Figures F2 (optimization capability; plots/figure_f2.py), F3 (BSGD ablation), F4 (block order and K), as PNG and PDF.

A panel without data says "no run" (it is never drawn empty). Each figure shows one model; when the paper's model
has runs it is chosen, otherwise the model with the most runs, named in the title as not the paper's scale
(plots.select says which runs each figure reads). Every method the runs hold is drawn, each in its own colour, the
same in every figure (plots.style). Several seeds of a setting are drawn as their mean curve with a band from the
minimum to the maximum over the seeds (n in the legend). Under each figure: which of the paper's claims hold at this
scale (plots.claims)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402

from experiments.results import replace_durably  # noqa: E402  (plain file handling; imports no torch)
from plots import claims, select, style  # noqa: E402
from plots.figure_common import bars, claim_footer, draw_seed_curves, wrap  # noqa: E402
from plots.figure_f2 import figure_f2  # noqa: E402,F401  (re-exported: every figure is built from this module)
from plots.paper import paper_cell, records  # noqa: E402
from plots.runs import Run  # noqa: E402


# --- F3 ------------------------------------------------------------------------------------------------------

def figure_f3(doc: dict, runs: list[Run]) -> plt.Figure:
    heading, paper_scale, groups = select.f3(runs)
    paper_methods = [r["method"] for r in records(doc, "F3")]  # the paper's order first, then any other method
    methods = paper_methods + sorted(set(groups) - set(paper_methods))
    items = [(claims.name(m), style.method_color(m), groups[m]) for m in methods if m in groups]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    draw_seed_curves(axes[0], items, "loss", "step", "training loss vs iterations")
    draw_seed_curves(axes[1], items, "loss", "hours", "training loss vs training time")
    bars(axes[2], [(claims.name(m), style.method_color(m),
                    groups[m].stat(lambda r: r.final_eval_loss) if m in groups else None) for m in methods],
         "final held-out eval loss", "final eval loss (lower is better)")
    ax = axes[3]
    ours = [(claims.name(m), style.method_color(m), groups[m].mtbench() if m in groups else None) for m in methods]
    if paper_scale:  # the paper's bars only beside runs of the paper's model, never beside another scale
        paper = [paper_cell(doc, "F3", "mt_bench", method=m) for m in methods]
        ax.bar([x - 0.2 for x in range(len(methods))], [p.value if p and p.value else 0 for p in paper], 0.4,
               color="0.75", label="paper (Figure 3, GPT-4 judge)")
    else:
        ax.text(0.5, 0.97, "paper values not shown: different model scale", ha="center", va="top", fontsize=7,
                transform=ax.transAxes)
    bars(ax, ours, "MT-bench", "MT-bench: full methods vs block coordinate descent\n(error bar: std over seeds; "
         "one seed: standard error over its judgments)",
         offset=0.2 if paper_scale else 0.0, width=0.4 if paper_scale else 0.6, ylim=(0, 10))  # scores lie in [1, 10]
    if paper_scale:
        ax.legend(fontsize=7)
    fig.suptitle(wrap(f"F3 (paper Figure 3): BSGD ablation. {heading}", 150), fontsize=10)
    claim_footer(fig, claims.f3(runs))
    return fig


# --- F4 ------------------------------------------------------------------------------------------------------

def _variant_items(variants: list[select.Variant], option: str):
    color = style.k_color if option == select.K_OPTION else style.variant_color
    return [(v.label, color(v.value) if v.value is not None else style.hash_color(v.label), v.group)
            for v in variants]


def figure_f4(runs: list[Run]) -> plt.Figure:
    heading_a, orders, heading_b, ks = select.f4(runs)
    order_items = _variant_items(orders, select.ORDER_OPTION)
    k_items = _variant_items(ks, select.K_OPTION)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    draw_seed_curves(axes[0, 0], order_items, "loss", "step", f"(a) block order\n{heading_a}")
    draw_seed_curves(axes[0, 1], k_items, "loss", "step", f"(b) Adam steps K per block\n{heading_b}")
    for ax, items, title in ((axes[1, 0], order_items, "(a) final eval loss by block order"),
                             (axes[1, 1], k_items, "(b) final eval loss by K")):
        bars(ax, [(label, color, group.stat(lambda r: r.final_eval_loss)) for label, color, group in items],
             "final held-out eval loss", title)
    fig.suptitle("F4 (paper Figure 4): ablations of BAdam's block order and K", fontsize=10)
    claim_footer(fig, claims.f4(runs))
    return fig


def write_figure(fig: plt.Figure, out_dir: Path, stem: str, dpi: int = 130) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    # no creation date in the PDF: regenerating unchanged results gives the same bytes (no spurious diffs)
    for path, options in ((paths[0], {"dpi": dpi}), (paths[1], {"metadata": {"CreationDate": None}})):
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix tells matplotlib the format
        fig.savefig(tmp, **options)
        replace_durably(tmp, path)  # readers see the old figure or the new one, never half a file
    plt.close(fig)
    return paths

