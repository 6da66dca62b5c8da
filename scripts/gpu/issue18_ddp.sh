#!/usr/bin/env bash
# Issue 18 on a 2-GPU machine (device call; kind nvidia-h100-x2): BAdam data parallelism against the plain single-GPU
# path, alternating rounds in one process group (benchmarks/multi_gpu.py --mode ddp --compare-single R), fp32 and bf16
# gradient all-reduce at batch 2 per GPU, fp32 at batch 8, LoRA ddp. Packs runs/mg into $OUT/mg.tgz on any exit.
export PYTHONPATH=$PWD/.gpu/site:$PWD BADAM_SOURCE_COMMIT=bf97d0654cdff54e925985b37b8e34b93f5b45d0 OMP_NUM_THREADS=4
mkdir -p runs/mg; trap 'tar -C runs -czf $OUT/mg.tgz mg' EXIT
nvidia-smi --query-gpu=name --format=csv,noheader; nvidia-smi topo -m | head -4
run() { local log=$1; shift; timeout ${LIMIT:-240} torchrun --nproc_per_node 2 benchmarks/multi_gpu.py --out runs/mg "$@" > runs/mg/$log.txt 2>&1; local rc=$?; echo "== $log rc $rc"; tail -n 4 runs/mg/$log.txt; return $rc; }
run ddp_b2_fp32 --mode ddp --compare-single 5 --switch-every 1 --steps 35 --reduce-dtype fp32 || exit 1
run ddp_b2_bf16 --mode ddp --compare-single 5 --switch-every 1 --steps 35 --reduce-dtype bf16
run ddp_b8_fp32 --mode ddp --compare-single 5 --switch-every 1 --steps 35 --batch-size 8
run lora_ddp --method lora --mode ddp --compare-single 5 --steps 23
