"""scripts/gpu/issue18_ddp2.sh: every phase's benchmark command line is one that benchmarks/multi_gpu.py accepts (a
stand-in torchrun records the arguments; one process parses them all), each phase packs one file, and a bad phase
gets one line naming the valid ones."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu" / "issue18_ddp2.sh"
PHASES = ("diag", "wire", "b8", "fsdp", "adam", "70b", "fsdp1", "compile1", "compile2", "scale4", "ckpt2", "zero1")
sys.path.insert(0, str(REPO / "benchmarks"))

import multi_gpu  # noqa: E402
import zero1_update  # noqa: E402


def test_every_phase_passes_arguments_the_benchmark_accepts(tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    stand_ins = {"torchrun": f'printf "%s\\n" "$*" >> {calls}; echo "wrote x"',  # arguments, one call a line
                 "nvidia-smi": "echo 'NVIDIA H100 80GB HBM3, 1980 MHz, 700.00 W'",
                 "python": "echo 'torch 2.11.0+cu128 triton 3.5.0'"}  # compile phases: the Triton check
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "BADAM_SOURCE_COMMIT": "0" * 40,
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for phase in PHASES:
        done = subprocess.run(["bash", str(SCRIPT), phase], capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=60)
        assert done.returncode == 0, (phase, done.stderr[-500:])
        assert (tmp_path / "out" / f"{phase}.tgz").is_file()
    lines = calls.read_text().splitlines()
    zero1 = [line for line in lines if "zero1_update.py" in line]
    assert zero1 == ["--nproc_per_node 2 benchmarks/zero1_update.py --out runs/mgz --repeats 30"]
    zero1_update.parse_args(zero1[0].split()[3:])
    lines = [line for line in lines if line not in zero1]
    assert len(lines) == 2 + 2 + 1 + 6 + 1 + 4 + 7 + 6 + 4 + 4 + 6
    for line in lines:
        words = line.split()
        gpus = "1" if "runs/mg1 " in line or "runs/mg1c " in line else "4" if "runs/mg4 " in line else "2"
        assert words[:3] == ["--nproc_per_node", gpus, "benchmarks/multi_gpu.py"], line  # fsdp1, compile1: one GPU
        multi_gpu.parse_args(words[3:])  # exits (fails the test) on an argument the benchmark refuses
    assert sum("--cpu-affinity split" in line for line in lines) == 1
    assert sum("llama3-70b" in line and "runs/mg70" in line for line in lines) == 4
    assert sum(line.startswith("--nproc_per_node 1 ") for line in lines) == 7 + 6
    compiled = [line for line in lines if "--compile-layers" in line]
    assert len(compiled) == 3 + 2 + 4 + 6 and all("--mode ddp --compare-single" in line for line in compiled)
    assert sum("--batch-size 8" in line and "runs/mg4 " in line for line in lines) == 2  # scale4: batch 2 and 8
    policies = [line.split("--checkpointing ")[1].split()[0] for line in lines if "--checkpointing" in line]
    assert policies == ["non-reentrant", "block", "block-reentrant"] * 2  # ckpt2: the three in turn, per repeat


def recorded_calls(tmp_path, phase: str, **settings) -> list[str]:
    """The benchmark argument lines `phase` passes to a stand-in torchrun under the environment `settings`."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name, body in {"torchrun": f'printf "%s\\n" "$*" >> {calls}', "nvidia-smi": "true", "python": "true"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "BADAM_SOURCE_COMMIT": "0" * 40, **settings,
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(SCRIPT), phase], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    lines = calls.read_text().splitlines()
    for line in lines:
        multi_gpu.parse_args(line.split()[3:])
    return lines


def test_compile2_with_the_bf16_all_reduce_and_compiled_runs_only(tmp_path):
    """REDUCE=bf16 EAGER=0 INFLIGHT=8: every run all-reduces in bf16 with 8 buckets in flight and compiles its layers;
    their logs are named apart from the fp32 runs' in the shared folder."""
    lines = recorded_calls(tmp_path, "compile2", REDUCE="bf16", EAGER="0", INFLIGHT="8")
    assert len(lines) == 2 and all("--reduce-dtype bf16 --max-in-flight 8 --compile-layers" in x for x in lines)
    assert sorted(p.name for p in (tmp_path / "runs" / "mg").glob("*.txt")) == [
        "ddp_b2_bf16_inflight8_compiled_r1.txt", "ddp_b2_bf16_inflight8_compiled_r2.txt"]


def test_ckpt2_with_chosen_policies_and_a_longer_warm_up(tmp_path):
    lines = recorded_calls(tmp_path, "ckpt2", POLICIES="non-reentrant block-graphed", STEPS="67", WARMUP="35",
                           REPEATS="1")
    assert [line.split("--checkpointing ")[1].split()[0] for line in lines] == ["non-reentrant", "block-graphed"]
    assert all("--steps 67 --warmup 35" in line and "--compile-layers" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "runs" / "mg").glob("*.txt")) == [
        "ddp_b2_compiled_ckpt-block-graphed_r1.txt", "ddp_b2_compiled_ckpt-non-reentrant_r1.txt"]


