"""Entry point of `python -m eval.superglue` (see eval/superglue/cli.py)."""
import sys

from eval.superglue.cli import main

sys.exit(main())
