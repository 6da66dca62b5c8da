"""run_all's table of outcomes: one row per planned run of the suite (experiments.suite.Outcome), printed after the
runs and evaluators."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from experiments.suite import Outcome


def _fmt_bytes(value) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _fmt_loss(value) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.4f}"


def format_table(outcomes: list[Outcome]) -> str:
    """One row per run. Losses are the held-out eval loss and the mean training loss over the last 10 steps: one
    batch's loss is too noisy to rank methods by."""
    header = ("group", "run", "status", "eval loss", "train loss (last 10)", "peak memory", "median step", "note")
    rows = []
    for o in outcomes:
        s = o.summary or {}
        eval_loss = s.get("final_eval_loss")
        train_loss = s.get("mean_loss_last_10")
        step = (s.get("timing_ms") or {}).get("step")
        memory = s.get("memory") or {}
        device = memory.get("device")
        peak = _fmt_bytes(memory.get("peak_allocated_bytes")) + (f" ({device})" if device and s.get("steps") else "")
        note = "; ".join(filter(None, [o.planned.notice, o.note.splitlines()[0][:90] if o.note else ""]))
        if o.reused:
            note = ("finished earlier; " + note).rstrip("; ")
        name = o.run_dir.name if o.run_dir is not None else o.planned.method
        rows.append((o.planned.group, name, o.status, _fmt_loss(eval_loss), _fmt_loss(train_loss),
                     peak if s.get("steps") else "-", "-" if step is None else f"{step:.0f} ms", note))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])
