#!/usr/bin/env bash
# The GPU measurements of issue 17 (time tables a reader can trust), one phase per device call, each under 10 minutes
# on one H100 / H200. Everything lands under $OUT (copied back by the device tools); commit it under results/.
#   prepare    (here, not on the GPU machine) what these runs need beyond scripts/gpu/prepare_carry.sh: the stand-in
#              tokenizers of the random models in .gpu/tok/{smollm2,minilm} and the Alpaca-GPT4 sample in .gpu/shared
#   check      (GPU machine) packages, GPU and the carried files: one line each
#   bench      badam vs badam 1.4 (and ours without checkpointing) at K=100 and K=1, 3 alternating repeats, with
#              torch.profiler diffs of the steady-state step            -> $OUT/bench/badam_vs_official_v3 (~5 min)
#   time       the paper-gpu-1 time comparison (BAdam, 1.4, LOMO with and without its norm pass, LoRA r8 in the paper's
#              setting and 3 variants), 3 alternating repeats in one warm process
#                                                                          -> $OUT/r/paper_time_llama3_8b (~5 min)
#   profiles   the paper_memtime runs whose paper setting changed (LOMO without norm pass, LoRA with 16-bit adapters),
#              then torch.profiler summaries of LOMO (with and without its norm pass), LoRA (fp32 and bf16 adapters)
#              and BAdam                                      -> $OUT/r/paper_memtime_llama3_8b, $OUT/profiles (~6 min)
#   time7b     optional: the Llama 2-7B time group (BAdam, LOMO, LoRA r8; batch 8), 3 repeats -> $OUT/r (~5 min)
# Carry .gpu/site, .gpu/ref, .gpu/shared and .gpu/tok (scripts/gpu/prepare_carry.sh, then `prepare`).
# Check the phases here before spending GPU time: TIME_SESSION_SMOKE=1 runs every phase's commands on the CPU with a
# tiny random Llama (a few steps, 2 repeats), e.g.
#   PYTHON=.venv/bin/python scripts/gpu/time_session.sh prepare
#   TIME_SESSION_SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/ts bash scripts/gpu/time_session.sh time
set -euo pipefail
phase="${1:?usage: time_session.sh prepare|check|bench|time|profiles|time7b}"
here="$(pwd)"
if [ "$phase" = prepare ]; then
  py="${PYTHON:-.venv/bin/python}"
  mkdir -p .gpu/tok .gpu/shared/data
  "$py" -c "from experiments.models import load_tokenizer
for name in ('smollm2', 'minilm'):
    load_tokenizer(name).save_pretrained('.gpu/tok/' + name)"
  cp -r ../shared/data/alpaca_gpt4 .gpu/shared/data/
  du -sh .gpu/tok/* .gpu/shared/data/alpaca_gpt4
  exit 0
fi
export PYTHONPATH="$here/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"
export BADAM_SHARED="${BADAM_SHARED:-$here/.gpu/shared}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
default_ref="$here/.gpu/ref"; [ -d "$default_ref/badam" ] || default_ref=/tmp/ref
export TOKENIZERS_PARALLELISM=false BADAM_OFFICIAL_PATH="${BADAM_OFFICIAL_PATH:-$default_ref}"
export BADAM_SOURCE_COMMIT="${BADAM_SOURCE_COMMIT:-unknown}"
out="${OUT:?OUT must name the folder that comes back}"
tok="$here/.gpu/tok/smollm2"
unpacked=(--set data.packing=false --set data.pad_to_max_length=false --set "model.tokenizer=$tok")
python3() { "${PYTHON:-python3}" "$@"; }   # the GPU machine's python3 has torch; PYTHON names another
repeats=3 tiny=() bench_tiny=() profile_steps=() middle_block=16   # Llama 3-8B: 32 layers
if [ -n "${TIME_SESSION_SMOKE:-}" ]; then   # the same commands at tiny size on the CPU (see the top)
  repeats=2 bench_tiny=(--tiny) profile_steps=(--steps 1) middle_block=1
  for item in model.source=random:tiny-llama model.dtype=fp32 data.max_length=32 data.max_samples=8 \
              data.eval_samples=0 train.max_steps=3 train.timing_warmup_steps=1 train.device=cpu; do
    tiny+=(--set "$item")
  done
fi

case "$phase" in
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "MISSING nvidia-smi"
    python3 -c "import torch, transformers, peft, lomo_optim; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'gpus', torch.cuda.device_count())" || echo "MISSING packages"
    for f in "$tok/tokenizer.json" "$here/.gpu/tok/minilm/tokenizer.json" "$BADAM_OFFICIAL_PATH/badam/block_optim.py" \
             "$BADAM_SHARED/data/alpaca_gpt4/alpaca_en_demo.json.gz"; do
      [ -f "$f" ] && echo "ok      $f" || echo "MISSING $f"
    done
    ;;
  bench)
    python3 benchmarks/badam_vs_official.py --out "$out/bench/badam_vs_official_v3" \
        --official-path "$BADAM_OFFICIAL_PATH" --optimizers ours,official,ours_nockpt --phases k100_steady,k1_epoch \
        --repeats $repeats --worker-timeout 200 --launch-deadline 480 \
        --profile-dir "$out/bench/badam_vs_official_v3/profiles" \
        "${bench_tiny[@]}"
    ;;
  time)
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_time_llama3_8b --repeats $repeats \
        --output-dir "$out/r" --set "model.tokenizer=$tok" --launch-deadline 480 --no-progress "${tiny[@]}"
    ;;
  time7b)
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_time_llama2_7b --repeats $repeats \
        --output-dir "$out/r" --set "model.tokenizer=$here/.gpu/tok/minilm" --launch-deadline 480 --no-progress \
        "${tiny[@]}"
    ;;
  profiles)
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_memtime_llama3_8b --methods lomo,lora \
        --once --fresh --output-dir "$out/r" --set "model.tokenizer=$tok" --no-progress "${tiny[@]}"
    profile=(benchmarks/profile_step.py --config memory/llama3_8b_memory.yaml --no-progress "${unpacked[@]}"
             "${tiny[@]}" "${profile_steps[@]}")
    python3 "${profile[@]}" --out "$out/profiles/lomo_norm_pass" --set method.name=lomo --set train.max_grad_norm=1.0
    python3 "${profile[@]}" --out "$out/profiles/lomo" --set method.name=lomo --set train.max_grad_norm=0
    for dtype in fp32 bf16; do
      python3 "${profile[@]}" --out "$out/profiles/lora_r8_$dtype" --set method.name=lora --set method.rank=8 \
          --set "method.adapter_dtype=$dtype"
    done
    python3 "${profile[@]}" --out "$out/profiles/badam" --set method.name=badam --set method.switch_mode=fixed \
        --set "method.start_block=$middle_block"
    rm -rf "$out"/profiles/*/run/checkpoint.pt
    ;;
  *) echo "unknown phase $phase (valid: prepare, check, bench, time, profiles, time7b)" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.used --format=csv || true
