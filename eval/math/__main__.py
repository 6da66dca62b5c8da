"""CLI: python -m eval.math --model <source or run dir> [--datasets ...] [--limit N] [--batch-size B]
[--max-new-tokens T] [--prompt-style alpaca|chat] [--out DIR] [--device D] [--dtype T] [--overwrite] [--threads N]"""
from __future__ import annotations

import argparse
import sys

from . import DATASETS, DEFAULT_PROMPT_STYLE, PROMPT_STYLES, MathDataError, evaluate_source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.math", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="model source for experiments.models.load_model: alias, hub id, local folder or run dir")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated subset of: {','.join(DATASETS)} (default: all)")
    parser.add_argument("--limit", type=int, default=None,
                        help="items per dataset, spread evenly over the file (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default=DEFAULT_PROMPT_STYLE,
                        help="alpaca: MAmmoTH's Alpaca prompt (default, as in the paper); chat: the model's template")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/eval, or runs/eval/<model>)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="weight dtype (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="discard samples saved by an earlier run")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice). 1 is much faster on a CPU shared "
                             "with other jobs: two OpenMP threads then wait on each other (measured 5x slower)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch
        torch.set_num_threads(args.threads)
    try:
        results = evaluate_source(args.model, out=args.out, device=args.device, dtype=args.dtype,
                                  datasets=args.datasets, limit=args.limit, batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style,
                                  overwrite=args.overwrite)
    except MathDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, OSError, ImportError) as err:  # the model source: no such folder, file, package
        print(f"error: cannot load model {args.model!r}: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad option values, mismatched saved samples
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, entry in results["datasets"].items():
        print(f"{name:10s} {entry['accuracy_pct']:6.2f}%  ({entry['correct']}/{entry['total']})")
    print(f"{'average':10s} {results['average_accuracy_pct']:6.2f}%  ({results['generated_now']} generated in "
          f"{results['wall_time_s']:.0f} s) -> {results['results_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
