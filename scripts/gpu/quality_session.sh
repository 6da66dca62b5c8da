#!/usr/bin/env bash
# One GPU session of the quality profile (issue 11) on a lent machine that has torch/transformers/peft but no
# registry: the wheels it lacks (galore-torch, lomo-optim, a bitsandbytes slimmed to its CPU and CUDA 13 libraries,
# gguf) travel unpacked in .gpu/site, the shared data it needs in .gpu/shared, and the Gemma-3-270M GGUF in pieces
# .gpu/parts/p01..pNN/ (one piece per call: a call carries at most 64 MiB, the checkout included; prepare_carry.sh sizes
# them; p01 holds the manifest), Gemma's tokenizer in .gpu/tok/gemma3 (all built by scripts/gpu/prepare_carry.sh).
# Calls: 1 carries .gpu/site .gpu/shared/data/alpaca_cleaned .gpu/shared/data/mt_bench .gpu/ref .gpu/tok/gemma3
# .gpu/parts/p01 and runs `check` (it prints "gemma pieces here: N of M"); the next pieces one per call (any command,
# e.g. `pieces`); the last piece's call runs `start`; then `wait S`. Phases:
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
#   judge [S]     MT-bench judging of the runs' answers by the local judge Qwen2.5-Coder-1.5B-Instruct, and
#   validate-judge [S]  the same judge scoring MT-bench's five reference models against their published GPT-4
#                 scores: both in scripts/gpu/judge_lib.sh (sourced below), which says how the judge is carried
# SuperGLUE part (group paper_superglue_mpnet, the T11 analogue; the phases above leave it out): all-mpnet-base-v2 as a
# fp32 copy in pieces .gpu/mpnet/m01.. (scripts/gpu/prepare_carry.sh --with-mpnet; manifest.txt and sha256.txt
# in m01), its data in .gpu/shared/data/superglue. Calls: the pieces one per call (any phase, e.g. `wait 20` or
# `check`), then
#   mpnet         join the pieces (sha256), unpack the copy where the mpnet alias finds it (<cache>/carried/) once its
#                 tokenizer encodes as on the machine that made it and it loads
#   superglue     mpnet, then in the background (setsid, as start) run_all --profile quality-gpu --groups
#                 paper_superglue_mpnet: the superglue evaluator fine-tunes the 9 run directories, 9 processes over the
#                 GPUs (~9 min estimated on 2 x H100). Run it when the Gemma suite is done, not beside it
#   superglue-wait S  follow it for up to S seconds: tasks done per run directory, then pack
#   superglue-sweep  the same for the SuperGLUE lr sweep (lr_sweep_superglue_mpnet: adam, badam, lora x 3 lrs, seed
#                 0, COPA, WiC, RTE; 9 run directories, ~6-7 min estimated on 2 x H100). With
#                 SWEEP_GROUPS=lr_sweep_superglue_mpnet,paper_superglue_mpnet_sweptlr the same background run_all adds
#                 seeds 1 and 2 at each method's chosen lr after the sweep's evaluator (~4-5 min more);
#                 SWEEP_GROUPS=paper_superglue_mpnet_sweptlr runs them alone, from the sweep under results/ (restored)
#   superglue-sweep-wait S  follow it, then pack both groups into $OUT/quality-superglue-sweep.tgz
# Math (T6 analogue; the profile's groups *_qwen25_coder_05b), a session of its own: Qwen2.5-Coder-0.5B-Instruct travels
# as .gpu/math/m01..m11 (prepare_carry.sh --with-math), one piece per call: call 1 carries .gpu/site
# .gpu/shared/data/gsm8k .gpu/shared/data/math_eval .gpu/tok/qwen2.5-coder-0.5b-instruct .gpu/math/m01 and runs
# `check` (it prints "math pieces here: N of 11"); calls 2-10 carry m02..m10 (`pieces`); call 11 carries m11 and runs
#   math-start    join and check the GGUF (each piece's sha256, then the whole), convert it once (the carried tokenizer
#                 if the converted one is broken; the judge's .gpu/tok folder serves too: same tokenizer.json), the
#                 attention check on the math config, then in the background (setsid)
#                 run_all --profile quality-gpu --groups "$MATH_GROUPS" (default '*_qwen25_coder_05b'): the lr sweep
#                 and the five runs, and beside it evaluate_when_done.py --each: eval.math of the base model at once
#                 and of each of the five as soon as it is final (up to 3 per GPU), so a session cut short keeps
#                 every run already evaluated (weights never come back)
#   math-wait S   follow it for up to S seconds, then pack the math groups into $OUT/quality-math.tgz (no weights, no
#                 samples) and their eval.math samples into $OUT/quality-math-samples.tar.xz (split at 15 MiB)
#   math-bench [S], math-bench-wait S  issue 15's benchmarks/math_generation.py on the joined model, alone on the GPU
#                 (run it before math-start), in the background; -wait packs it into $OUT/math-bench.tgz (no samples)
# Finished runs committed under results/ are restored first, so a second session goes on where the first stopped.
# Every phase but check packs runs/quality-gpu (no model weights, no checkpoints, no eval.math samples) into
# $OUT/quality-*.tgz. Reproduce on any CUDA machine with the packages installed: ./run_all.sh --profile quality-gpu
set -euo pipefail
usage="usage: quality_session.sh check|pieces|attention|start|wait S|judge [S]|validate-judge [S]|run S1 S2|finish S1 S2"
usage+="|mpnet|superglue|superglue-wait S|superglue-sweep|superglue-sweep-wait S|math-start|math-wait S"
usage+="|math-bench [S]|math-bench-wait S"
phase="${1:?$usage}"
here="$(pwd)"
export PYTHONPATH="$here/.gpu/site:$here${PYTHONPATH:+:$PYTHONPATH}"
export BADAM_SHARED="$here/.gpu/shared" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export BADAM_SOURCE_COMMIT="${BADAM_SOURCE_COMMIT:-unknown}"
jobs="${JOBS:-10}"
out_root="$here/runs/quality-gpu"

