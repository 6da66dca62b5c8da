#!/usr/bin/env bash
# The main job. See ./run_all.sh --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
usage() {
    cat <<'USAGE'
Usage: ./run_all.sh [--profile cpu|gpu-small|paper] [--help]

Runs the suite's main job: fine-tunes with every registered method on the same data, runs the evaluators,
and prints the method table. The default profile (cpu) fits in 10 minutes on a 2-core CPU.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0;; esac
./scripts/setup_env.sh
exec .venv/bin/python -m experiments.run_all "$@"
