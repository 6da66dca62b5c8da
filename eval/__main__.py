"""`python -m eval <evaluator> <run_dir>... [--options JSON] [--note-file PATH]`: one evaluator over run directories
(`python -m eval --list`: the evaluators).

Every evaluator is a package (or module) eval.<name> with the same entry, `evaluate_runs(run_dirs, **options) -> str`
(a short note), writing into <run_dir>/eval/. This command is how experiments.run_all runs a profile's evaluators: a
child process each, so the harness never imports anything above it (badam <- baselines <- experiments <- eval <-
plots) and each evaluator's memory is returned when it ends. An evaluator is found by name: adding one is a package
with evaluate_runs, nothing to register.

Exit codes: 0 done (the note goes to --note-file, else stdout), 1 the evaluator failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

EVAL_ROOT = Path(__file__).resolve().parent
ENTRY = "def evaluate_runs("


def evaluator_names() -> list[str]:
    """Modules and packages under eval/ that define evaluate_runs (found from their source, nothing imported)."""
    names = []
    for path in sorted(EVAL_ROOT.iterdir()):
        source = path / "__init__.py" if path.is_dir() else path
        if path.name.startswith("_") or source.suffix != ".py" or not source.is_file():
            continue
        if ENTRY in source.read_text(encoding="utf-8"):
            names.append(path.stem)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluator", nargs="?", help=f"one of: {', '.join(evaluator_names())}")
    parser.add_argument("run_dirs", nargs="*", type=Path, help="run directories to evaluate")
    parser.add_argument("--list", action="store_true", help="print the evaluators, one per line, and exit")
    parser.add_argument("--options", default="{}", help="the evaluator's options as a JSON object")
    parser.add_argument("--note-file", type=Path, help="write the evaluator's note here instead of stdout")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(evaluator_names()))
        return 0
    if not args.evaluator or not args.run_dirs:
        parser.error("give an evaluator and at least one run directory (or --list)")
    if args.evaluator not in evaluator_names():
        print(f"error: unknown evaluator {args.evaluator!r}; valid evaluators: {', '.join(evaluator_names())}",
              file=sys.stderr)
        return 2
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"error: --options must be a JSON object of the evaluator's options ({exc})", file=sys.stderr)
        return 2
    missing = [str(d) for d in args.run_dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"eval.{args.evaluator}")
    try:
        note = module.evaluate_runs(list(args.run_dirs), **options) or ""
    except Exception as exc:  # one line for the suite's report; the evaluator's own output shows the details
        bad_option = isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc)
        first_line = (str(exc).splitlines() or [""])[0]
        print(f"error: evaluator {args.evaluator}" + (": " if bad_option else " failed: ")
              + f"{type(exc).__name__}: {first_line}", file=sys.stderr)
        return 2 if bad_option else 1
    if args.note_file is not None:
        args.note_file.write_text(note, encoding="utf-8")
    else:
        print(note)
    return 0


if __name__ == "__main__":
    from experiments.process_env import exit_code_on_ctrl_c

    sys.exit(exit_code_on_ctrl_c(main, "each result an evaluator finished is kept in <run_dir>/eval/ (written "
                                       "atomically); rerun to evaluate the rest"))
