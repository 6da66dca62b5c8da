#!/usr/bin/env bash
# Issue 18: train.compile_layers (experiments/layer_compile_run.py) through the harness on one GPU, as a user runs it:
# Llama 3-8B random init, the memory config's setting (bf16, checkpointing, batch 2 x 728 packed), BAdam switching
# block every step (every layer compiles its three graphs in the first block-epoch), none vs inductor alternating per
# repeat, then LoRA rank 100 with inductor (the peft path). Each run's summary.json holds its step-time medians
# (steps that compiled left out) and the compile stats; runs/compile_layers is packed whole into
# $OUT/compile_layers.tgz on every exit.
# Prepare here: scripts/gpu/time_session.sh prepare (the stand-in tokenizer .gpu/tok/smollm2 and the Alpaca-GPT4
# sample in .gpu/shared); carry .gpu/site, .gpu/tok/smollm2 and .gpu/shared/data/alpaca_gpt4.
# Set BADAM_SOURCE_COMMIT to the commit the tree is at (the GPU copy's .git is stale). On the CPU, with a tiny model:
#   COMPILE_CHECK_SMOKE=1 OUT=/tmp/cl BADAM_SOURCE_COMMIT=x PYTHON=.venv/bin/python bash scripts/gpu/compile_layers_check.sh
set -uo pipefail   # a failed run is reported and the next one still runs
here=$(pwd)
export PYTHONPATH=$here/.gpu/site:$here BADAM_SHARED=${BADAM_SHARED:-$here/.gpu/shared} HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 BADAM_SOURCE_COMMIT=${BADAM_SOURCE_COMMIT:?set BADAM_SOURCE_COMMIT}
py=${PYTHON:-python3}
work=runs/compile_layers backends=(none inductor)
common=(--config memory/llama3_8b_memory.yaml --refuse-existing --no-progress "model.tokenizer=$here/.gpu/tok/smollm2"
        "train.max_steps=${STEPS:-40}" train.timing_warmup_steps=3 "output.dir=$work")
if [ -n "${COMPILE_CHECK_SMOKE:-}" ]; then   # the same commands on the CPU with a tiny Llama and Dynamo's aot_eager
  work=runs/compile_layers_smoke backends=(none aot_eager)
  common=(--config memory/llama3_8b_memory.yaml --refuse-existing --no-progress "output.dir=$work"
          model.source=random:tiny-llama model.dtype=fp32 data.max_length=32 data.max_samples=8 train.max_steps=4
          train.timing_warmup_steps=1 train.device=cpu)
fi
mkdir -p "$work" "${OUT:?OUT must name the folder that comes back}"
trap 'tar -C "$(dirname "$work")" -czf "$OUT/compile_layers.tgz" "$(basename "$work")"' EXIT
run() {  # run NAME [overrides...]: one harness run, its log beside the run directories
    local name=$1; shift
    "$py" -m experiments.run "${common[@]}" "run_name=$name" "$@" > "$work/$name.log" 2>&1
    local rc=$?; echo "== $name rc $rc"; tail -n 2 "$work/$name.log"; return $rc
}
for r in ${REPEATS:-1 2}; do
    for backend in "${backends[@]}"; do
        run "badam_${backend}_r$r" method.name=badam method.badam.switch_block_every=1 \
            method.badam.switch_mode=ascending "train.compile_layers=$backend"
    done
done
run "lora_${backends[1]}" method.name=lora "train.compile_layers=${backends[1]}"
