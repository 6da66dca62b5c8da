"""Drawing helpers shared by the figures: "no run" panels, seed curves with bands, bars with seed spreads, and the
claim line under a figure."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from plots.runs import Run  # noqa: E402
from plots.seeds import MeanSE, MeanStd, SeedGroup, mean_curve  # noqa: E402
from plots.timing import estimate_note  # noqa: E402

X_LABELS = {"step": "optimizer steps (data pass)", "hours": "training time (hours, sum of step times)"}
Y_LABELS = {"loss": "training loss (online, smoothed)", "eval_loss": "held-out eval loss"}
CURVE_POINTS = 50  # the online loss is noisy: each run is smoothed over 1/50 of its steps, as the paper's curves are


def wrap(text: str, width: int = 62) -> str:
    """Long headings (other-scale model names) wrapped so they stay inside their panel."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def no_run(ax, title: str, why: str = "no run") -> None:
    ax.set_title(wrap(title), fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=12, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def smoothed_curve(run: Run) -> pd.DataFrame:
    """The run's curve (Run.curve) with its online training loss smoothed by a rolling mean."""
    curve = run.curve()
    if not curve.empty:
        window = max(1, len(curve) // CURVE_POINTS)
        curve = curve.assign(loss=curve["loss"].rolling(window, min_periods=1).mean())
    return curve


def _time_label(groups: list[SeedGroup]) -> str:
    """The time axis's label; when a drawn run shared its device, it says how its time was estimated (plots.timing)."""
    runs = [r for g in groups for r in g.ok_runs]
    estimated = [r.solo_timing.device for r in runs if r.shared_device_runs > 1 and r.solo_timing is not None]
    if not estimated:
        return X_LABELS["hours"]
    if all(r.shared_device_runs > 1 for r in runs):
        return f"training time (hours; {estimate_note(estimated)})"
    return f"{X_LABELS['hours']};\nruns that shared a GPU: {estimate_note(estimated)}"


def draw_seed_curves(ax, items: list[tuple[str, str, SeedGroup]], y: str, x: str, title: str) -> bool:
    """One mean curve per (label, colour, seed group), with the min-max band over its finished seeds; "no run"
    when none has data. Against time, a run that shared its device is drawn on an estimated time axis when a solo
    timing run of its setting exists (plots.timing; the axis label says so), else left out. Returns whether
    anything was drawn."""
    drawn = []
    for label, color, group in items:
        curve = mean_curve([smoothed_curve(r) for r in group.ok_runs], y, x)
        if curve.empty:
            continue
        n = int(curve["n"].iloc[0])
        marker = "o" if y == "eval_loss" else None
        ax.plot(curve[x], curve["mean"], color=color, lw=1.3, marker=marker, ms=3,
                label=label + (f" (mean of {n} seeds)" if n > 1 else ""))
        if n > 1:
            ax.fill_between(curve[x], curve["lo"], curve["hi"], color=color, alpha=0.18, lw=0)
        drawn.append(group)
    if not drawn:
        shared = x == "hours" and any(r.shared_device_runs > 1 for _l, _c, g in items for r in g.ok_runs)
        no_run(ax, title, "no time: the runs shared a GPU\nand no solo timing run matches them" if shared else "no run")
        return False
    if x == "hours":
        ax.set_xlabel(wrap(_time_label(drawn), 70), fontsize=8)
    else:
        ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(Y_LABELS[y])
    ax.set_title(wrap(title), fontsize=9)
    ax.legend(fontsize=7)
    return True


def _error(value: MeanStd | MeanSE) -> float | None:
    return value.se if isinstance(value, MeanSE) else value.std


def bars(ax, items: list[tuple[str, str, MeanStd | MeanSE | None]], ylabel: str, title: str, *, offset: float = 0.0,
         width: float = 0.6, ylim: tuple[float, float] | None = None) -> None:
    """One bar per (label, colour, value): the mean, with the standard deviation over seeds (MeanStd) or the standard
    error over one run's scored items (MeanSE, an MT-bench score of one seed) as an error bar;
    "no run" written where a value is missing. Without `ylim` (losses, whose differences are small against their
    size) the values are drawn as points on an axis fitted to them instead of bars from zero."""
    if not items:
        no_run(ax, title)
        return
    xs = [i + offset for i in range(len(items))]
    for x, (_label, color, value) in zip(xs, items):
        if value is None:
            ax.text(x, 0.02, "no run", rotation=90, ha="center", va="bottom", fontsize=8,
                    transform=ax.get_xaxis_transform())
            continue
        if ylim is None:
            ax.errorbar([x], [value.mean], yerr=[_error(value)] if _error(value) else None, fmt="o", color=color,
                        ms=7, capsize=4)
        else:
            ax.bar(x, value.mean, width, color=color, yerr=_error(value) or None, capsize=3)
    ax.set_xticks(list(range(len(items))), [label for label, _c, _v in items], rotation=20, ha="right",
                  fontsize=8)
    known = [v.mean for _l, _c, v in items if v is not None]
    ax.set_xlim(-0.6, len(items) - 0.4)
    if ylim is not None:
        ax.set_ylim(*ylim)
    elif known:  # losses of close methods: start the axis near the data so differences are visible
        spreads = [_error(v) or 0.0 for _l, _c, v in items if v is not None]
        low, high = min(known) - max(spreads), max(known) + max(spreads)
        pad = max(0.1 * (high - low), 0.01 * abs(high), 1e-6)
        ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap(title), fontsize=9)


def claim_footer(fig: plt.Figure, text: str, *, width: int = 200) -> None:
    """The figure's claim line under its panels (plots.claims), with room made for it."""
    wrapped = wrap("The paper's claims at this scale: " + text, width)
    lines = wrapped.count("\n") + 1
    bottom = min(0.3, 0.03 + 0.11 * lines / fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    fig.text(0.01, 0.01, wrapped, fontsize=7, va="bottom", ha="left")
