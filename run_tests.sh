#!/usr/bin/env bash
# The test command: sets up .venv on first use (scripts/setup_env.sh), then runs the CPU test suite on
# $BADAM_TEST_WORKERS pytest-xdist workers (default 2). Extra arguments go to pytest, e.g. ./run_tests.sh tests/badam -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
# Busy-waiting OpenMP threads starve the other worker on a 2-core machine (a small SVD went from 0.16 s to 13 s).
export OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest -n "${BADAM_TEST_WORKERS:-2}" "$@"