# shellcheck source=scripts/gpu/judge_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/judge_lib.sh"   # the judge: $judge, judge_pieces, judge_phase, validate_judge_phase
# the profile's parts by model (run_all --groups patterns): the Gemma phases train only theirs. RESTORE_GROUPS: what
# `start` restores (default the same); GEMMA_GROUPS=time_solo_gemma3_270m RESTORE_GROUPS=lr_sweep_gemma3_270m retimes
# every solo run on this machine (solo runs are compared only on one device kind)
gemma_groups="${GEMMA_GROUPS:-*_gemma3_270m}" restore_groups="${RESTORE_GROUPS:-$gemma_groups}"
math_groups="${MATH_GROUPS:-*_qwen25_coder_05b}"
math_alias=qwen2.5-coder-0.5b-instruct
math_config=quality/qwen25_coder_05b_gsm8k.yaml
bench_name="${BENCH_NAME:-math_generation_h100}"   # math-bench's output folder (results/bench/<name> once committed)
# the SuperGLUE lr sweep and the seeds at its chosen lrs (superglue-sweep; SWEEP_GROUPS picks which of the two run)
sweep_seeds=paper_superglue_mpnet_sweptlr
sweep_groups="${SWEEP_GROUPS:-lr_sweep_superglue_mpnet}"

# join_pieces TARGET SHA256 PIECE...: the pieces concatenated into TARGET once, checked before it is put in place
join_pieces() {
  local target="$1" want="$2" got
  shift 2
  [ -f "$target" ] && return 0
  mkdir -p "$(dirname "$target")"
  cat "$@" > "$target.partial"
  got="$(sha256sum "$target.partial" | cut -c1-64)"
  if [ "$got" != "$want" ]; then
    rm -f "$target.partial"
    echo "$(basename "$target"): sha256 mismatch ($got) from $# pieces" >&2
    exit 1
  fi
  mv "$target.partial" "$target"
}

