#!/usr/bin/env bash
# One H200 call (needs_h200: Adam-mini and Muon at Llama 2-7B need more than 80 GB): issue 16's peers in the Llama 2-7B
# memory/time group (as their Llama 3-8B rows: run_all --profile paper-gpu-1, random init, MiniLM's tokenizer as the
# stand-in for Llama 2's 32,000-token vocabulary), packed into $OUT/i16.tgz; then issue 17's BAdam vs badam 1.4 bench
# at K = 100 (time_session.sh bench, BENCH_PHASES=k100_steady: 3 alternating repeats with profile diffs) -> $OUT/bench.tgz.
# Carry .gpu/site .gpu/ref .gpu/shared/data/alpaca_gpt4 .gpu/tok/smollm2 .gpu/tok/minilm; set BADAM_SOURCE_COMMIT.
here="$(pwd)"
export PYTHONPATH="$here/.gpu/site:$here" BADAM_SHARED="$here/.gpu/shared" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p runs "$OUT"
timeout "${I16_LIMIT:-240}" python3 -m experiments.run_all --profile paper-gpu-1 \
    --groups warmup_shapes_llama2_7b,paper_memtime_llama2_7b \
    --methods badam,lisa,blockllm,adam_mini,muon,adamw_8bit,apollo --set model.tokenizer=.gpu/tok/minilm \
    --output-dir runs/i16 --no-eval --no-plots --no-progress > runs/i16.log 2>&1
echo "run_all exit code $?"; tail -n 14 runs/i16.log
tar -czf "$OUT/i16.tgz" --exclude='checkpoint.pt' --exclude='*.safetensors' runs/i16 runs/i16.log
BENCH_PHASES=k100_steady bash scripts/gpu/time_session.sh bench 2>&1 | tail -n 30
