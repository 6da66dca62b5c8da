#!/usr/bin/env bash
# Issue 18, second 2-GPU session: why BAdam data parallelism at batch 2 x 728 per GPU stays below 1.9x one GPU, and the
# FSDP2 runs. One device call per PHASE (each under 10 minutes). The 2 x H100 phases write into one folder, runs/mg
# (kept on a warm machine between calls, so summary.md compares the FSDP2 rows with the single-GPU phases), and each
# call packs it whole into ONE file, $OUT/<PHASE>.tgz (the last call's file holds everything; 70b: runs/mg70):
#   diag   (nvidia-h100-x2, ~8 min) batch 2, fp32 all-reduce: every rank alone in turn (--single-every-rank), both ranks
#          on their own at once (--alone-phase), ddp; 5 rounds; once as the OS places the threads, once with each rank
#          pinned to its own half of the physical cores (--cpu-affinity split)
#   wire   (nvidia-h100-x2, ~7 min) the same diagnosis with the bf16 all-reduce (5 rounds) and for LoRA rank 100 (3)
#   b8     (nvidia-h100-x2, ~5 min) batch 8 per GPU, fp32, single / alone / ddp, 5 rounds
#   fsdp   (nvidia-h100-x2, ~6 min) FSDP2 at 8B, BAdam, FSDP2's default vs every reached layer kept gathered, 3 x
#          alternating (--switch-every 1 --steps 35)
#   adam   (nvidia-h100-x2, ~2 min) Adam under FSDP2 at 8B (its only multi-GPU mode there; 18 B/param = 67 GiB per GPU
#          on 2 GPUs: may not fit 80 GB, the log then says so)
#   70b    (nvidia-h200-x2, needs_h200, ~4 min) Llama 3-70B BAdam under FSDP2: default vs 24 reached layers kept
#          gathered, 2 x alternating, 8 steps (step time, tokens/s, MFU, memory per GPU); SHARD=1 adds per repeat a
#          ddp run with BAdam's frozen blocks sharded (--shard-frozen; built on meta, placed layer by layer), FSDP=0
#          leaves the FSDP2 runs out, REPEATS (default "1 2")
#   fsdp1  (nvidia-h100-x1, ~6 min) ONE GPU, 8B, batch 2: the plain path (the ddp benchmark's single phase) against
#          FSDP2 on one GPU, 3 x alternating (issue 18's target: FSDP2 on 1 GPU within 15 % of plain), then one more
#          FSDP2 run with rank 0's profiler table (runs/mg1); REPEATS="4 5 6" PROFILE=0 adds repeats to the folder;
#          KEEPALL=1 adds per repeat an FSDP2 run that keeps every layer backward reaches gathered from forward on
#          (--keep-gathered-layers -1: no second all-gather in backward, for up to the model's bf16 bytes more);
#          COMPILED=1 runs all of them with compiled decoder layers (--compile-layers; logs *_compiled_r*);
#          POLICY=block-reentrant checkpoints all of them with that policy (--checkpointing; logs *_ckpt-POLICY_r*);
#          BATCH=8 runs all of them at that batch per GPU (logs *_b8_r*; a GPU-bound step: does FSDP2's host work hide?)
#   compile1 (nvidia-h100-x1, ~8 min) ONE GPU, 8B, batch 2: the plain path with eager layers against the same with every
#          decoder layer compiled (--compile-layers, inductor), 3 x alternating (runs/mg1c; each compiled run compiles
#          its three graphs in the first two steps, inductor's on-disk cache makes the later runs' compiles short);
#          FSDP=1 adds an FSDP2 run with compiled layers per repeat; REPEATS="1 2" / "3" split it over two calls
#   compile2 (nvidia-h100-x2, ~5 min) batch 2, fp32 all-reduce, ddp against single with eager / compiled layers, 2 x
#          alternating, 3 rounds each (runs/mg, next to the diag runs); REDUCE=bf16 all-reduces in bf16, EAGER=0 runs
#          the compiled runs only, INFLIGHT=B lets B bucket all-reduces pend in backward (--max-in-flight; default 2)
#   scale4 (nvidia-h100-x4, ~6 min) 4 GPUs, layers compiled, fp32 all-reduce: ddp against rank 0 alone, batch 2 and
#          batch 8 per GPU alternating, 3 rounds each (runs/mg4): checks benchmarks/ddp_scaling_plan.py's 4-GPU
#          prediction from the 2-GPU runs; REPEATS="1 2" by default; NPROC=2 on 2 GPUs; BATCHES="8" one size only
#   ckpt2  (nvidia-h100-x2, ~5 min per repeat) batch 2, fp32, layers compiled, ddp against rank 0 alone, 3 rounds,
#          per repeat the checkpointing policies in turn (badam/checkpointing.py): non-reentrant for every layer (what
#          the harness does), block and block-reentrant (REPEATS, default "1 2"; runs/mg); LAYERS="compiled eager"
#          adds the same three with eager layers (LAYERS=eager: those only); NPROC=1 on one GPU (its single phases);
#          POLICIES="non-reentrant block-graphed" picks the policies (any of badam.hf.CHECKPOINTING_POLICIES, e.g.
#          block-reentrant-graphed); BATCH the batch per GPU (default 2); REDUCE=bf16 all-reduces in bf16 (logs
#          *_bf16_*); UPDATES="plain overlap" runs each policy also with the update on a side stream
#          (--overlap-update, badam/overlap.py; logs *_overlap_*); STEPS / WARMUP (default 35 / 3) set the
#          run's length (the graphed policies'
#          graphs are recorded before the phases, badam.hf.record_layer_graphs, so the default suffices; the runs of
#          2026-11-27 used WARMUP=35 STEPS=67, made before that)
#   shard  (nvidia-h100-x2, ~5 min per batch size) BAdam's frozen blocks sharded over the ranks (--shard-frozen,
#          badam/frozen_shards.py), layers compiled, block-reentrant, 3 rounds against the plain single path: on ONE
#          GPU (the mechanism alone: nothing to gather), then on 2 GPUs replicated ddp, sharded ddp and FSDP2 in turn
#          (runs/mgs); BATCHES (default "2"), REPEATS (default "1"); ONE=0 leaves out the one-GPU run
#   zero1  (nvidia-h100-x2 or -x4, ~1 min) the active layer's update replicated vs sharded ZeRO-1 style
#          (benchmarks/zero1_update.py: 30 alternating repeats; NPROC: the GPU counts, default 2, "2 4" on 4)
#          -> runs/mgz
# Carry .gpu/site; set BADAM_SOURCE_COMMIT to the commit the tree is at (the GPU copy's .git is stale).
# Afterwards: benchmarks/multi_gpu_diagnostics.py on the JSONs prints the per-rank and paired comparisons (also in
# summary.md); folders merged from several machines: benchmarks/multi_gpu.py --out DIR --rewrite-summary.
set -u
phase=${1:?usage: issue18_ddp2.sh diag|wire|b8|fsdp|adam|70b|fsdp1|compile1|compile2|scale4|ckpt2|shard|zero1}
case $phase in
    diag|wire|b8|fsdp|adam|70b|fsdp1|compile1|compile2|scale4|ckpt2|shard|zero1) ;;
    *) echo "unknown phase $phase; choose diag, wire, b8, fsdp, adam, 70b, fsdp1, compile1, compile2, scale4," \
            "ckpt2, shard or zero1" >&2; exit 2 ;;
