# The MT-bench judge's phases of scripts/gpu/quality_session.sh (sourced by it; uses its join_packaged,
# convert_model, pieces_here, pack and its variables here, out_root, BADAM_SHARED). The judge is the local
# Qwen2.5-Coder-1.5B-Instruct (alias qwen2.5-coder-1.5b-instruct). Its GGUF travels as .gpu/judge/j01..j24
# (scripts/gpu/prepare_carry.sh --with-judge; one piece per call, a call carries <= 64 MiB): the `wait` calls carry
# them while the suite trains in the background, e.g. a call with carry [".gpu/judge/j01",
# ".gpu/tok/qwen2.5-coder-1.5b-instruct"] and command `bash scripts/gpu/quality_session.sh wait 20`, then one call per
# piece j02..j24 the same way; `wait`, `check` and `pieces` say how many pieces are there (and which are missing).
# Both phases join the GGUF (sha256), convert it once (the carried tokenizer if the converted one is broken), run
# under `timeout` (S seconds from the phase's start, default 480, so that the pack still happens) and resume on a
# second call (judged items are skipped; the judge is loaded only when something is left to judge).
#   judge [S]     python3 -m eval.mtbench judge over every run directory of runs/quality-gpu/paper_mtbench_*/ whose
#                 answers are all there (the <stem>-base one included); packs $OUT/quality-judge.tgz. The judge's
#                 name is in every judgment record and names the scores file (eval/mtbench/scores_<judge>.json):
#                 table T5 shows it as the column "MT-bench (<judge>)"
#   validate-judge [S]  python3 -m eval.mtbench validate-judge: the judge scores the official answers of MT-bench's
#                 five reference models (gpt-4, gpt-3.5-turbo, vicuna-7b-v1.3, alpaca-13b, llama-13b; carried in
#                 .gpu/shared/data/mt_bench/model_answer, prepare_carry.sh --with-judge copies them) through the same
#                 code, 800 judgments, compared with their published GPT-4-judged scores; packs runs/
#                 mtbench_judge_validation/<judge> (judgments, scores, judge_validation.json and .md) into
#                 $OUT/judge-validation.tgz, to be unpacked into results/ (T5 reads results/mtbench_judge_validation)
# JUDGE_BATCH: prompts per generate call (default 80; ~30 GB on the GPU estimated for 80: 3.6 GB of bf16 weights, a KV
# cache of 28 KB a token = 9 GB for 80 x 4k tokens, prefill activations of <= 3k-token prompts; 160 ran on an H200,
# PROVENANCE_gpu_2026-11-25c.md). JUDGE_MAX_TOKENS: reply length (default 1024; FastChat asks GPT-4 for up to 2048, a
# longer reply of a 1.5B judge is a loop).

judge=qwen2.5-coder-1.5b-instruct
validation_dir=mtbench_judge_validation   # under runs/ here, under results/ once committed (plots/judges.py)

judge_pieces() { pieces_here .gpu/judge; }

# judge_ready: the judge's GGUF joined and checked, converted once
judge_ready() {
  join_packaged "$judge" .gpu/judge
  convert_model "$judge" ".gpu/tok/$judge"
}

# judge_timed LIMIT STARTED ARGS...: python3 -m eval.mtbench ARGS with the local judge on the GPU, stopped LIMIT
# seconds after STARTED ($SECONDS at the phase's start); prints how it ended
judge_timed() {
  local limit="$1" started="$2" left code
  shift 2
  left=$((limit - (SECONDS - started)))
  [ "$left" -gt 30 ] || { echo "no time left to judge (limit $limit s)" >&2; left=1; }
  set +e
  timeout "$left" python3 -m eval.mtbench "$@" --local-judge "$judge" --device cuda \
      --batch-size "${JUDGE_BATCH:-80}" --max-tokens "${JUDGE_MAX_TOKENS:-1024}"
  code=$?
  set -e
  [ "$code" = 124 ] && echo "judging stopped after $limit s: call $phase again to go on"
  echo "judge exit code: $code"
}

# judge_phase S: the answers of the quality profile's MT-bench runs
judge_phase() {
  local limit="$1" started=$SECONDS answered
  judge_ready
  [ -f "$out_root/DONE" ] || echo "note: the background suite is not done; judging the answers that are complete"
  # a machine of its own (no suite ran here): the committed runs with their answers and earlier judgments (judged
  # items are skipped), restored where missing; runs already here are kept as they are
  restore_finished_runs --groups 'paper_mtbench_*'
  mapfile -t answered < <(python3 -m eval.mtbench.runs "$out_root" 'paper_mtbench_*')
  if [ "${#answered[@]}" = 0 ]; then
    echo "no run directory under $out_root/paper_mtbench_*/ has all its MT-bench answers" >&2
  else
    judge_timed "$limit" "$started" judge --run-dir "${answered[@]}"
  fi
  nvidia-smi --query-gpu=name,memory.used --format=csv
  pack "quality-judge"
}

# validate_judge_phase S: the judge against GPT-4 on the five reference models (nothing starts without their answers)
validate_judge_phase() {
  local limit="$1" started=$SECONDS out="$here/runs/$validation_dir/$judge" missing
  missing="$(python3 -c "from pathlib import Path
from eval.mtbench.data import default_data_dir
from eval.mtbench.validation import load_reference_scores
folder = default_data_dir() / 'model_answer'
print(' '.join(f'{m}.jsonl' for m in load_reference_scores()['models'] if not (folder / f'{m}.jsonl').is_file()))")"
  if [ -n "$missing" ]; then
    echo "reference answers missing in $BADAM_SHARED/data/mt_bench/model_answer: $missing (carry" \
         ".gpu/shared/data/mt_bench, made by prepare_carry.sh --with-judge)" >&2
    exit 1
  fi
  judge_ready
  python3 -c "import scipy" 2>/dev/null ||
    echo "note: no scipy here: the judgments are made and packed, the agreement is computed where scipy is (the same" \
         "command again, nothing is judged twice)"
  judge_timed "$limit" "$started" validate-judge --out "$out"
  [ -f "$out/judge_validation.md" ] && cat "$out/judge_validation.md"
  nvidia-smi --query-gpu=name,memory.used --format=csv
  pack "judge-validation" "$validation_dir"
}
