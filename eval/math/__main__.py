"""CLI of the math evaluator.

    python -m eval.math --model M [--datasets gsm8k,math,...] [--task-file T.yaml ...] [--limit N] [--scoring S] ...
    python -m eval.math score (--datasets NAME | --task-file T.yaml) --predictions P.jsonl --out R.json [--scoring S]

Expected failures print one line starting with "error:": exit status 2 when the command line or a file it names is
wrong (unknown option or dataset, bad value, invalid task or predictions file, saved samples of other settings),
1 when the run fails (a data file or the model cannot be loaded, the GPU runs out of memory).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.generation import CACHE_MODES, check_generation_options

from . import (DEFAULT_PROMPT_STYLE, DEFAULT_SCORING, PROMPT_STYLES, SCORING_MODES, MathDataError, ModelLoadError,
               builtin_names, evaluate_source, resolve_tasks, score_predictions)

USAGE, RUN_FAILURE = 2, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        self.exit(USAGE, f"error: {message} (see {self.prog} --help)\n")


def _add_task_options(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--datasets", default=None,
                        help=f"comma-separated built-in datasets: {','.join(builtin_names())} ({default_help})")
    parser.add_argument("--task-file", action="append", default=[], metavar="T.yaml",
                        help="a dataset described by a task file (eval/math/README.md); repeatable")
    parser.add_argument("--scoring", choices=SCORING_MODES, default=DEFAULT_SCORING,
                        help="mammoth: MAmmoTH's rules, as the paper (default); strict: this project's stricter "
                             "rules (eval/math/README.md lists the differences)")


def _limit(text: str) -> int | dict[str, int]:
    """--limit N or NAME=N[,NAME=N] (argparse turns a ValueError into a one-line usage error)."""
    if "=" not in text:
        return int(text)
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    return {name.strip(): int(value) for name, value in pairs}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m eval.math", description="Zero-shot math evaluation (generate, then score). "
                     "`python -m eval.math score --help` scores outputs made elsewhere.")
    parser.add_argument("--model", required=True,
                        help="model source for experiments.models.load_model: alias, hub id, local folder, .gguf "
                             "file or run dir")
    _add_task_options(parser, "default: the paper's six unless --task-file is given")
    parser.add_argument("--limit", type=_limit, default=None,
                        help="items per dataset, spread evenly over the file (default: all); N for every dataset or "
                             "NAME=N[,NAME=N] for some, e.g. math=1000 (MATH is sorted by subject: a stratified subset)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default: 8 on CPU, "
                                                                      "128 on GPU)")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="at most this many prompt tokens (rows x longest prompt) per generate call: fewer rows "
                             "for the longest prompts (default: no cap)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default=DEFAULT_PROMPT_STYLE,
                        help="alpaca: MAmmoTH's Alpaca prompt (default, as in the paper); chat: the model's template")
    parser.add_argument("--cache", choices=CACHE_MODES, default="dynamic",
                        help="KV cache: dynamic (default) or static (fixed shapes; with --compile on CUDA)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decode step with torch.compile (needs --cache static; helps small models "
                             "on GPU, costs a compilation per shape)")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/eval, or runs/eval/<model>)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="weight dtype (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="discard samples saved by an earlier run")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice). 1 is much faster on a CPU shared "
                             "with other jobs: two OpenMP threads then wait on each other (measured 5x slower)")
    return parser


def build_score_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m eval.math score",
                     description="Score a model's outputs made elsewhere: P.jsonl holds one {\"idx\": <0-based item "
                                 "position>, \"output\": <text>} per line.")
    _add_task_options(parser, "exactly one dataset, or one --task-file")
    parser.add_argument("--predictions", required=True, metavar="P.jsonl")
    parser.add_argument("--out", required=True, metavar="R.json", help="where the accuracy and samples go")
    return parser


def _check_positive(args, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _run_score(argv) -> int:
    args = build_score_parser().parse_args(argv)
    tasks = resolve_tasks(args.datasets, args.task_file)
    if len(tasks) != 1 or (not args.datasets and not args.task_file):
        raise ValueError("score takes exactly one dataset: --datasets NAME or one --task-file T.yaml")
    if Path(args.out).resolve() == Path(args.predictions).resolve():
        raise ValueError("--out must not be the predictions file (it would be overwritten)")
    result = score_predictions(tasks[0], args.predictions, out=args.out, scoring=args.scoring)
    print(f"{result['task']:10s} {result['accuracy_pct']:6.2f}%  ({result['correct']}/{result['total']}, "
          f"{result['missing']} of {result['dataset_size']} items without a prediction, scoring {result['scoring']})"
          f" -> {args.out}")
    return 0


def _run_evaluate(argv) -> int:
    args = build_parser().parse_args(argv)
    _check_positive(args, ("threads", "batch_size", "max_batch_tokens", "max_new_tokens"))
    check_generation_options(args.cache, args.compile)
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    results = evaluate_source(args.model, out=args.out, device=args.device, dtype=args.dtype,
                              datasets=args.datasets, task_files=args.task_file, limit=args.limit,
                              batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                              max_new_tokens=args.max_new_tokens,
                              prompt_style=args.prompt_style, scoring=args.scoring, cache=args.cache,
                              compile=args.compile, overwrite=args.overwrite)
    for name, entry in results["datasets"].items():
        speed = f"{entry['tokens_per_s']:.0f} tok/s" if entry.get("tokens_per_s") else "-"
        print(f"{name:10s} {entry['accuracy_pct']:6.2f}%  ({entry['correct']}/{entry['total']}, {speed})")
    paper = results["paper_average_pct"]
    print(f"{'average':10s} {results['average_accuracy_pct']:6.2f}%  over {len(results['averaged_over'])} dataset(s)"
          + (f"; paper's six: {paper:.2f}%" if paper is not None else ""))
    print(f"{results['generated_now']} generated in {results['wall_time_s']:.0f} s, scoring {results['scoring']} "
          f"-> {results['results_file']}")
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["score"]:
            return _run_score(argv[1:])
        return _run_evaluate(argv)
    except SystemExit as done:  # argparse: --help (0) or a usage error, already printed on one line (2)
        return int(done.code or 0)
    except (MathDataError, ModelLoadError) as err:  # the run cannot proceed: data or model unavailable
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return RUN_FAILURE
    except ValueError as err:  # bad values, unknown datasets, invalid task / predictions files, settings mismatch
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return USAGE
    except Exception as err:  # noqa: BLE001 -- only the GPU's out-of-memory is expected; anything else re-raises
        if type(err).__name__ != "OutOfMemoryError":
            raise
        print(f"error: out of GPU memory ({_one_line(err)}); try a smaller --batch-size", file=sys.stderr)
        return RUN_FAILURE


if __name__ == "__main__":
    sys.exit(main())