# join_gguf: the Gemma GGUF from .gpu/parts (cut by scripts/gpu/carry_gguf.py, as the judge and math models): every
# piece of the manifest there with its size and sha256, joined in manifest order, the whole file checked
join_gguf() {
  if [ -e .gpu/parts/p1 ] && [ ! -e .gpu/parts/p01 ]; then
    echo ".gpu/parts holds pieces cut by an older prepare_carry.sh (p1/gemma.part1, no manifest): run it again" >&2
    exit 1
  fi
  join_packaged gemma3-270m .gpu/parts
}

# pieces_here DIR: "N of M": how many of the pieces listed in DIR's manifest (in its first piece's folder, e.g.
# .gpu/judge/j01/manifest.txt) are here with the right size; the missing ones on stderr
pieces_here() {
  local dir="$1" manifest have=0 total=0 missing=() piece size
  manifest="$(ls "$dir"/*01/manifest.txt 2>/dev/null | head -1)"
  [ -n "$manifest" ] || { echo "0 of ? (no manifest in $dir yet: carry its first piece)"; return; }
  while read -r piece size _; do
    total=$((total + 1))
    if [ -f "$dir/$piece" ] && [ "$(stat -c %s "$dir/$piece")" = "$size" ]; then
      have=$((have + 1))
    else
      missing+=("$(dirname "$piece")")
    fi
  done < "$manifest"
  echo "$have of $total"
  [ "${#missing[@]}" = 0 ] || echo "$(basename "$dir") pieces missing: ${missing[*]}" >&2
}

