"""python -m plots: every table (CSV, Markdown, LaTeX) and figure (PNG, PDF) of the paper from results/.

Output layout under --out (default results/tables_figures):
  tables/<ID>_<slug>.{csv,md,tex}   T1, T2, T3, T4, T5, T6, T11, T12, T13, T14, and LR (the learning rate each
                                    method's sweep chose; not a table of the paper)
  figures/<ID>_<slug>.{png,pdf}     F2, F3, F4
  index.md                          what was written, from which runs, which of the paper's claims hold at the
                                    scale of the runs, what was skipped and why, and what the paper does not give
See results/README.md for how runs map to rows.

A bad result never stops the others: an unreadable or incomplete summary.json skips its run, a broken evaluator file
or a torn line in metrics.jsonl leaves that part out, and a table that cannot be built is reported while the others
are written. Each is printed on stderr (one line, naming the file and why) and listed in index.md. Exit code: 0
(skipped results included, unless --strict), 1 when a table or figure could not be built (or, with --strict, when
anything was skipped), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from experiments.results import atomic_write_text  # plain file writing; imports no torch
from plots import claims, figures, tables_efficiency as eff, tables_lr, tables_quality as qual
from plots.judges import load_judge_validations
from plots.paper import PAPER_FILE, PaperValuesError, load_paper_values
from plots.runs import ResultsError, discover_runs
from plots.tables import write_table

REPO_ROOT = Path(__file__).resolve().parent.parent


def _model_configs(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model-config {item!r} must look like NAME=path/to/config.json")
        out[name] = Path(path)
    return out


def build_all(results: Path, out: Path, *, epoch_examples: int = eff.ALPACA_GPT4_EXAMPLES,
              model_configs: dict[str, Path] | None = None, paper_file: Path = PAPER_FILE,
              dpi: int = 130, problems: list[str] | None = None) -> dict[str, list[Path]]:
    """Write every table and figure; returns {ID: [paths]}. `problems` (if given) receives one line per result that
    was skipped or partly left out and per table or figure that could not be built ("... failed: ...")."""
    problems = [] if problems is None else problems
    doc = load_paper_values(paper_file)
    runs = discover_runs(results, exclude=out, skipped=problems)
    configs = eff.model_configs(model_configs)
    lr_problems: list[str] = []  # lr_selection.json files that could not be read
    judge_problems: list[str] = []  # judge_validation.json files that could not be read
    judge_validations = load_judge_validations(results, judge_problems)   # T5: how far each judge can be trusted
    builders = [
        ("T1", lambda: eff.build_t1(doc, runs, configs)),
        ("T2", lambda: eff.build_memory_split(doc, runs, "llama3-8b")),
        ("T12", lambda: eff.build_memory_split(doc, runs, "llama2-7b")),
        ("T3", lambda: eff.build_time(doc, runs, "llama3-8b", epoch_examples)),
        ("T13", lambda: eff.build_time(doc, runs, "llama2-7b", epoch_examples)),
        ("T4", lambda: eff.build_backward(doc, runs, "llama3-8b")),
        ("T14", lambda: eff.build_backward(doc, runs, "llama2-7b")),
        ("T5", lambda: qual.build_t5(doc, runs, judge_validations)),
        ("T6", lambda: qual.build_t6(doc, runs)),
        ("T11", lambda: qual.build_t11(doc, runs)),
        ("LR", lambda: tables_lr.build_lr(runs, results, lr_problems)),
    ]
    figure_builders = [
        ("F2", "optimization_capability", lambda: figures.figure_f2(runs)),
        ("F3", "bsgd_ablation", lambda: figures.figure_f3(doc, runs)),
        ("F4", "order_and_k_ablation", lambda: figures.figure_f4(runs)),
    ]
    written: dict[str, list[Path]] = {}
    titles: dict[str, str] = {}
    claim_lines: dict[str, str] = {}
    failed: list[str] = []
    for key, build in tqdm(builders, desc="tables", unit="table"):
        try:
            table = build()
            written[key] = write_table(table, out / "tables")
            titles[key] = table.title
            if table.claim:
                claim_lines[key] = table.claim
        except Exception as exc:  # one table's problem must not cost the others
            failed.append(f"table {key} failed: {type(exc).__name__}: {exc}")
    for key, slug, build in tqdm(figure_builders, desc="figures", unit="figure"):
        try:
            written[key] = figures.write_figure(build(), out / "figures", f"{key}_{slug}", dpi=dpi)
            titles[key] = slug.replace("_", " ")
            claim_lines[key] = claims.FIGURES[key](runs)
        except Exception as exc:
            failed.append(f"figure {key} failed: {type(exc).__name__}: {exc}")
    problems += [p for run in runs for p in run.problems] + lr_problems + judge_problems + failed
    _write_index(out, results, runs, doc, written, titles, problems, claim_lines)
    return written


def _write_index(out: Path, results: Path, runs, doc, written, titles, problems: list[str],
                 claim_lines: dict[str, str]) -> None:
    groups = Counter(r.group for r in runs)
    # relative to the working directory when inside it (`results` for the committed index), so that regenerating
    # the same runs in another checkout writes the same file
    try:
        shown = results.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = results.resolve()
    lines = ["# Tables and figures (generated by `python -m plots`; do not edit)", "",
             f"Runs read from `{shown}`: {len(runs)} in {len(groups)} group(s)."]
    lines += [f"- `{g}`: {n} run(s)" for g, n in sorted(groups.items())]
    lines += ["", "Paper values: " + doc["label"] + f" ({doc['paper']['venue']}, arXiv {doc['paper']['arxiv']}).",
              "Cells: 'no run' = nothing measured yet; 'not in paper' = the paper gives no number; "
              "'ratio' = ours / paper.", "", "## Outputs", ""]
    for key, paths in written.items():
        rel = ", ".join(f"`{p.relative_to(out)}`" for p in paths)
        lines.append(f"- **{key}** {titles[key]}: {rel}")
    if claim_lines:
        lines += ["", "## The paper's claims at the scale of the runs (computed from them)", ""]
        lines += [f"- **{key}**: {text}" for key, text in claim_lines.items()]
    if problems:
        lines += ["", "## Skipped or left out (and why)", ""]
        lines += [f"- {p}" for p in problems]
    lines += ["", "## What the paper does not give (left out of paper_values.json)", ""]
    lines += [f"- {m['item']}: {m['why']}" for m in doc["missing"]]
    atomic_write_text(out / "index.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results", help="results root (default results/)")
    parser.add_argument("--out", type=Path, help="output folder (default <results>/tables_figures)")
    parser.add_argument("--epoch-examples", type=int, default=eff.ALPACA_GPT4_EXAMPLES,
                        help="examples per epoch for T3/T13's derived epoch times (default: Alpaca-GPT4's 52002)")
    parser.add_argument("--model-config", action="append", default=[], metavar="NAME=CONFIG_JSON",
                        help="extra model for T1 from a Hugging Face config.json (repeatable)")
    parser.add_argument("--paper-values", type=Path, default=PAPER_FILE)
    parser.add_argument("--dpi", type=int, default=130, help="resolution of the PNG figures")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any result was skipped or left out")
    args = parser.parse_args(argv)
    out = args.out or args.results / "tables_figures"
    if args.epoch_examples < 1:
        parser.error(f"--epoch-examples must be >= 1, got {args.epoch_examples}")
    if not 20 <= args.dpi <= 1200:
        parser.error(f"--dpi must be in [20, 1200], got {args.dpi}")
    started = time.perf_counter()
    problems: list[str] = []
    try:
        written = build_all(args.results, out, epoch_examples=args.epoch_examples,
                            model_configs=_model_configs(args.model_config), paper_file=args.paper_values,
                            dpi=args.dpi, problems=problems)
    except (ResultsError, PaperValuesError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output cannot be written
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"wrote {sum(len(p) for p in written.values())} files for {len(written)} tables/figures to {out} "
          f"in {time.perf_counter() - started:.1f} s (index: {out / 'index.md'})"
          + (f"; {len(problems)} problem(s) listed above and in the index" if problems else ""))
    failed = any(" failed: " in p for p in problems)
    return 1 if failed or (args.strict and problems) else 0


if __name__ == "__main__":
    from experiments.process_env import exit_code_on_ctrl_c

    raise SystemExit(exit_code_on_ctrl_c(main, "every file written so far is whole (each is written atomically); "
                                               "rerun to write the rest"))
