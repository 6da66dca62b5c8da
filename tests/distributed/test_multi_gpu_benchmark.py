"""benchmarks/multi_gpu.py: a real one-process run of the tiny setting, and the summary's scaling arithmetic."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import multi_gpu  # noqa: E402
import multi_gpu_diagnostics  # noqa: E402
from tests.distributed.bench_results import replicated_result, sharded_result, spread_of  # noqa: E402
from multi_gpu_ddp import bind_to_cpu_share, host_cpu_state, split_cpus, timed_steps  # noqa: E402


def run_benchmark(out: Path, processes: int, *options: str) -> None:
    script = str(REPO / "benchmarks" / "multi_gpu.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), script,
           "--out", str(out), "--tiny", *options]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_tiny_run_writes_phases_profile_and_summary(tmp_path):
    out = tmp_path / "bench"
    run_benchmark(out, 1, "--profile-dir", str(out / "profile"))
    result = json.loads((out / "tiny-llama_badam_n1.json").read_text())
    assert result["fsdp_groups"] == "layers + root (embeddings and head in the root)"
    for step in result["per_rank"][0]["steps"]:
        phases = step["forward_ms"] + step["backward_ms"] + step["update_ms"]
        assert 0 < phases <= step["ms"] * 1.01  # the phases lie inside the timed step
    assert "FSDP" in (out / "profile" / "tiny-llama_badam_n1_profile.txt").read_text()
    row = "| tiny-llama | badam | layers + root (embeddings and head in the root) | 1 |"
    assert row in (out / "summary.md").read_text()



def test_tiny_run_with_the_overlapped_update(tmp_path):
    """--overlap-update end to end on one gloo process (no side stream on a CPU: the update runs in step(), clipped
    there); every step keeps its clip norm and the run is labelled apart."""
    out = tmp_path / "bench"
    run_benchmark(out, 1, "--mode", "ddp", "--compare-single", "1", "--overlap-update", "--switch-every", "1")
    result = json.loads((out / "tiny-llama_badam_n1_ddp_fp32_vs1x1_overlap.json").read_text())
    assert result["overlap_update"] is True
    for phase in result["per_rank"][0]["phases"]:
        assert all(step["grad_norm"] > 0 and "previous" not in step for step in phase["steps"])
    assert "fp32, update overlapped |" in (out / "summary.md").read_text()

def test_scaling_compares_with_the_best_single_gpu_path(tmp_path):
    runs = {"a_n1": sharded_result(1, 100.0, "A"), "a_n2": sharded_result(2, 180.0, "A"),
            "b_n2": sharded_result(2, 150.0, "B"), "c_n2": sharded_result(2, 150.0, "C", batch_per_gpu=8)}
    for name, r in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    table = multi_gpu.summary_markdown(tmp_path)
    assert "| m | badam | A | 2 | 2 x 8 | 10 | 3 / 6 / 1 | 180 | 90 | 0.90 |" in table
    assert "| m | badam | B | 2 | 2 x 8 | 10 | 3 / 6 / 1 | 150 | 75 | 0.75 |" in table  # A's 1-GPU run: any layout
    assert "| m | badam | C | 2 | 8 x 8 |" in table and "n/a (no 1-GPU run)" in table  # no 1-GPU run at batch 8
    # a ddp run's single-GPU phases, faster than 1-GPU FSDP2, become the baseline of every row
    ddp = replicated_result(2, spread_of(228.0, 220.0, 230.0), rounds=3,
                            single_tokens_per_s=spread_of(120.0, 110.0, 125.0),
                            scaling_per_round=spread_of(0.95, 0.93, 0.97), scaling_of_medians=0.95,
                            single_peak_allocated_bytes_max=None)
    (tmp_path / "m_badam_n2_ddp_fp32_vs1x3.json").write_text(json.dumps(ddp))
    table = multi_gpu.summary_markdown(tmp_path)
    assert "| m | badam | A | 2 | 2 x 8 | 10 | 3 / 6 / 1 | 180 | 90 | 0.75 |" in table
    assert ("| m | badam | 2 | 2 x 8 | fp32 | 3 | 120 [110-125] | 228 [220-230] | 0.950 [0.930-0.970] | 0.950 | "
            "3 / 6 / 1 | n/a / n/a |") in table


def test_fsdp2_runs_are_paired_with_the_plain_path_of_their_repeat(tmp_path):
    # issue18_ddp2.sh fsdp1: plain (a 1-GPU ddp run's single phase) and FSDP2 alternate, one --tag per repeat; each
    # FSDP2 run is compared with its own repeat's plain path, not with the folder's best (a drifting host)
    for tag, plain, fsdp in (("r1", 100.0, 80.0), ("r2", 120.0, 108.0), ("r3", 90.0, 81.0), ("r4", 50.0, None)):
        (tmp_path / f"m_badam_n1_ddp_{tag}.json").write_text(json.dumps(replicated_result(
            1, spread_of(1.0), tag=tag, single_tokens_per_s=spread_of(plain), scaling_per_round=spread_of(1.0),
            scaling_of_medians=1.0, single_peak_allocated_bytes_max=None)))
        if fsdp is not None:   # r4: a plain run without its FSDP2 partner pairs with nothing; r3: an older JSON,
            # its tag only in the groups' name
            run = sharded_result(1, fsdp, "A", tag=tag) if tag != "r3" else sharded_result(1, fsdp, "A [r3]")
            (tmp_path / f"m_badam_n1_{tag}.json").write_text(json.dumps(run))
    (tmp_path / "m_badam_n1_untagged.json").write_text(json.dumps(sharded_result(1, 10.0, "A")))  # no repeat: left out
    table = multi_gpu.summary_markdown(tmp_path)
    assert "| m | badam | A | 1 | 2 x 8 | 3 | 0.900 [0.800-0.900] | r1 0.800, r2 0.900, r3 0.900 |" in table
    assert "| m | badam | A [r3] | 1 | 2 x 8 | 10 | 3 / 6 / 1 | 81 | 81 | 0.68 |" in table  # best of folder: 120
    # a repeat checkpointed with another policy (named in its FSDP groups, as the benchmark writes them) pairs with
    # the plain path of that policy, in a row of its own
    for name, run in (("m_badam_n1_ddp_ckpt_r1", replicated_result(
            1, spread_of(1.0), tag="r1", single_tokens_per_s=spread_of(200.0), scaling_per_round=spread_of(1.0),
            scaling_of_medians=1.0, single_peak_allocated_bytes_max=None, checkpointing="block-reentrant")),
            ("m_badam_n1_ckpt_r1", sharded_result(1, 170.0, "A, block-reentrant checkpointing", tag="r1",
                                                  checkpointing="block-reentrant"))):
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    table = multi_gpu.summary_markdown(tmp_path)
    assert "| m | badam | A | 1 | 2 x 8 | 3 | 0.900 [0.800-0.900] | r1 0.800, r2 0.900, r3 0.900 |" in table
    assert "| m | badam | A, block-reentrant checkpointing | 1 | 2 x 8 | 1 | 0.850 [0.850-0.850] | r1 0.850 |" in table


def test_result_names_carry_batch_and_layout():
    args = multi_gpu.parse_args(["--out", "x", "--batch-size", "8", "--separate-ends", "--keep-gathered"])
    assert multi_gpu.result_stem(args, 2) == "llama3-8b_badam_n2_b8_separate-ends_keep-gathered"
    assert multi_gpu.result_stem(multi_gpu.parse_args(["--out", "x"]), 1) == "llama3-8b_badam_n1"
    ddp = multi_gpu.parse_args(["--out", "x", "--mode", "ddp", "--compare-single", "5", "--reduce-dtype", "bf16"])
    assert multi_gpu.result_stem(ddp, 2) == "llama3-8b_badam_n2_ddp_bf16_vs1x5"
    kept = multi_gpu.parse_args(["--out", "x", "--keep-gathered-layers", "-1", "--tag", "r2"])
    assert multi_gpu.result_stem(kept, 2) == "llama3-8b_badam_n2_keepall_r2"
    every = multi_gpu.parse_args(["--out", "x", "--mode", "ddp", "--compare-single", "5", "--alone-phase",
                                  "--single-every-rank", "--cpu-affinity", "split", "--tag", "r1"])
    assert multi_gpu.result_stem(every, 2) == "llama3-8b_badam_n2_ddp_fp32_vs1x5_solo_alone_pinned_r1"
    paced = multi_gpu.parse_args(["--out", "x", "--mode", "ddp", "--compare-single", "3", "--max-in-flight", "8"])
    assert multi_gpu.result_stem(paced, 2) == "llama3-8b_badam_n2_ddp_fp32_inflight8_vs1x3"
    block = multi_gpu.parse_args(["--out", "x", "--mode", "ddp", "--compare-single", "3", "--compile-layers",
                                  "--checkpointing", "block-reentrant", "--tag", "r1"])
    assert multi_gpu.result_stem(block, 2) == "llama3-8b_badam_n2_ddp_fp32_vs1x3_compiled_ckpt-block-reentrant_r1"
    overlap = multi_gpu.parse_args(["--out", "x", "--mode", "ddp", "--compare-single", "3", "--overlap-update"])
    assert multi_gpu.result_stem(overlap, 2) == "llama3-8b_badam_n2_ddp_fp32_vs1x3_overlap"
    shard = ["--out", "x", "--mode", "ddp", "--compare-single", "3", "--shard-frozen"]
    assert multi_gpu.result_stem(multi_gpu.parse_args(shard), 2) == "llama3-8b_badam_n2_ddp_fp32_vs1x3_shardfrozen"
    deep = multi_gpu.parse_args([*shard, "--shard-prefetch", "2", "--shard-gather-stream", "side"])
    assert deep.shard_frozen == {"prefetch": 2, "gather_stream": True}  # shard_frozen_blocks' options
    assert multi_gpu.result_stem(deep, 2) == "llama3-8b_badam_n2_ddp_fp32_vs1x3_shardfrozen-p2-sidestream"
    assert multi_gpu_diagnostics.overlap_note({"shard_frozen": deep.shard_frozen}) == \
        ", frozen blocks sharded (2 ahead, gathers from a side stream)"
    assert multi_gpu_diagnostics.overlap_note({"shard_frozen": True}) == ", frozen blocks sharded"  # older JSONs
    for wrong in (["--checkpointing", "block", "--no-checkpointing"], ["--checkpointing", "reentrant"],
                  ["--mode", "ddp", "--separate-ends"], ["--compare-single", "3"], ["--keep-gathered-layers", "-2"],
                  ["--max-in-flight", "4"], ["--mode", "ddp", "--max-in-flight", "0"],
                  ["--keep-gathered", "--keep-gathered-layers", "4"], ["--mode", "ddp", "--alone-phase"],
                  ["--mode", "ddp", "--single-every-rank"], ["--cpu-affinity", "half"], ["--overlap-update"],
                  ["--mode", "ddp", "--method", "lora", "--overlap-update"], [*shard[2:], "--shard-prefetch", "-1"],
                  [*shard[2:], "--shard-gather-stream", "other"]):
        with pytest.raises(SystemExit):
            multi_gpu.parse_args(["--out", "x", *wrong])


def test_runs_with_more_all_reduces_in_flight_or_another_checkpointing_are_labelled_apart():
    from multi_gpu_diagnostics import checkpointing_note, in_flight_note

    assert in_flight_note({"max_in_flight": 8}) == ", 8 in flight"
    assert in_flight_note({"max_in_flight": 2}) == in_flight_note({}) == ""  # the default; JSONs from before the flag
    assert checkpointing_note("block") == ", block checkpointing"
    assert checkpointing_note("non-reentrant") == checkpointing_note(None) == ""  # the default; JSONs from before
    run = {"model": "m", "method": "badam", "batch_per_gpu": 2, "seq_len": 8, "reduce_dtype": "fp32", "tag": "r1"}
    assert multi_gpu_diagnostics._label({**run, "checkpointing": "block-graphed"}) == \
        "m badam 2x8 fp32 block-graphed checkpointing r1"  # the diagnostics rows of two policies stay apart
    assert multi_gpu_diagnostics._label(run) == "m badam 2x8 fp32 r1"
    assert multi_gpu_diagnostics._label({**run, "overlap_update": True}) == "m badam 2x8 fp32 update overlapped r1"
    from ddp_scaling_plan import setting_key
    result = {**run, "gpus": 2, "compile_layers": None}
    assert setting_key(result) != setting_key({**result, "overlap_update": True})  # planned apart


def test_forward_prefetch_changes_timing_not_numbers(tmp_path):
    """2 gloo processes: layers gathered ahead (and kept gathered) give exactly the losses of the default layout."""
    run_benchmark(tmp_path, 2)
    run_benchmark(tmp_path, 2, "--forward-prefetch", "2", "--keep-gathered")
    plain = json.loads((tmp_path / "tiny-llama_badam_n2.json").read_text())
    ahead = json.loads((tmp_path / "tiny-llama_badam_n2_keep-gathered_prefetch2.json").read_text())
    assert ahead["fsdp_groups"].endswith("layers kept gathered after forward, forward prefetch 2")
    assert ahead["losses_rank0"] == plain["losses_rank0"] and len(plain["losses_rank0"]) == 4


def test_cpu_shares_keep_hyperthread_siblings_together():
    siblings = {0: "a", 1: "b", 2: "c", 3: "d", 4: "a", 5: "b", 6: "c", 7: "d"}  # 4 cores, 2 threads each
    assert split_cpus(list(range(8)), siblings, 2) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert split_cpus([0, 1, 2], {}, 2) == [[0, 1], [2]]  # unknown topology: every CPU a core; uneven but whole
    with pytest.raises(ValueError, match="2 physical cores for 3 processes"):
        split_cpus([0, 4, 1, 5], siblings, 3)
    if hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        assert bind_to_cpu_share(0, 1) == allowed == sorted(os.sched_getaffinity(0))  # one share: all, unchanged


def _phase(kind, round_, ms, shift=0.0):
    return {"kind": kind, "round": round_, "steps": [
        {"ms": t, "forward_ms": t / 2 + shift, "backward_ms": t / 2 - 1, "update_ms": 1.0, "active_block": i}
        for i, t in enumerate(ms)]}


def test_diagnostics_pair_steps_and_separate_coupling_from_noise():
    """Hand-computed: per-step excess, the slower rank per step vs the ranks' own medians, the mean cost of waiting
    for the slower of two single draws of the same step, and epoch throughput ratios per round."""
    result = {"mode": "ddp", "model": "m", "method": "badam", "batch_per_gpu": 2, "seq_len": 8, "reduce_dtype": "fp32",
              "warmup": 0, "per_rank": [
                  {"phases": [_phase("single", 1, [10, 20]), _phase("ddp", 1, [13, 22], shift=2.0),
                              _phase("single", 2, [14, 20]), _phase("ddp", 2, [15, 24], shift=2.0)]},
                  {"phases": [_phase("ddp", 1, [13, 23]), _phase("ddp", 2, [15, 24])]}]}
    d = multi_gpu_diagnostics.diagnose(result)
    ddp = d["paired"]["ddp"]
    assert ddp["same_blocks"] and ddp["steps"] == 4 and d["paired"]["alone"] is None
    assert ddp["step_ms"] == 3.0  # median of 3, 3, 1, 4
    assert ddp["rank0_forward_ms"] == 3.25 and ddp["rank1_forward_ms"] == 1.5  # fw = ms / 2 (+ 2 on rank 0)
    assert ddp["rank1_reference"] == "rank 0 single"  # rank 1 ran no single phase
    assert ddp["backward_min_ms"] == 1.25  # min over ranks of (13, 22 | 13, 23) / 2 - 1 against single, median
    assert d["coupling"] == {"median_of_max_ms": 19.0, "max_of_medians_ms": 19.0}
    assert d["noise_cost"]["ms"] == 1.0  # step 0: max(10, 14) - 10 = 4, max(14, 10) - 14 = 0; step 1: 0, 0
    rate = d["throughput"]["ddp"]
    assert rate["ratio_of_means"]["min"] == pytest.approx(15 / 18)
    assert rate["ratio_of_means"]["max"] == pytest.approx(17 / 19.5)
    rank0 = next(m for m in d["rank_medians"] if (m["kind"], m["rank"]) == ("single", 0))
    assert rank0["ms"] == 17.0 and rank0["host_forward_ms"] is None  # an older result: no host fields
    single_by_block = [m for m in d["by_block_range"] if (m["kind"], m["rank"]) == ("single", 0)]
    assert [(m["blocks"], m["forward_ms"]) for m in single_by_block] == [([0, 0], 6.0), ([1, 1], 10.0)]
    table = "\n".join(multi_gpu_diagnostics.markdown([result]))
    assert "| m badam 2x8 fp32 | 3.0 | 3.2 / 1.5 | 1.2 | - / - | 1.0 / 0.5 | 19.0 / 19.0 |" in table
    assert "| m badam 2x8 fp32 | single | 0 | 17.0 | 8.5 | 7.5 | 1.0 | - | - | - | - | - | - | - | - | - |" in table
    assert "(= scaling; x N = speed-up)" in table  # single/ddp of step times is the scaling itself
    result["per_rank"][0]["phases"][0]["steps"][1].update(gc_full=1, gc_ms=312.4)
    for step in (result["per_rank"][0]["phases"][0]["steps"][0], *result["per_rank"][0]["phases"][2]["steps"]):
        step.update(gc_full=0, gc_ms=0.5)
    single = next(m for m in multi_gpu_diagnostics.rank_medians(result) if (m["kind"], m["rank"]) == ("single", 0))
    assert (single["gc_full_total"], single["gc_ms_total"]) == (1, 313.9)
    assert "| m badam 2x8 fp32 | single | 0 | 17.0 | 8.5 | 7.5 | 1.0 | - | - | - | - | - | - | 1 (314) | - | - |" in \
        "\n".join(multi_gpu_diagnostics.markdown([result]))
    # steal: forwards 5, 10 | 7, 10 (ms / 2): the slower half (10, 10) had 4 and 6 ms of steal, the faster 0 and 1
    for step, steal in zip((*result["per_rank"][0]["phases"][0]["steps"], *result["per_rank"][0]["phases"][2]["steps"]),
                           (0.0, 4.0, 1.0, 6.0)):
        step.update(steal_ms=steal, cpu_mhz=2000.0)
    single = next(m for m in multi_gpu_diagnostics.rank_medians(result) if (m["kind"], m["rank"]) == ("single", 0))
    assert (single["steal_ms_total"], single["steal_slow_ms"], single["steal_fast_ms"]) == (11.0, 5.0, 0.5)
    assert "| 1 (314) | 11 (5.00 / 0.50) | 2000 |" in "\n".join(multi_gpu_diagnostics.markdown([result]))



def test_diagnostics_command_names_unreadable_files_and_reads_the_rest(tmp_path, capsys):
    good = tmp_path / "run.json"
    good.write_text(json.dumps({"mode": "ddp", "model": "m", "method": "badam", "batch_per_gpu": 2, "seq_len": 8,
                                "reduce_dtype": "fp32", "warmup": 0, "per_rank": [
                                    {"phases": [_phase("single", 1, [10, 20]), _phase("ddp", 1, [13, 22])]},
                                    {"phases": [_phase("ddp", 1, [13, 23])]}]}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"mode": "ddp", ')
    assert multi_gpu_diagnostics.main([str(broken), str(tmp_path / "missing.json"), str(good)]) == 0
    captured = capsys.readouterr()
    assert "| m badam 2x8 fp32 |" in captured.out
    errors = captured.err.splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"{broken}: not readable as a result JSON (JSONDecodeError")
    assert errors[1].startswith(f"{tmp_path / 'missing.json'}: not readable as a result JSON (FileNotFoundError")
    assert multi_gpu_diagnostics.main([str(broken)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "error: none of the files is a benchmarks/multi_gpu.py --mode ddp result"

class _ToyModel(torch.nn.Module):
    config = SimpleNamespace(vocab_size=7)

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, input_ids, labels):
        return SimpleNamespace(loss=(self.scale * input_ids.float().mean()).sum())


class _ToyMethod:
    """Records how many objects the collector had frozen while each backward ran; collects in the second one."""

    def __init__(self):
        self.frozen = []

    def backward(self, loss):
        self.frozen.append(gc.get_freeze_count())
        loss.backward()
        if len(self.frozen) == 2:
            gc.collect()

    def clip_and_norm(self, max_norm):
        return 0.0

    def step(self):
        pass

    def zero_grad(self):
        pass

    def describe(self):
        return {}


def test_timed_steps_run_on_a_frozen_heap_and_record_the_collector():
    """As the harness's loop: a collected, frozen heap while the steps run (no full collection traversing torch's and
    transformers' objects mid-step), unfrozen afterwards; each step's full collections and their ms are recorded."""
    method = _ToyMethod()
    args = SimpleNamespace(steps=3, batch_size=2, seq_len=4, overlap_update=False, shard_frozen=False)
    ctx = SimpleNamespace(device=torch.device("cpu"), is_main=False)
    assert gc.get_freeze_count() == 0
    steps = timed_steps(args, ctx, _ToyModel(), method, torch.Generator().manual_seed(0))
    assert len(method.frozen) == 3 and min(method.frozen) > 1000  # torch's modules and more: out of the GC's view
    assert gc.get_freeze_count() == 0  # handed back
    assert steps[1]["gc_full"] >= 1 and steps[1]["gc_ms"] > 0  # the collection inside the second step
    assert all(isinstance(s["gc_full"], int) and s["gc_ms"] >= 0 for s in steps)
    state = host_cpu_state()   # this Linux machine: steal time always, the clock where cpufreq is exposed
    assert state["steal_ms"] >= 0 and 0 <= state["cpu"] < os.cpu_count()
    assert all(s["steal_ms"] >= 0 and s["cpu"] in range(os.cpu_count()) and "cpu_mhz" in s for s in steps)
