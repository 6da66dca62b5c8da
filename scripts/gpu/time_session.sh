#!/usr/bin/env bash
# The GPU measurements of issue 17 (time tables a reader can trust), one phase per device call, each under 10 minutes
# on one H100 / H200. A phase works in runs/time_session (git-ignored: it stays on a warm machine between calls, so a
# phase that stopped at its deadline, exit 3, continues when the same phase is called again) laid out like results/,
# and packs what it measured into $OUT/<phase>.tgz (one file: a device call returns at most 8, two folders deep);
# commit with `tar -xzf <phase>.tgz -C results`.
#   prepare    (here, not on the GPU machine) what these runs need beyond scripts/gpu/prepare_carry.sh: the stand-in
#              tokenizers of the random models in .gpu/tok/{smollm2,minilm} and the Alpaca-GPT4 sample in .gpu/shared
#   check      (GPU machine) packages, GPU and the carried files: one line each
#   bench      badam vs badam 1.4 (and ours without checkpointing) at K=100 and K=1, 3 alternating repeats, with
#              torch.profiler diffs of the steady-state step (BENCH_PHASES=k100_steady: K=100 only, about half the
#              time; BENCH_NAME names the folder: v3 (H200, unsettled) and v4 (H100, settled) are committed)
#              -> bench/${BENCH_NAME:-badam_vs_official_v5}
#   time       the paper-gpu-1 time comparison (BAdam, 1.4, LOMO with and without its norm pass, LoRA r8 in the paper's
#              setting and 3 variants), 3 alternating repeats in one warm process    -> paper_time_llama3_8b
#   profiles   the paper_memtime runs whose paper setting changed (LOMO without norm pass, LoRA with 16-bit adapters),
#              then torch.profiler summaries of LOMO (with and without its norm pass), LoRA (fp32 and bf16 adapters)
#              and BAdam                              -> paper_memtime_llama3_8b/<3 runs>, bench/profiles_issue17
#   time7b     optional: the Llama 2-7B time group (BAdam, LOMO, LoRA r8; batch 8), 3 repeats -> paper_time_llama2_7b
#   backward   T4 / T14 (the backward by scheme: BAdam with the input or the output block active, Adam bf16) at
#              Llama 3-8B and 2-7B, 3 alternating repeats       -> paper_backward_llama3_8b, paper_backward_llama2_7b
# Carry .gpu/site, .gpu/ref, .gpu/shared and .gpu/tok (scripts/gpu/prepare_carry.sh, then `prepare`). On a fresh
# machine a phase can also continue from an earlier call's pack: carry it as .gpu/resume/<phase>.tgz.
# Check the phases here before spending GPU time: TIME_SESSION_SMOKE=1 runs every phase's commands on the CPU with a
# tiny random Llama (a few steps, 2 repeats) in runs/time_session_smoke, e.g.
#   PYTHON=.venv/bin/python scripts/gpu/time_session.sh prepare
#   TIME_SESSION_SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/ts bash scripts/gpu/time_session.sh time
set -euo pipefail
phase="${1:?usage: time_session.sh prepare|check|bench|time|profiles|time7b|backward}"
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
export BADAM_SOURCE_COMMIT="${BADAM_SOURCE_COMMIT:-unknown}" PYTHONUNBUFFERED=1
out="${OUT:?OUT must name the folder that comes back}"
tok="$here/.gpu/tok/smollm2"
unpacked=(--set data.packing=false --set data.pad_to_max_length=false --set "model.tokenizer=$tok")
# the GPU machine's python3 has torch; PYTHON names another. `command`: without it, PYTHON unset made the function
# call itself until bash crashed (segmentation fault, exit 139, on the H200 of 2026-11-26)
python3() { command "${PYTHON:-python3}" "$@"; }
repeats=3 tiny=() bench_tiny=() profile_steps=() middle_block=16 work="$here/runs/time_session"  # Llama 3-8B: 32 layers
if [ -n "${TIME_SESSION_SMOKE:-}" ]; then   # the same commands at tiny size on the CPU (see the top)
  repeats=2 bench_tiny=(--tiny) profile_steps=(--steps 1) middle_block=1 work="$here/runs/time_session_smoke"
  for item in model.source=random:tiny-llama model.dtype=fp32 data.max_length=32 data.max_samples=8 \
              data.eval_samples=0 train.max_steps=3 train.timing_warmup_steps=1 train.device=cpu; do
    tiny+=(--set "$item")
  done
fi

