#!/usr/bin/env bash
# The main job. See ./run_all.sh --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
usage() {
    cat <<'USAGE'
Usage: ./run_all.sh [--profile cpu|gpu-small|paper] [--methods a,b] [--groups g1,g2] [--set section.key=value]...
                    [--output-dir DIR] [--no-eval] [--no-plots] [--dry-run] [--list-profiles] [--help]

Runs the suite's main job: fine-tunes with every registered method on the same data, runs the evaluators,
and prints the method table (status, final loss, peak memory, median step time) and the total wall time.
The default profile (cpu) fits in 10 minutes on a 2-core CPU: SmolLM2-135M-Instruct on the Alpaca-GPT4
sample, 3 steps per method. Profiles live in experiments/configs/profiles/; results go to runs/<profile>/.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0;; esac
./scripts/setup_env.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
exec .venv/bin/python -m experiments.run_all "$@"
