#!/usr/bin/env bash
# Issue 18 probe: LoRA under train.compile_layers=inductor at Llama 3-8B (random init, bf16) trained to lower loss
# from step 2 than eager (compile_layers_check.sh). Eager vs inductor at lr 1e-6 with dropout 0.1 / 0, and at lr 1e-12
# (adapters stay ~0), five steps each; per-step losses printed. Carry as compile_layers_check.sh.
# The harness refuses LoRA under inductor since this probe ran: BADAM_ALLOW_REFUSED_COMPILE=1 runs it anyway.
# PROBE_DIR names the folder under runs/ (default lp), so a second probe on a warm machine keeps the first, e.g.
#   TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1 PROBE_DIR=lp_emulate ... (inductor rounds at each cast as eager does;
#   pytorch/pytorch#159239 traced an eager/inductor bf16 difference to casts inductor elides)
export BADAM_ALLOW_REFUSED_COMPILE=1 PYTHONPATH=$PWD/.gpu/site:$PWD BADAM_SHARED=$PWD/.gpu/shared HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false BADAM_SOURCE_COMMIT=${BADAM_SOURCE_COMMIT:?}
dir=runs/${PROBE_DIR:-lp}; mkdir -p $dir $OUT
for spec in "1e-6 0.1" "1e-6 0.0" "1e-12 0.1"; do set -- $spec; for c in none inductor; do
python3 -m experiments.run --config memory/llama3_8b_memory.yaml --no-progress model.tokenizer=$PWD/.gpu/tok/smollm2 train.max_steps=5 train.timing_warmup_steps=1 output.dir=$dir run_name=lora_${c}_lr$1_dp$2 method.name=lora method.lr=$1 method.lora.dropout=$2 train.compile_layers=$c > $dir/lora_${c}_lr$1_dp$2.log 2>&1
echo "$c lr $1 dropout $2 rc $?: $(python3 -c "import json;print([round(json.loads(l)['loss'],4) for l in open('$dir/lora_${c}_lr$1_dp$2/metrics.jsonl') if 'loss' in l])")"
done; done
tar -C runs -czf $OUT/${PROBE_DIR:-lp}.tgz ${PROBE_DIR:-lp}
