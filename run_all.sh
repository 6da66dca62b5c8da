#!/usr/bin/env bash
# The main job. See ./run_all.sh --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
usage() {
    cat <<'USAGE'
Usage: ./run_all.sh [--profile NAME] [--methods a,b] [--groups g1,g2] [--seeds 0,1] [--set section.key=value]...
                    [--output-dir DIR] [--jobs N] [--no-eval] [--no-plots] [--dry-run] [--list-profiles] [--help]

Runs the suite's main job: fine-tunes every method of a profile on the same data, runs the evaluators, builds the
tables, figures and <output dir>/report.md, and prints the method table (status, eval loss, mean train loss of the
last 10 steps, peak memory, median step time) and the total wall time.
The default profile (cpu) fits in 10 minutes on a 2-core CPU: SmolLM2-135M-Instruct, the paper's five methods and
SGD / BSGD, 2 seeds, 8 steps each on the cleaned Alpaca set, the rank of the Adam / BAdam / LoRA updates, and
runs/cpu/report.md, which checks the paper's claims against the runs. --profile cpu-smoke runs every registered
method briefly. Profiles live in experiments/configs/profiles/; results go to runs/<profile>/.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0;; esac
./scripts/setup_env.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
exec .venv/bin/python -m experiments.run_all "$@"