bench_dir="bench/${BENCH_NAME:-badam_vs_official_v5}"   # the bench phase's folder under $work
case "$phase" in
  bench) keep=("$bench_dir") ;;
  time) keep=(paper_time_llama3_8b) ;;
  time7b) keep=(paper_time_llama2_7b) ;;
  backward) keep=(paper_backward_llama3_8b paper_backward_llama2_7b) ;;
  profiles) keep=(paper_memtime_llama3_8b bench/profiles_issue17) ;;
  check) keep=() ;;
  *) echo "unknown phase $phase (valid: prepare, check, bench, time, profiles, time7b, backward)" >&2; exit 2 ;;
esac
mkdir -p "$work" "$out"
if [ -f "$here/.gpu/resume/$phase.tgz" ] && [ ! -e "$work/${keep[0]}" ]; then   # a fresh machine, an earlier pack
  tar -xzf "$here/.gpu/resume/$phase.tgz" -C "$work" && echo "continuing from .gpu/resume/$phase.tgz"
fi
pack() {   # on every exit, also a deadline's (3) or a failure's: what finished comes back
  local status=$? present=()
  for path in "${keep[@]}"; do [ -e "$work/$path" ] && present+=("$path"); done
  if [ ${#present[@]} -gt 0 ]; then
    # a profile's own run folder stays behind: its summary.json would pass for a run of results/ (the profile's
    # where_time_goes_*.json keeps its timing and compute blocks)
    tar -C "$work" --exclude=checkpoint.pt --exclude='bench/profiles_issue17/*/run' -czf "$out/$phase.tgz" \
        "${present[@]}"
    ls -la "$out/$phase.tgz"
  fi
  nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null || true
  exit "$status"
}
trap pack EXIT

# profile_step for one method unless an earlier call of this phase already wrote it
profile() {
  local name="$1" method="$2"; shift 2
  local dest="$work/bench/profiles_issue17/$name"
  [ -f "$dest/where_time_goes_$method.json" ] && { echo "kept $name"; return 0; }
  python3 benchmarks/profile_step.py --config memory/llama3_8b_memory.yaml --out "$dest" --no-progress \
      --set "method.name=$method" "${unpacked[@]}" "${tiny[@]}" "${profile_steps[@]}" "$@"
}

case "$phase" in
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "MISSING nvidia-smi"
    python3 -c "import torch, transformers, peft, lomo_optim; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'gpus', torch.cuda.device_count())" || echo "MISSING packages"
    for f in "$tok/tokenizer.json" "$here/.gpu/tok/minilm/tokenizer.json" "$BADAM_OFFICIAL_PATH/badam/block_optim.py" \
             "$BADAM_SHARED/data/alpaca_gpt4/alpaca_en_demo.json.gz"; do
      [ -f "$f" ] && echo "ok      $f" || echo "MISSING $f"
    done
    ls "$work"
    ;;
  bench)
    dest="$work/$bench_dir"
    python3 benchmarks/badam_vs_official.py --out "$dest" --official-path "$BADAM_OFFICIAL_PATH" \
        --optimizers ours,official,ours_nockpt --phases "${BENCH_PHASES:-k100_steady,k1_epoch}" --repeats $repeats \
        --worker-timeout 200 \
        --launch-deadline 480 --profile-dir "$dest/profiles" "${bench_tiny[@]}"
    ;;
  time)
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_time_llama3_8b --repeats $repeats \
        --output-dir "$work" --set "model.tokenizer=$tok" --launch-deadline 480 --no-progress "${tiny[@]}"
    ;;
  time7b)
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_time_llama2_7b --repeats $repeats \
        --output-dir "$work" --set "model.tokenizer=$here/.gpu/tok/minilm" --launch-deadline 480 --no-progress \
        "${tiny[@]}"
    ;;
  backward)   # T4 / T14 under the protocol: the backward by scheme (input / output block active, all) 3 times, alternating
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_backward_llama3_8b --repeats $repeats \
        --output-dir "$work" --set "model.tokenizer=$tok" --launch-deadline 240 --no-progress "${tiny[@]}"
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_backward_llama2_7b --repeats $repeats \
        --output-dir "$work" --set "model.tokenizer=$here/.gpu/tok/minilm" --launch-deadline 480 --no-progress \
        "${tiny[@]}"
    ;;
  profiles)
    python3 benchmarks/time_protocol.py --profile paper-gpu-1 --groups paper_memtime_llama3_8b --methods lomo,lora \
        --once --output-dir "$work" --set "model.tokenizer=$tok" --no-progress "${tiny[@]}"
    profile lomo_norm_pass lomo --set train.max_grad_norm=1.0
    profile lomo lomo --set train.max_grad_norm=0
    profile lora_r8_fp32 lora --set method.rank=8 --set method.adapter_dtype=fp32
    profile lora_r8_bf16 lora --set method.rank=8 --set method.adapter_dtype=bf16
    profile badam badam --set method.switch_mode=fixed --set "method.start_block=$middle_block"
    ;;
esac