# join_packaged ALIAS DIR: the pieces of DIR (all there, each matching its manifest sha256 where one is listed)
# joined in manifest order into <cache>/models/<file> and checked against experiments.models' sha256
join_packaged() {
  local alias="$1" dir="$2" count target sha manifest piece size want pieces=() damaged=()
  read -r target sha < <(python3 -c "from experiments.models import PACKAGED_GGUFS as P
from experiments.gguf_cache import cache_dir
spec = P['$alias']; print(cache_dir() / 'models' / spec.file_name, spec.sha256)")
  [ -n "$sha" ] || { echo "experiments.models knows no $alias" >&2; exit 1; }
  [ -f "$target" ] && return 0   # joined by an earlier call (its pieces may be gone)
  count="$(pieces_here "$dir")"
  [ "${count%% of*}" = "${count##*of }" ] || { echo "$(basename "$dir") GGUF incomplete: $count pieces here" >&2; exit 1; }
  manifest="$(ls "$dir"/*01/manifest.txt | head -1)"
  while read -r piece size want; do
    pieces+=("$dir/$piece")
    [ -z "$want" ] || [ "$(sha256sum "$dir/$piece" | cut -c1-64)" = "$want" ] || damaged+=("$(dirname "$piece")")
  done < "$manifest"
  [ "${#damaged[@]}" = 0 ] || { echo "$(basename "$dir") pieces damaged (sha256): ${damaged[*]}" >&2; exit 1; }
  join_pieces "$target" "$sha" "${pieces[@]}"
}

# the math model's tokenizer converted by prepare_carry.sh: its own, else the judge's (the same tokenizer.json; the
# chat templates differ only in the tool-call instructions, which no prompt here uses)
math_tokenizer() {
  local dir
  for dir in ".gpu/tok/$math_alias" ".gpu/tok/$judge"; do [ -d "$dir" ] && { echo "$dir"; return; }; done
  echo ".gpu/tok/$math_alias"
}

# join_mpnet: all-mpnet-base-v2 (the copy made by scripts/gpu/carry_model.py) from .gpu/mpnet/m01.. in manifest
# order, checked against m01/sha256.txt, unpacked where the mpnet alias finds it (experiments.paths.carried_folder)
join_mpnet() {
  local root=.gpu/mpnet name=all-mpnet-base-v2 folder count pieces
  folder="$(python3 -c "from experiments.paths import carried_folder; print(carried_folder('$name'))")"
  [ -f "$folder/carried.json" ] && { echo "$name: $folder is there"; return 0; }
  count="$(pieces_here "$root")"
  [ "${count%% of*}" = "${count##*of }" ] || { echo "mpnet copy incomplete: $count pieces here" >&2; exit 1; }
  mapfile -t pieces < <(sed "s|^\([^ ]*\) .*|$root/\1|" "$root/m01/manifest.txt")
  join_pieces "$folder.tar.gz" "$(cut -c1-64 "$root/m01/sha256.txt")" "${pieces[@]}"
  python3 "$(dirname "${BASH_SOURCE[0]}")/carry_model.py" unpack --archive "$folder.tar.gz" --name "$name"
  rm -f "$folder.tar.gz"
}

# convert_model ALIAS CARRIED: the alias converted once (experiments.models.resolve_alias). The GPU machine's
# transformers (5.17) converted Gemma-3's GGUF tokenizer without its merges (one token per character;
# experiments.models.check_subword_tokenizer refuses it): when the converted tokenizer fails that check or encodes
# differently from the one converted by prepare_carry.sh (CARRIED, e.g. .gpu/tok/gemma3; *.gz files gunzipped), the
# carried one replaces it and is checked again.
convert_model() {
  local alias="$1" carried="$2" folder file
  folder="$(python3 -c "from experiments.models import resolve_alias; print(resolve_alias('$alias'))" | tail -1)"
  [ -d "$folder" ] || { echo "$alias could not be converted" >&2; exit 1; }
  if ! python3 - "$folder" "$carried" 2>/dev/null <<'PY'; then
# exit 0 when the converted tokenizer passes load_tokenizer's check and, where a carried one is there, encodes plain
# text and a rendered chat exactly as the carried one does (a conversion can keep its merges and still differ)
import gzip, shutil, sys, tempfile
from pathlib import Path
from experiments.models import load_tokenizer
converted, carried = load_tokenizer(sys.argv[1]), Path(sys.argv[2])
if carried.is_dir():
    with tempfile.TemporaryDirectory() as tmp:
        for file in carried.iterdir():
            if file.suffix == ".gz":
                (Path(tmp) / file.stem).write_bytes(gzip.decompress(file.read_bytes()))
            else:
                shutil.copy(file, tmp)
        reference = load_tokenizer(tmp)
    chat = [{"role": "user", "content": "Rate the answer: 2 + 2 = 4. Écrivez «merci» ☺"}]
    texts = ["Below is an instruction that describes a task.\n\n  def f(x):\treturn x**2  # 12345 ✓"]
    if converted.chat_template and reference.chat_template:
        texts.append(reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    sys.exit(0 if all(converted(t)["input_ids"] == reference(t)["input_ids"] for t in texts) else 1)
PY
    [ -f "$carried/tokenizer.json.gz" ] || { echo "broken tokenizer in $folder, none in $carried" >&2; exit 1; }
    for file in "$carried"/*; do
      case "$file" in
        *.gz) gunzip -c "$file" > "$folder/$(basename "$file" .gz)" ;;
        *) cp "$file" "$folder/" ;;
      esac
    done
    python3 -c "from experiments.models import load_tokenizer; load_tokenizer('$folder')"
    echo "tokenizer of $folder replaced by $carried: sha256 $(sha256sum "$folder/tokenizer.json" | cut -c1-16)"
  fi
}

# Finished runs committed under results/ are not trained again; those whose weights an evaluator still needs are
# (scripts/gpu/restore_runs.py).
restore_finished_runs() {
  python3 scripts/gpu/restore_runs.py --profile quality-gpu --results results --output-dir "$out_root" "$@"
}

# attention [CONFIG NAME]: scripts/gpu/attention_check.py on CONFIG's first batch into $OUT/NAME.json and the output
attention() {
  local config="${1:-quality/gemma3_270m_alpaca.yaml}" name="${2:-attention_check}"
  mkdir -p "$OUT"
  python3 scripts/gpu/attention_check.py --config "$config" --rows 4 --out "$OUT/$name.json"
  mkdir -p "$out_root" && cp "$OUT/$name.json" "$out_root/$name.json"
}

# attention_ok FILE: the GPU's loss of the first batch (sdpa, bf16: the harness default) within 5% of the CPU's
attention_ok() {
  python3 - "$1" <<'PY'
import json, sys
losses = json.load(open(sys.argv[1]))["losses"]
ref, gpu = losses["cpu fp32 (reference)"], losses["cuda sdpa bf16"]
print(f"first batch: cpu fp32 {ref:.4f}, cuda sdpa (harness default) bf16 {gpu:.4f}")
sys.exit(0 if isinstance(gpu, float) and abs(gpu - ref) <= 0.05 * ref else 1)
PY
}

# pack NAME [PATH...]: runs/quality-gpu, or the PATHs under runs/, into $OUT/NAME.tgz, without weights or checkpoints
pack() {
  local name="$1"
  shift
  mkdir -p "$OUT"
  tar -C "$here/runs" --exclude='*/model' --exclude='checkpoint.pt' --exclude='*.safetensors' \
      --exclude='*/eval/math/*.jsonl' -czf "$OUT/$name.tgz" "${@:-quality-gpu}"
  ls -la "$OUT"
}

# pack_math: the math groups (no weights, no samples) with their logs into $OUT/quality-math.tgz, and eval.math's
# samples (every generation, tens of MB) into $OUT/quality-math-samples.tar.xz, split at 15 MiB (a file that comes back
# holds at most 16 MiB)
pack_math() {
  local pattern dir log patterns members=() samples=()
  mkdir -p "$OUT"
  IFS=, read -ra patterns <<< "$math_groups"
  shopt -s nullglob
  for pattern in "${patterns[@]}"; do
    for dir in "$out_root"/$pattern/; do
      dir="$(basename "$dir")"
      members+=("$dir")
      for log in "$out_root/logs/$dir".*; do members+=("logs/$(basename "$log")"); done
      samples+=("$out_root/$dir"/*/eval/math/*.jsonl)
    done
  done
  for dir in math.log math.exit math_evaluators.log attention_check_math.json; do
    [ -f "$out_root/$dir" ] && members+=("$dir")
  done
  shopt -u nullglob
  [ "${#members[@]}" -gt 0 ] || { echo "nothing of the math part under $out_root yet"; return 0; }
  tar -C "$out_root" --exclude='*/model' --exclude='checkpoint.pt' --exclude='*.safetensors' \
      --exclude='*/eval/math/*.jsonl' -czf "$OUT/quality-math.tgz" "${members[@]}"
  if [ "${#samples[@]}" -gt 0 ]; then
    XZ_OPT=-T0 tar -C "$out_root" -cJf "$OUT/quality-math-samples.tar.xz" "${samples[@]#"$out_root"/}"
    if [ "$(stat -c %s "$OUT/quality-math-samples.tar.xz")" -gt $((15 << 20)) ]; then
      # join them after the call: cat quality-math-samples.tar.xz.?? > quality-math-samples.tar.xz
      split -b 15M -d -a 2 "$OUT/quality-math-samples.tar.xz" "$OUT/quality-math-samples.tar.xz."
      rm "$OUT/quality-math-samples.tar.xz"
    fi
  fi
  ls -la "$OUT"
}

# in_background GROUPS NAME DONE EVALUATORS EVALUATOR_ARGS...: run_all on GROUPS (NAME.log, exit code in NAME.exit)
# and beside it evaluate_when_done.py on the same groups (EVALUATORS.log), in a session of their own (setsid: they
# outlive the call; the machine stays while calls follow each other); DONE is touched when both have ended
in_background() {
  local groups="$1" name="$2" done_file="$3" evaluators="$4"
  shift 4
  setsid nohup bash -c "
    python3 scripts/gpu/evaluate_when_done.py --profile quality-gpu --output-dir '$out_root' --groups '$groups' $* \
        > '$out_root/$evaluators.log' 2>&1 &
    python3 -m experiments.run_all --profile quality-gpu --groups '$groups' --output-dir '$out_root' \
        --jobs $jobs ${RUN_ALL_ARGS:-} --no-eval --no-plots --no-progress > '$out_root/$name.log' 2>&1
    echo \$? > '$out_root/$name.exit'
    wait
    touch '$out_root/$done_file'" > /dev/null 2>&1 < /dev/null &
  sleep 60
  tail -5 "$out_root/$name.log" || true
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
}

# math_bench_phase S: the math model joined and converted, then benchmarks/math_generation.py in the background
# (setsid: it outlives the call) into $out_root/$bench_name, followed for up to S seconds (math-bench-wait goes on)
math_bench_phase() {
  join_packaged "$math_alias" .gpu/math
  convert_model "$math_alias" "$(math_tokenizer)"
  mkdir -p "$out_root" && rm -f "$out_root/MATH_BENCH_DONE"
  local bench
  bench="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/benchmarks/math_generation.py"
  setsid nohup bash -c "python3 '$bench' --model $math_alias --out '$out_root/$bench_name' \
      --batch-size ${BENCH_BATCH:-512} --max-batch-tokens 196608 --prompt-style chat_question ${BENCH_ARGS:-} \
      > '$out_root/math_bench.log' 2>&1; echo \$? > '$out_root/math_bench.exit'; touch '$out_root/MATH_BENCH_DONE'" \
      > /dev/null 2>&1 < /dev/null &
  follow "$out_root/math_bench.log" "$out_root/MATH_BENCH_DONE" "$1"
}

# follow LOG DONE S: wait up to S seconds for the file DONE, then show the GPUs, the end of LOG and every run's state
follow() {
  local log="$1" done_file="$2" limit="$3" waited=0
  local poll="${FOLLOW_POLL_S:-10}"
  while [ ! -f "$done_file" ] && [ "$waited" -lt "$limit" ]; do sleep "$poll"; waited=$((waited + poll)); done
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
  tail -25 "$log" || true
  python3 - "$out_root" <<'PY' || true
import json, sys
from pathlib import Path
for run in sorted(p for p in Path(sys.argv[1]).glob("*/*") if p.is_dir() and p.parent.name != "logs"):
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
}

# superglue_start GROUPS RESTORE NAME DONE: the mpnet copy joined and checked, the finished runs of the groups RESTORE
# restored, then in the background (setsid, as start) run_all --profile quality-gpu --groups GROUPS with its
# evaluators (the superglue evaluator trains and scores these groups): NAME.log, exit code in NAME.exit, DONE touched
superglue_start() {
  local groups="$1" restore="$2" name="$3" done_file="$4"
  join_mpnet
  python3 -c "from experiments.models import resolve_alias; print('mpnet alias ->', resolve_alias('mpnet'))" | tail -1
  python3 -c "from eval.superglue.splits import paper_splits
for task in ('boolq', 'copa', 'wsc', 'rte', 'multirc', 'wic'):
    print(task, paper_splits(task).sizes())"
  mkdir -p "$out_root"
  restore_finished_runs --groups "$restore"   # needs no MT-bench data
  rm -f "$out_root/$done_file"
  setsid nohup bash -c "
    python3 -m experiments.run_all --profile quality-gpu --groups '$groups' --output-dir '$out_root' \
        ${RUN_ALL_ARGS:-} --no-plots --no-progress > '$out_root/$name.log' 2>&1
    echo \$? > '$out_root/$name.exit'
    touch '$out_root/$done_file'" > /dev/null 2>&1 < /dev/null &
  sleep 60
  tail -5 "$out_root/$name.log" || true
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
}

# superglue_wait S NAME DONE PACK GROUP...: follow superglue_start's NAME for up to S seconds (until DONE), print the
# tasks done per run directory of the GROUPs, then pack those groups and NAME.log into $OUT/PACK.tgz
superglue_wait() {
  local limit="$1" name="$2" done_file="$3" pack_name="$4" waited=0 group members=()
  shift 4
  while [ ! -f "$out_root/$done_file" ] && [ "$waited" -lt "$limit" ]; do sleep 10; waited=$((waited + 10)); done
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
  tail -15 "$out_root/$name.log" || true
  python3 - "$out_root" "$@" <<'PY' || true
import json, sys
from pathlib import Path
for group in sys.argv[2:]:
    for run in sorted(p for p in (Path(sys.argv[1]) / group).glob("*") if p.is_dir()):
        results = run / "eval" / "superglue.json"
        tasks = json.loads(results.read_text())["tasks"] if results.is_file() else {}
        done = ", ".join(f"{t} {e['metrics']['score']:.1f}" if e.get("status") == "ok" else f"{t} {e.get('status')}"
                         for t, e in tasks.items())
        going = ""
        for metrics in sorted(run.glob("tasks/*/metrics.jsonl")):
            lines = metrics.read_text().splitlines() if metrics.parent.name not in tasks else []
            if lines:
                going = f"; {metrics.parent.name} running, {len(lines)} steps"
        print(f"{group}/{run.name}: {done or 'no task done'}{going}")
PY
  for group in "$@"; do
    if [ -d "$out_root/$group" ]; then members+=("quality-gpu/$group"); fi
  done
  pack "$pack_name" "${members[@]}" "quality-gpu/$name.log" ||
    echo "tar exit code $?: files still being written when packed (call the wait phase again)"
  if [ -f "$out_root/$done_file" ]; then
    echo "$name done, run_all exit code $(cat "$out_root/$name.exit")"
  fi
}

# sourced (`source quality_session.sh PHASE`): the functions only, as tests/benchmarks/test_quality_session_scripts.py
# uses them
(return 0 2>/dev/null) && return 0
case "$phase" in
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers, peft, galore_torch, lomo_optim, bitsandbytes, gguf; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, \
'bnb', bitsandbytes.__version__, 'gpus', torch.cuda.device_count())"
    df -h "$here" | tail -1
    echo "gemma pieces here: $(pieces_here .gpu/parts)"
    echo "judge pieces here: $(judge_pieces)"
    echo "math pieces here: $(pieces_here .gpu/math)"
    echo "mpnet pieces here: $(pieces_here .gpu/mpnet)"
    ;;
  attention)
    join_gguf
    convert_model gemma3-270m .gpu/tok/gemma3
    attention
    ;;
  start)
    join_gguf
    convert_model gemma3-270m .gpu/tok/gemma3
    attention
    attention_ok "$OUT/attention_check.json" || { echo "the GPU's loss is not the CPU's: not started" >&2; exit 1; }
    mkdir -p "$out_root"
    restore_finished_runs --groups "$restore_groups"   # the math and SuperGLUE groups' data is not carried here
    in_background "$gemma_groups" run_all DONE evaluators --timeout 7200
    ;;
  wait)
    follow "$out_root/run_all.log" "$out_root/DONE" "${2:?seconds to wait}"
    tail -8 "$out_root/evaluators.log" 2>/dev/null || true
    echo "judge pieces here: $(judge_pieces)"
    pack "quality-wait"
    [ -f "$out_root/DONE" ] && echo "suite done, run_all exit code $(cat "$out_root/run_all.exit")"
    ;;
  judge)
    judge_phase "${2:-480}"
    ;;
  validate-judge)
    validate_judge_phase "${2:-480}"
    ;;
  run|finish)
    launch="${2:?launch deadline (s)}"; kill_after="${3:?kill-after (s)}"
    join_gguf
    convert_model gemma3-270m .gpu/tok/gemma3
    extra=(--no-eval)
    [ "$phase" = finish ] && extra=()
    set +e
    python3 -m experiments.run_all --profile quality-gpu --groups "$gemma_groups" --output-dir "$out_root" \
        --jobs "$jobs" ${RUN_ALL_ARGS:-} --launch-deadline "$launch" --kill-after "$kill_after" --no-plots \
        --no-progress "${extra[@]}"
    code=$?
    set -e
    nvidia-smi --query-gpu=name,memory.used --format=csv
    pack "quality-$phase"
    echo "run_all exit code: $code"
    ;;
  mpnet)
    join_mpnet
    ;;
  superglue)
    superglue_start paper_superglue_mpnet paper_superglue_mpnet superglue SUPERGLUE_DONE
    ;;
  superglue-wait)
    # this group only (its 54 metrics.jsonl are ~20 MB, ~7 MB packed; a file back from $OUT holds at most 16 MiB)
    superglue_wait "${2:?seconds to wait}" superglue SUPERGLUE_DONE quality-superglue paper_superglue_mpnet
    ;;
  superglue-sweep)
    superglue_start "$sweep_groups" "lr_sweep_superglue_mpnet,$sweep_seeds" superglue_sweep SUPERGLUE_SWEEP_DONE
    ;;
  superglue-sweep-wait)
    superglue_wait "${2:?seconds to wait}" superglue_sweep SUPERGLUE_SWEEP_DONE quality-superglue-sweep \
        lr_sweep_superglue_mpnet "$sweep_seeds"
    ;;
  pieces)   # what a carrying call needs to know, in a second (no GPU query, no Python)
    echo "gemma pieces here: $(pieces_here .gpu/parts)"
    echo "judge pieces here: $(judge_pieces)"
    echo "math pieces here: $(pieces_here .gpu/math)"
    echo "mpnet pieces here: $(pieces_here .gpu/mpnet)"
    ;;
  math-start)
    join_packaged "$math_alias" .gpu/math
    convert_model "$math_alias" "$(math_tokenizer)"
    attention "$math_config" attention_check_math
    attention_ok "$OUT/attention_check_math.json" || { echo "the GPU's loss is not the CPU's: not started" >&2; exit 1; }
    restore_finished_runs --groups "$math_groups"   # the Gemma groups' MT-bench data is not carried here
    in_background "$math_groups" math MATH_DONE math_evaluators --each --per-gpu 3 --poll 10 --timeout 7200
    ;;
  math-bench) math_bench_phase "${2:-30}" ;;   # issue 15's generation benchmark, alone on the GPU (before math-start)
  math-bench-wait)   # follow it for up to S seconds; pack its results (no samples) into $OUT/math-bench.tgz
    follow "$out_root/math_bench.log" "$out_root/MATH_BENCH_DONE" "${2:?seconds to wait}"
    mkdir -p "$OUT"
    members=()
    for name in "$bench_name" math_bench.log math_bench.exit; do [ -e "$out_root/$name" ] && members+=("$name"); done
    [ "${#members[@]}" = 0 ] || tar -C "$out_root" --exclude='*.jsonl' -czf "$OUT/math-bench.tgz" "${members[@]}"
    [ -f "$out_root/MATH_BENCH_DONE" ] && echo "math bench done, exit code $(cat "$out_root/math_bench.exit")"
    ;;
  math-wait)
    follow "$out_root/math.log" "$out_root/MATH_DONE" "${2:?seconds to wait}"
    tail -8 "$out_root/math_evaluators.log" 2>/dev/null || true
    pack_math
    [ -f "$out_root/MATH_DONE" ] && echo "math part done, run_all exit code $(cat "$out_root/math.exit")"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