esac
export PYTHONPATH=$PWD/.gpu/site:$PWD OMP_NUM_THREADS=4
export BADAM_SOURCE_COMMIT=${BADAM_SOURCE_COMMIT:?set BADAM_SOURCE_COMMIT}
case $phase in 70b) folder=mg70 ;; fsdp1) folder=mg1 ;; shard) folder=mgs ;; compile1) folder=mg1c ;;
    scale4) folder=mg4 ;;
    zero1) folder=mgz ;; *) folder=mg ;; esac
out=runs/$folder
mkdir -p "$out" "$OUT"; trap 'tar -C runs -czf "$OUT/$phase.tgz" "$folder"' EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader; nvidia-smi topo -m | head -4
echo "cpus: $(nproc) allowed, $(lscpu | grep -E '^(Thread|Core|Socket|NUMA node\(s\))' | tr -s ' ' | paste -sd';')"
run() {  # run LOG [benchmark arguments...]: one torchrun under a time limit, its log next to the JSONs
    local log=$1; shift
    timeout "${LIMIT:-290}" torchrun --nproc_per_node "${NPROC:-2}" benchmarks/multi_gpu.py --out "$out" "$@" \
        > "$out/$log.txt" 2>&1
    local rc=$?; echo "== $log rc $rc"; tail -n 3 "$out/$log.txt"; return $rc
}
diag=(--mode ddp --compare-single 5 --single-every-rank --alone-phase --switch-every 1 --steps 35)
plain1=(--mode ddp --compare-single 1 --switch-every 1 --steps 35)  # one GPU: the plain path (single phase)
case $phase in
    diag)
        run ddp_b2_fp32_diag "${diag[@]}" --reduce-dtype fp32 || exit 1
        run ddp_b2_fp32_diag_pinned "${diag[@]}" --reduce-dtype fp32 --cpu-affinity split ;;
    wire)
        run ddp_b2_bf16_diag "${diag[@]}" --reduce-dtype bf16 || exit 1
        run lora_ddp_diag --method lora --mode ddp --compare-single 3 --single-every-rank --alone-phase --steps 23 ;;
    b8)
        LIMIT=400 run ddp_b8_fp32_alone --mode ddp --compare-single 5 --alone-phase --switch-every 1 --steps 35 \
            --batch-size 8 ;;
    fsdp)
        for r in 1 2 3; do
            run fsdp_r$r --switch-every 1 --steps 35 --tag r$r || exit 1
            run fsdp_keepall_r$r --switch-every 1 --steps 35 --keep-gathered-layers -1 --tag r$r || exit 1
        done ;;
    adam)
        LIMIT=150 run adam_fsdp --method adam --steps 12 ;;
    70b)
        for r in ${REPEATS:-1 2}; do
            if [ "${FSDP:-1}" != 0 ]; then
                LIMIT=140 run fsdp70b_r$r --model llama3-70b --steps 8 --tag r$r || exit 1
                LIMIT=140 run fsdp70b_keep24_r$r --model llama3-70b --steps 8 --keep-gathered-layers 24 --tag r$r \
                    || exit 1
            fi
            [ "${SHARD:-0}" = 0 ] || LIMIT=200 run shard70b_r$r --model llama3-70b --steps 8 --mode ddp --shard-frozen \
                --tag r$r || exit 1
        done ;;
    fsdp1)
        export NPROC=1 LIMIT=150
        layers=(); c=
        [ "${COMPILED:-0}" = 0 ] || { layers=(--compile-layers); c=_compiled; LIMIT=240; }
        [ -z "${POLICY:-}" ] || { layers+=(--checkpointing "$POLICY"); c+=_ckpt-$POLICY; }
        [ -z "${BATCH:-}" ] || { layers+=(--batch-size "$BATCH"); c+=_b$BATCH; LIMIT=240; }
        for r in ${REPEATS:-1 2 3}; do
            run plain${c}_r$r "${plain1[@]}" --tag r$r "${layers[@]}" || exit 1
            run fsdp1${c}_r$r --switch-every 1 --steps 35 --tag r$r "${layers[@]}" || exit 1
            [ "${KEEPALL:-0}" = 0 ] || run fsdp1${c}_keepall_r$r --switch-every 1 --steps 35 --tag r$r \
                --keep-gathered-layers -1 "${layers[@]}" || exit 1
        done
        [ "${PROFILE:-1}" = 0 ] ||
            run fsdp1_profiled --switch-every 1 --steps 12 --tag profiled --profile-dir "$out/profile" ;;
    compile1|compile2|scale4|ckpt2|shard)  # inductor needs Triton on the GPU machine: say so now, not in each log
        python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' || exit 1 ;;&
    compile1)
        export NPROC=1 LIMIT=150
        for r in ${REPEATS:-1 2 3}; do
            run plain_r$r "${plain1[@]}" --tag r$r || exit 1
            LIMIT=240 run plain_compiled_r$r "${plain1[@]}" --tag r$r --compile-layers || exit 1
            [ "${FSDP:-0}" = 0 ] ||
                LIMIT=240 run fsdp1_compiled_r$r --switch-every 1 --steps 35 --tag r$r --compile-layers || exit 1
        done ;;
    compile2)
        export LIMIT=240
        reduce=${REDUCE:-fp32}; wire=; [ "$reduce" = fp32 ] || wire=_$reduce   # log names of the bf16 runs: _bf16
        paced=(); [ -z "${INFLIGHT:-}" ] || { paced=(--max-in-flight "$INFLIGHT"); wire+=_inflight$INFLIGHT; }
        for r in ${REPEATS:-1 2}; do
            [ "${EAGER:-1}" = 0 ] || run ddp_b2${wire}_r$r --mode ddp --compare-single 3 --switch-every 1 --steps 35 \
                --tag r$r --reduce-dtype "$reduce" "${paced[@]}" || exit 1
            run ddp_b2${wire}_compiled_r$r --mode ddp --compare-single 3 --switch-every 1 --steps 35 --tag r$r \
                --reduce-dtype "$reduce" "${paced[@]}" --compile-layers || exit 1
        done ;;
    scale4)
        export NPROC=${NPROC:-4}
        for r in ${REPEATS:-1 2}; do
            for b in ${BATCHES:-2 8}; do
                LIMIT=300 run ddp_b${b}_compiled_n${NPROC}_r$r --mode ddp --compare-single 3 --switch-every 1 \
                    --steps 35 --tag r$r --compile-layers --batch-size "$b" || exit 1
            done
        done ;;
    ckpt2)
        export LIMIT=240
        reduce=${REDUCE:-fp32}; wire=; [ "$reduce" = fp32 ] || wire=_$reduce   # log names of the bf16 runs: _bf16
        for r in ${REPEATS:-1 2}; do
            for layers in ${LAYERS:-compiled}; do
                case $layers in compiled|eager) ;; *) echo "LAYERS takes compiled and/or eager, not $layers" >&2
                    exit 2 ;; esac
                flag=(); [ "$layers" = compiled ] && flag=(--compile-layers)
                for policy in ${POLICIES:-non-reentrant block block-reentrant}; do
                    for update in ${UPDATES:-plain}; do
                        case $update in plain) over=(); o= ;; overlap) over=(--overlap-update); o=_overlap ;;
                            *) echo "UPDATES takes plain and/or overlap, not $update" >&2; exit 2 ;; esac
                        run ddp_b${BATCH:-2}${wire}_${layers}_ckpt-${policy}${o}_r$r --mode ddp --compare-single 3 \
                            --switch-every 1 --steps "${STEPS:-35}" --warmup "${WARMUP:-3}" --tag r$r \
                            --checkpointing "$policy" --batch-size "${BATCH:-2}" --reduce-dtype "$reduce" \
                            "${over[@]}" "${flag[@]}" || exit 1
                    done
                done
            done
        done ;;
    shard)
        export LIMIT=240
        same=(--switch-every 1 --steps 35 --compile-layers --checkpointing block-reentrant)
        for r in ${REPEATS:-1}; do
            for b in ${BATCHES:-2}; do
                [ "${ONE:-1}" = 0 ] || NPROC=1 run shard1_b${b}_r$r --mode ddp --compare-single 3 "${same[@]}" \
                    --batch-size "$b" --tag r$r --shard-frozen || exit 1
                run ddp_b${b}_r$r --mode ddp --compare-single 3 "${same[@]}" --batch-size "$b" --tag r$r || exit 1
                run shard2_b${b}_r$r --mode ddp --compare-single 3 "${same[@]}" --batch-size "$b" --tag r$r \
                    --shard-frozen || exit 1
                run fsdp2_b${b}_r$r "${same[@]}" --batch-size "$b" --tag r$r || exit 1
            done
        done ;;
    zero1)
        for n in ${NPROC:-2}; do
            timeout 240 torchrun --nproc_per_node "$n" benchmarks/zero1_update.py --out "$out" --repeats 30 \
                > "$out/zero1_n$n.txt" 2>&1; echo "== zero1_n$n rc $?"; tail -n 12 "$out/zero1_n$n.txt"
        done ;;
esac