def test_ckpt2_at_batch_8(tmp_path):
    lines = recorded_calls(tmp_path, "ckpt2", POLICIES="block-reentrant-graphed", BATCH="8", REPEATS="1")
    assert len(lines) == 1 and "--batch-size 8" in lines[0] and "--checkpointing block-reentrant-graphed" in lines[0]
    assert "--reduce-dtype fp32" in lines[0]
    assert [p.name for p in (tmp_path / "runs" / "mg").glob("*.txt")] == [
        "ddp_b8_compiled_ckpt-block-reentrant-graphed_r1.txt"]


def test_ckpt2_with_the_bf16_all_reduce(tmp_path):
    """REDUCE=bf16: the policies' runs all-reduce in bf16, their logs named apart from the fp32 runs' (default fp32)."""
    lines = recorded_calls(tmp_path, "ckpt2", POLICIES="block-reentrant-graphed", REDUCE="bf16", REPEATS="1 2")
    assert len(lines) == 2 and all("--reduce-dtype bf16" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "runs" / "mg").glob("*.txt")) == [
        "ddp_b2_bf16_compiled_ckpt-block-reentrant-graphed_r1.txt",
        "ddp_b2_bf16_compiled_ckpt-block-reentrant-graphed_r2.txt"]


def test_ckpt2_with_and_without_the_overlapped_update(tmp_path):
    lines = recorded_calls(tmp_path, "ckpt2", POLICIES="block-reentrant-graphed", UPDATES="plain overlap",
                           REPEATS="1")
    assert ["--overlap-update" in line for line in lines] == [False, True]
    assert sorted(p.name for p in (tmp_path / "runs" / "mg").glob("*.txt")) == [
        "ddp_b2_compiled_ckpt-block-reentrant-graphed_overlap_r1.txt",
        "ddp_b2_compiled_ckpt-block-reentrant-graphed_r1.txt"]



def test_fsdp1_with_compiled_layers_and_a_checkpointing_policy(tmp_path):
    """POLICY: the plain path and FSDP2 of each repeat checkpoint alike (so the summary pairs them); logs named
    apart."""
    lines = recorded_calls(tmp_path, "fsdp1", COMPILED="1", POLICY="block-reentrant", REPEATS="1", PROFILE="0")
    assert len(lines) == 2 and all("--compile-layers --checkpointing block-reentrant" in line for line in lines)
    assert ["--mode ddp" in line for line in lines] == [True, False]
    assert sorted(p.name for p in (tmp_path / "runs" / "mg1").glob("*.txt")) == [
        "fsdp1_compiled_ckpt-block-reentrant_r1.txt", "plain_compiled_ckpt-block-reentrant_r1.txt"]



def test_fsdp1_at_batch_8(tmp_path):
    lines = recorded_calls(tmp_path, "fsdp1", BATCH="8", KEEPALL="1", REPEATS="1", PROFILE="0")
    assert len(lines) == 3 and all("--batch-size 8" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "runs" / "mg1").glob("*.txt")) == [
        "fsdp1_b8_keepall_r1.txt", "fsdp1_b8_r1.txt", "plain_b8_r1.txt"]


def test_shard_runs_one_gpu_then_replicated_sharded_and_fsdp2(tmp_path):
    """Phase shard (--shard-frozen): per batch size the one-GPU run, then on two GPUs replicated ddp, sharded ddp and
    FSDP2, all compiled with block-reentrant checkpointing; ONE=0 leaves the one-GPU run out."""
    lines = recorded_calls(tmp_path, "shard", BATCHES="2 8")
    assert [line.split()[1] for line in lines] == ["1", "2", "2", "2"] * 2
    assert ["--shard-frozen" in line for line in lines] == [True, False, True, False] * 2
    assert all("--compile-layers --checkpointing block-reentrant" in line for line in lines)
    assert ["--mode ddp" in line for line in lines] == [True, True, True, False] * 2
    (tmp_path / "again").mkdir()
    assert len(recorded_calls(tmp_path / "again", "shard", ONE="0")) == 3


def test_70b_with_the_frozen_blocks_sharded_only(tmp_path):
    """SHARD=1 FSDP=0 REPEATS=1: one ddp run of Llama 3-70B with --shard-frozen and no single phase (the model is
    built on meta and placed layer by layer; benchmarks/multi_gpu_ddp.py)."""
    lines = recorded_calls(tmp_path, "70b", SHARD="1", FSDP="0", REPEATS="1")
    assert len(lines) == 1 and "--model llama3-70b" in lines[0] and "--mode ddp --shard-frozen" in lines[0]
    assert "--compare-single" not in lines[0]


def test_a_bad_phase_is_named_and_writes_nothing(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "b2"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path / "out"), "BADAM_SOURCE_COMMIT": "x"})
    assert done.returncode == 2
    assert ("unknown phase b2; choose diag, wire, b8, fsdp, adam, 70b, fsdp1, compile1, compile2, scale4, ckpt2, "
            "shard or zero1" in done.stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
