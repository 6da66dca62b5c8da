"""python -m plots.report <results> [--title T]: the tables and figures of a results folder (python -m plots) and
report.md, one page saying what the runs show.

report.md holds, per model: each method's final eval loss (mean over the seeds of one setting, the one with the
most runs: never over an lr sweep or an ablation, plots.report_results.one_setting; ± half the seed range), lr,
peak memory, the memory split, median step / backward time and the effective rank of its update over the matrices it
changed (eval/rank.json); two figures of its own (eval loss against steps with the seed range as a band; the memory
split per method) and the paper's figures as `python -m plots` drew them; and the paper's qualitative claims, each
checked against these runs (CLAIMS below: every verdict is computed from the files, none is written by hand).

Two results count as different only when their seed ranges do not overlap (with two seeds: both runs of one method
are below both runs of the other); otherwise the verdict says the difference is within seed noise.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.results import atomic_write_text, replace_durably  # noqa: E402  (plain files; imports no torch)
from plots.__main__ import build_all  # noqa: E402
from plots.report_results import MIB, MethodResult, _mib, collect, unfinished  # noqa: E402
from plots.runs import discover_runs  # noqa: E402
from plots.style import method_color  # noqa: E402

REPORT_FILE = "report.md"
FIGURE_DIR = "report_figures"
# Drawing order: the paper's methods first, any other method after them in name order (colours: plots.style).
PREFERRED_ORDER = ("adam", "badam", "lora", "lomo", "galore", "sgd", "bsgd")
SPLIT_PARTS = ("parameters", "gradients", "optimizer_states", "activations", "other")


def method_order(methods) -> list[str]:
    return sorted(set(methods), key=lambda m: (PREFERRED_ORDER.index(m) if m in PREFERRED_ORDER else 99, m))


# --- the paper's claims ---------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    claim: str
    source: str
    verdict: str     # holds | does not hold | within seed noise | not measured
    evidence: str


def _lower(a: MethodResult | None, b: MethodResult | None) -> tuple[str, str]:
    """Is a's final eval loss below b's, beyond seed noise?"""
    if a is None or b is None or a.eval_loss is None or b.eval_loss is None:
        missing = [m for m, r in (("first", a), ("second", b)) if r is None or r.eval_loss is None]
        nonfinite = [f"{r.method} {'/'.join(sorted(set(r.nonfinite_eval_loss)))}" for r in (a, b)
                     if r is not None and r.eval_loss is None and r.nonfinite_eval_loss]
        return "not measured", f"no eval loss of the {' and '.join(missing)} method" + \
            (f" (non-finite: {', '.join(nonfinite)})" if nonfinite else "")
    la, lb = a.eval_loss, b.eval_loss
    text = f"{a.method} {la.text()} vs {b.method} {lb.text()}"
    if len(la.values) < 2 or len(lb.values) < 2:
        return ("holds" if la.mean < lb.mean else "does not hold") + " (one seed: noise unmeasured)", text
    if la.high < lb.low:
        return "holds", text
    if lb.high < la.low:
        return "does not hold", text
    return "within seed noise", text


def identical_methods(results: dict[str, MethodResult]) -> list[str]:
    """Lines for pairs of methods that reached the same final eval loss on every common seed (to 1e-6): the same
    update computed another way (e.g. LOMO is SGD fused into backward), with what each held in memory."""
    def by_seed(result: MethodResult) -> dict:
        return {(r.config.get("seed")): r.summary.get("final_eval_loss") for r in result.runs}

    lines = []
    names = method_order(results)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = by_seed(results[first]), by_seed(results[second])
            common = [seed for seed in a if seed in b and isinstance(a[seed], float) and isinstance(b[seed], float)]
            if common and all(abs(a[seed] - b[seed]) < 1e-6 for seed in common):
                lines.append(f"{first} and {second} reached the same eval loss on all {len(common)} common seed(s): "
                             f"the same update computed another way; peak memory {_mib(results[first].memory('peak'))}"
                             f" vs {_mib(results[second].memory('peak'))}.")
    return lines


def check_claims(results: dict[str, MethodResult]) -> list[Verdict]:
    get = results.get
    adam, badam, lora = get("adam"), get("badam"), get("lora")
    out = []

    def need(*pairs) -> str | None:
        missing = [name for name, result in pairs if result is None]
        return f"no run of {', '.join(missing)}" if missing else None

    def badam_below_adam(claim: str, source: str, value, unrecorded: str, evidence) -> Verdict:
        """BAdam's value under Adam's (memory, time); evidence(badam, adam) writes the numbers."""
        a, b = (value(adam), value(badam)) if not missing else (None, None)
        if missing or a is None or b is None:
            return Verdict(claim, source, "not measured", missing or unrecorded)
        return Verdict(claim, source, "holds" if b < a else "does not hold", evidence(b, a))

    # memory (paper Table 2): BAdam below Adam
    missing = need(("adam", adam), ("badam", badam))
    out.append(badam_below_adam("BAdam holds less memory than Adam", "Table 2", lambda r: r.memory("peak"),
                                "no peak memory recorded",
                                lambda b, a: f"peak allocated: badam {_mib(b)}, adam {_mib(a)} "
                                             f"({b / a:.0%} of Adam's)"))
    # gradients + optimizer states about 1/D of Adam's (Table 1: 16M/D vs 16M)
    claim, source = "BAdam's gradients and optimizer states are about 1/D of Adam's (D blocks)", "Table 1"
    parts = lambda r: (r.memory("gradients") or 0) + (r.memory("optimizer_states") or 0)  # noqa: E731
    if missing or not badam.num_blocks or not parts(adam) or not parts(badam):
        why = missing or ("no memory split or block count recorded" if not badam.num_blocks or not parts(adam) else
                          "BAdam's split was taken when its active block held no gradient or state (K = 1?)")
        out.append(Verdict(claim, source, "not measured", why))
    else:
        ratio, blocks = parts(badam) / parts(adam), badam.num_blocks
        out.append(Verdict(claim, source, "holds" if ratio <= 2 / blocks else "does not hold",
                           f"{_mib(parts(badam))} vs {_mib(parts(adam))}: {ratio:.3f} of Adam's; 1/D = "
                           f"{1 / blocks:.3f} (D = {blocks}; holds up to 2/D)"))
    # backward time (Table 4): the backward pass stops at the active block
    out.append(badam_below_adam("BAdam's backward pass is faster than Adam's (it stops at the active block)",
                                "Tables 3-4", lambda r: r.timing("backward"), "no backward time recorded",
                                lambda b, a: f"median backward: badam {b:.0f} ms, adam {a:.0f} ms ({b / a:.0%})"))
    # rank (Figure 2): BAdam's update is high-rank like Adam's; LoRA's is capped by r
    claim, source = "BAdam's update is high-rank like Adam's, LoRA's is capped by its rank", "Figure 2"
    ranks = {name: r.rank if r is not None else None for name, r in (("adam", adam), ("badam", badam), ("lora", lora))}
    if any(v is None for v in ranks.values()):
        out.append(Verdict(claim, source, "not measured", "no eval/rank.json of " +
                           ", ".join(k for k, v in ranks.items() if v is None)))
    else:
        r_adam, r_badam, r_lora = (ranks[k]["mean_effective_rank"] for k in ("adam", "badam", "lora"))
        cap = lora.option.get("rank")
        holds = r_badam >= 0.5 * r_adam and cap is not None and r_lora <= cap
        out.append(Verdict(claim, source, "holds" if holds else "does not hold",
                           f"mean effective rank over changed matrices: adam {r_adam:.0f}, badam {r_badam:.0f} "
                           f"({ranks['badam']['changed']} of {ranks['badam']['analysed']} matrices changed), "
                           f"lora {r_lora:.1f} (rank r = {cap}); holds when badam >= half of adam and lora <= r"))
    # optimization (Figure 2 left, Table 5)
    for first, second, claim, source in (
            ("badam", "lora", "BAdam reaches a lower loss than LoRA", "Figure 2"),
            ("badam", "lomo", "BAdam reaches a lower loss than LOMO", "Table 5 (MT-bench there, eval loss here)"),
            ("badam", "galore", "BAdam reaches a lower loss than GaLore", "Table 5 (MT-bench there, eval loss here)"),
            ("bsgd", "sgd", "BSGD reaches a lower loss than SGD", "Figure 3 (MT-bench there, eval loss here)")):
        verdict, evidence = _lower(get(first), get(second))
        out.append(Verdict(claim, source, verdict, evidence))
    # BAdam on par with Adam (Figure 3, Table 5): not above Adam beyond seed noise
    claim, source = "BAdam's loss is on par with Adam's", "Figure 3, Table 5"
    verdict, evidence = _lower(adam, badam)
    if verdict.startswith("holds"):
        verdict = "does not hold" + verdict[len("holds"):]
        evidence += " (Adam lower)"
    elif verdict.startswith("does not hold") or verdict == "within seed noise":
        verdict = "holds" + verdict[len("does not hold"):] if verdict.startswith("does not hold") else "holds"
    out.append(Verdict(claim, source, verdict, evidence))
    return out


# --- figures of the report ------------------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    replace_durably(tmp, path)
    return path


def eval_loss_figure(results: dict[str, MethodResult], title: str, path: Path) -> Path | None:
    """Eval loss against steps: the mean over seeds, the seed range as a band."""
    methods = method_order(m for m, r in results.items() if r.eval_curves())
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for method in methods:
        curves = results[method].eval_curves()
        frame = pd.concat([c.set_index("step")["eval_loss"].rename(i) for i, c in enumerate(curves)], axis=1)
        frame = frame.dropna()  # steps every seed evaluated
        color = method_color(method)
        ax.plot(frame.index, frame.mean(axis=1), color=color, lw=1.6,
                label=f"{method} ({len(curves)} seed{'s' * (len(curves) > 1)})", marker="o", ms=3)
        if len(curves) > 1:
            ax.fill_between(frame.index, frame.min(axis=1), frame.max(axis=1), color=color, alpha=0.2, lw=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out eval loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def memory_figure(results: dict[str, MethodResult], title: str, path: Path) -> Path | None:
    """The memory split of each method (median over its runs), stacked."""
    methods = [m for m in method_order(results) if results[m].memory("parameters") is not None]
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bottom = [0.0] * len(methods)
    for index, part in enumerate(SPLIT_PARTS):
        values = [(results[m].memory(part) or 0) / MIB for m in methods]
        ax.bar(methods, values, bottom=bottom, label=part.replace("_", " "),
               color=plt.get_cmap("Set2").colors[index])
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("MiB at the peak step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# --- the page -------------------------------------------------------------------------------------------------------
def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def method_table(results: dict[str, MethodResult]) -> list[str]:
    lines = ["| method | lr | final eval loss (mean ± half range) | train loss, last 10 steps | peak memory | "
             "step / forward / backward / update (ms, median) | effective rank of ΔW (changed matrices) |",
             "|---|---|---|---|---|---|---|"]
    for method in method_order(results):
        r = results[method]
        rank = r.rank
        ratio = "" if rank is None or rank["mean_rank_ratio"] is None else f"ratio {rank['mean_rank_ratio']:.2f}; "
        rank_text = "-" if rank is None else (f"{rank['mean_effective_rank']:.1f} ({ratio}{rank['changed']} of "
                                              f"{rank['analysed']} changed, {'/'.join(rank['types'])})")
        timing = " / ".join(_fmt_ms(r.timing(p)) for p in ("step", "forward", "backward", "update"))
        eval_loss = r.eval_loss.text() if r.eval_loss else "/".join(sorted(set(r.nonfinite_eval_loss))) or "-"
        if r.eval_loss and r.nonfinite_eval_loss:
            eval_loss += f" (and {len(r.nonfinite_eval_loss)} non-finite)"
        lines.append(f"| {method} | {', '.join(f'{lr:g}' for lr in r.lrs) or '-'} | "
                     f"{eval_loss} | {r.train_loss.text() if r.train_loss else '-'} "
                     f"| {_mib(r.memory('peak'))} | {timing} | {rank_text} |")
    return lines


def split_table(results: dict[str, MethodResult]) -> list[str]:
    lines = ["| method | " + " | ".join(p.replace("_", " ") for p in SPLIT_PARTS) + " |",
             "|---" * (len(SPLIT_PARTS) + 1) + "|"]
    for method in method_order(results):
        lines.append(f"| {method} | " + " | ".join(_mib(results[method].memory(p)) for p in SPLIT_PARTS) + " |")
    return lines


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:60] or "model"


def render(root: Path, title: str, collected: dict[str, dict[str, MethodResult]], written: dict[str, list[Path]],
           problems: list[str], failed: dict[str, list[str]] | None = None) -> str:
    lines = [f"# {title}", "",
             f"Generated by `python -m plots.report` from `{root}` on "
             f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}. Every number and verdict below is "
             "computed from the run directories; the tables and figures of the paper's layout are in "
             "`tables_figures/` (`index.md` lists them).", ""]
    failed = failed or {}
    if not collected:
        lines += ["No run ended ok under this folder, so there is nothing to report yet.", ""]
    for model in [m for m in failed if m not in collected]:
        lines += [f"## {model}", "", "Runs that ended without a result:", ""] + [f"- {x}" for x in failed[model]] + [""]
    for model, results in collected.items():
        runs = [run for r in results.values() for run in r.runs]
        devices = sorted({r.device for r in results.values()})
        lines += [f"## {model}", "",
                  f"{len(runs)} run(s) of {len(results)} method(s) on {', '.join(devices)}. "
                  "Differences count only beyond the seed range (module docstring of plots/report.py).", ""]
        lines += method_table(results) + [""]
        others = {name: r.other_settings for name, r in results.items() if r.other_settings}
        if others:
            lines += ["Each row holds the runs of one setting of its method, its seeds only differing (the setting "
                      "with the most runs); runs of other settings (lr sweeps, ablations) are in the tables, not "
                      "pooled here: " + ", ".join(f"{name} {len(runs)}" for name, runs in others.items()) + ".", ""]
        if failed.get(model):
            lines += ["Runs that ended without a result (not in the tables above):", ""]
            lines += [f"- {x}" for x in failed[model]] + [""]
        folder = root / FIGURE_DIR
        figures = [eval_loss_figure(results, f"{model}: eval loss (band: seed range)",
                                    folder / f"eval_loss_{_slug(model)}.png"),
                   memory_figure(results, f"{model}: memory split at the peak step",
                                 folder / f"memory_split_{_slug(model)}.png")]
        lines += [f"![{p.stem}]({_link(p, root)})" for p in figures if p is not None] + [""]
        lines += ["Memory split at the peak step (median over runs):", ""] + split_table(results) + [""]
        lines += ["### The paper's claims at this scale", "", "| claim (paper) | verdict | evidence |", "|---|---|---|"]
        lines += [f"| {v.claim} ({v.source}) | **{v.verdict}** | {v.evidence} |" for v in check_claims(results)]
        lines.append("")
        lines += [f"- {line}" for line in identical_methods(results)] + [""] * bool(identical_methods(results))
    pngs = [p for key in sorted(written) if key.startswith("F") for p in written[key] if p.suffix == ".png"]
    if pngs:
        lines += ["## The paper's figures from these runs", ""]
        lines += [f"![{p.stem}]({_link(p, root)})" for p in pngs] + [""]
    models = [m.lower() for m in collected]
    tables = [p for key in sorted(written) if key.startswith("T") for p in written[key] if p.suffix == ".md"
              and any(m in p.read_text(encoding="utf-8").lower() for m in models)]
    if tables:
        lines += ["Tables holding these runs: " + ", ".join(f"[{p.stem}]({_link(p, root)})"
                                                           for p in tables), ""]
    if problems:
        lines += ["## Left out (and why)", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def _link(path: Path, root: Path) -> str:
    """report.md's link to `path`: relative to the report's folder, also when --out puts the figures outside it."""
    return Path(os.path.relpath(path, root)).as_posix()


def write_report(root: Path, *, title: str | None = None, out: Path | None = None,
                 problems: list[str] | None = None) -> tuple[Path, int]:
    """Build every table and figure into <root>/tables_figures (or `out`) and write <root>/report.md. Returns
    (report path, number of table and figure files); `problems` (if given) receives the results skipped or left out."""
    root = Path(root)
    out = out or root / "tables_figures"
    problems = [] if problems is None else problems
    written = build_all(root, out, problems=problems)
    runs = discover_runs(root, exclude=out, skipped=[])  # build_all named the skipped ones in `problems`
    collected = collect(runs)
    text = render(root, title or f"Results in {root.name}", collected, written, problems, unfinished(runs))
    path = root / REPORT_FILE
    atomic_write_text(path, text + "\n")
    return path, sum(len(p) for p in written.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results folder (e.g. runs/cpu or results/)")
    parser.add_argument("--title", help="the page's title (default: the folder's name)")
    parser.add_argument("--out", type=Path, help="where the tables and figures go (default <results>/tables_figures)")
    parser.add_argument("--note-file", type=Path, help="write a one-line summary here (experiments.run_all reads it)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: results folder {args.results} does not exist", file=sys.stderr)
        return 2
    problems: list[str] = []
    path, files = write_report(args.results, title=args.title, out=args.out, problems=problems)
    for problem in problems:  # one line each, as python -m plots prints them; report.md lists them too
        print(problem, file=sys.stderr)
    note = f"plots: {files} table and figure files in {args.out or args.results / 'tables_figures'}; report: {path}"
    if problems:
        note += f"; {len(problems)} result(s) skipped or left out (listed in the report)"
    if args.note_file is not None:
        args.note_file.write_text(note, encoding="utf-8")
    print(note)
    return 0


if __name__ == "__main__":
    from experiments.process_env import exit_code_on_ctrl_c

    raise SystemExit(exit_code_on_ctrl_c(main, "every file written so far is whole (each is written atomically); "
                                               "rerun to write the rest"))
