#!/usr/bin/env bash
# Issue 18: train.compile_layers (experiments/layer_compile_run.py) through the harness on one GPU, as a user runs it:
# Llama 3-8B random init, the memory config's setting (bf16, checkpointing, batch 2 x 728 packed). Phases:
#   check       BAdam switching block every step (every layer compiles its graphs in the first block-epoch), none vs
#               inductor alternating per repeat (REPEATS, default "1 2"), STEPS steps (default 40)
#               -> runs/compile_layers; METHOD=lora runs LoRA (rank 100, the config's) the same way instead
#   lora-probe  LoRA eager vs inductor at lr 1e-6 with dropout 0.1 / 0 and at lr 1e-12 (adapters stay ~0), five
#               steps each, per-step losses printed -> runs/${PROBE_DIR:-lp}; PROBE_SET adds overrides to every run
#               (e.g. "model.dtype=fp32"). Its first runs (lora_probe/lp*) found inductor's defaults off in bf16, the
#               run with TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1 (lp_emulate) found that setting to agree with eager,
#               so LoRA's layers are now compiled with it (baselines/lora.py compile_layers_options)
# Each run's summary.json holds its step-time medians (steps that compiled left out), the compile stats and its
# command; the phase's folder is packed whole into $OUT/<folder>.tgz on every exit.
# Prepare here: scripts/gpu/time_session.sh prepare (the stand-in tokenizer .gpu/tok/smollm2 and the Alpaca-GPT4
# sample in .gpu/shared); carry .gpu/site, .gpu/tok/smollm2 and .gpu/shared/data/alpaca_gpt4.
# Set BADAM_SOURCE_COMMIT to the commit the tree is at (the GPU copy's .git is stale). On the CPU, with a tiny model
# and Dynamo's aot_eager in place of inductor:
#   COMPILE_CHECK_SMOKE=1 OUT=/tmp/cl BADAM_SOURCE_COMMIT=x PYTHON=.venv/bin/python \
#       bash scripts/gpu/compile_layers_check.sh [PHASE]
set -uo pipefail   # a failed run is reported and the next one still runs
phase=${1:-check}
case $phase in
    check|lora-probe) ;;
    *) echo "unknown phase $phase; choose check or lora-probe" >&2; exit 2 ;;
esac
here=$(pwd)
export PYTHONPATH=$here/.gpu/site:$here BADAM_SHARED=${BADAM_SHARED:-$here/.gpu/shared} HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export BADAM_SOURCE_COMMIT=${BADAM_SOURCE_COMMIT:?set BADAM_SOURCE_COMMIT}
py=${PYTHON:-python3}
work=runs/compile_layers compiled=inductor steps=${STEPS:-40} warmup=3
[ "$phase" = lora-probe ] && { work=runs/${PROBE_DIR:-lp} steps=5 warmup=1; }
common=(--config memory/llama3_8b_memory.yaml --refuse-existing --no-progress "model.tokenizer=$here/.gpu/tok/smollm2")
if [ -n "${COMPILE_CHECK_SMOKE:-}" ]; then   # the same commands on the CPU with a tiny Llama and Dynamo's aot_eager
  work=${work}_smoke compiled=aot_eager steps=4 warmup=1
  common=(--config memory/llama3_8b_memory.yaml --refuse-existing --no-progress model.source=random:tiny-llama
          model.dtype=fp32 data.max_length=32 data.max_samples=8 train.device=cpu)
fi
common+=("train.max_steps=$steps" "train.timing_warmup_steps=$warmup" "output.dir=$work" ${PROBE_SET:-})
mkdir -p "$work" "${OUT:?OUT must name the folder that comes back}"
trap 'tar -C "$(dirname "$work")" -czf "$OUT/$(basename "$work").tgz" "$(basename "$work")"' EXIT
run() {  # run NAME [overrides...]: one harness run, its log beside the run directories
    local name=$1; shift
    "$py" -m experiments.run "${common[@]}" "run_name=$name" "$@" > "$work/$name.log" 2>&1
    local rc=$?; echo "== $name rc $rc"; tail -n 2 "$work/$name.log"; return $rc
}
losses() {  # losses NAME: the run's per-step losses, one line
    "$py" -c "import json, sys; print([round(json.loads(line)['loss'], 4) for line in open(sys.argv[1])
                                      if 'loss' in line])" "$work/$1/metrics.jsonl"
}
case $phase in
    check)
        for r in ${REPEATS:-1 2}; do
            for backend in none "$compiled"; do
                if [ "${METHOD:-badam}" = lora ]; then
                    run "lora_${backend}_r$r" method.name=lora "train.compile_layers=$backend" &&
                        echo "   losses: $(losses "lora_${backend}_r$r")"
                else
                    run "badam_${backend}_r$r" method.name=badam method.badam.switch_block_every=1 \
                        method.badam.switch_mode=ascending "train.compile_layers=$backend"
                fi
            done
        done ;;
    lora-probe)
        for spec in "1e-6 0.1" "1e-6 0.0" "1e-12 0.1"; do
            set -- $spec
            for backend in none "$compiled"; do
                name=lora_${backend}_lr$1_dp$2
                run "$name" method.name=lora "method.lr=$1" "method.lora.dropout=$2" "train.compile_layers=$backend" &&
                    echo "   losses: $(losses "$name")"
            done
        done ;;
esac
