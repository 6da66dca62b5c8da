#!/usr/bin/env bash
# Issue 18 probe: LoRA under train.compile_layers=inductor at Llama 3-8B (random init, bf16) trained to lower loss
# from step 2 than eager (compile_layers_check.sh). Eager vs inductor at lr 1e-6 with dropout 0.1 / 0, and at lr 1e-12
# (adapters stay ~0), five steps each; per-step losses printed. Carry as compile_layers_check.sh.
export PYTHONPATH=$PWD/.gpu/site:$PWD BADAM_SHARED=$PWD/.gpu/shared HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false BADAM_SOURCE_COMMIT=${BADAM_SOURCE_COMMIT:?}
mkdir -p runs/lp $OUT
for spec in "1e-6 0.1" "1e-6 0.0" "1e-12 0.1"; do set -- $spec; for c in none inductor; do
python3 -m experiments.run --config memory/llama3_8b_memory.yaml --no-progress model.tokenizer=$PWD/.gpu/tok/smollm2 train.max_steps=5 train.timing_warmup_steps=1 output.dir=runs/lp run_name=lora_${c}_lr$1_dp$2 method.name=lora method.lr=$1 method.lora.dropout=$2 train.compile_layers=$c > runs/lp/lora_${c}_lr$1_dp$2.log 2>&1
echo "$c lr $1 dropout $2 rc $?: $(python3 -c "import json;print([round(json.loads(l)['loss'],4) for l in open('runs/lp/lora_${c}_lr$1_dp$2/metrics.jsonl') if 'loss' in l])")"
done; done
tar -C runs -czf $OUT/lp.tgz lp
