"""train.distributed=ddp and BlockOptimizer(..., process_group=...) on 2 gloo processes (the cases run in the one
spawn of conftest.py; tests/distributed/ddp_workers.py) against one process on the same global batch.

Tolerances: fp32 as in test_fsdp2_training.py (only the summation order of the micro-batch gradients differs: one
process sums 4 in order, data parallelism sums 2 per rank and then across ranks). bf16 BAdam: each rank sums its
micro-batch gradients in fp32 and the fp32 sums are all-reduced, so only that order differs from one process too
(unlike FSDP2, which reduces in bf16). Measured here: bitwise equal weights and losses; asserted: losses at the fp32
tolerance, weights within one bf16 ulp (a master rounded the other way) for all but 0.1 % of them. Resume: bitwise.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from experiments.results import read_metrics, read_summary
from tests.distributed.common import STEPS, WORLD, full_weights, micro_batches, tiny_llama
from tests.distributed.ddp_workers import LIBRARY_OPTIONS, LIBRARY_STEPS
from tests.distributed.test_fsdp2_training import LR, single_process
from tests.distributed.workers import GRAD_ACCUM


@pytest.fixture(scope="module")
def ddp(fsdp2_run):
    return fsdp2_run["ddp"]


def _diffs(got: dict, want: dict) -> torch.Tensor:
    assert got.keys() == want.keys()
    return torch.cat([(got[k] - want[k]).abs().flatten() for k in want])


@pytest.mark.parametrize("method_name", ["badam", "lora", "adam"])
def test_fp32_data_parallel_equals_single_process(ddp, method_name):
    got = ddp["equivalence"][f"{method_name}/float32"]
    model, method, losses = single_process(method_name, torch.float32)
    diffs = _diffs(got["weights"], full_weights(model))
    assert diffs.max() <= 1e-2 * LR, f"{method_name}: ddp and single-process weights differ by {diffs.max()}"
    assert (diffs > 1e-7).sum() <= 1e-3 * diffs.numel()
    assert got["losses"] == pytest.approx(losses, rel=1e-6)
    assert got["replicas_equal"]  # every rank holds the same weights after every update
    sums = got["grad_sums_per_rank"]  # the gradient each rank held after backward, before the clip: the average
    assert sums[0] == sums[1] and len(sums[0]) == STEPS
    if method_name == "badam":
        blocks = got["blocks_per_rank"]
        assert blocks[0] == blocks[1] == [0, 0, 1, 1]  # K = 2: the same block switches on every rank
        assert got["describe"]["active_block"] == method.describe()["active_block"]


def test_bf16_badam_sums_in_fp32_and_replicates_its_state(ddp):
    got = ddp["equivalence"]["badam/bfloat16"]
    model, method, losses = single_process("badam", torch.bfloat16)
    want = full_weights(model)
    diffs = _diffs(got["weights"], want)
    ulps = torch.cat([(ref.abs() * 2 ** -7).flatten() for ref in want.values()])
    assert (diffs > ulps).float().mean() <= 1e-3 and diffs.max() <= 2 * LR
    assert got["losses"] == pytest.approx(losses, rel=1e-6)
    assert got["replicas_equal"]
    # replicated, not sharded: each rank holds what one process holds (FSDP2 halves both)
    single = method.memory_split(model)
    assert got["split"]["parameters"] == single["parameters"]
    assert got["split"]["optimizer_states"] == single["optimizer_states"] > 0
    assert got["dp"] == {"reduce_dtype": "float32", "bucket_numel": 25_000_000, "max_in_flight": 2,
                         "optimizer_states": "replicated", "frozen_blocks": "replicated"}


def test_library_process_group_schedule_and_weights(ddp):
    """BlockOptimizer(..., process_group=WORLD) with seed 100 + rank and different start weights on rank 1: both
    ranks follow rank 0's schedule and weights; averaging every backward (no no_sync) equals one process, with a
    plain torch clip over p.grad in between."""
    from badam import BlockOptimizer

    got = ddp["library"]
    assert got["blocks_per_rank"][0] == got["blocks_per_rank"][1]
    assert got["orders_per_rank"][0] == got["orders_per_rank"][1]
    assert got["replicas_equal"]
    model = tiny_llama(torch.float32)
    base = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    optimizer = BlockOptimizer(base, list(model.named_parameters()), **LIBRARY_OPTIONS, seed=100, verbose=0)
    per_step = WORLD * GRAD_ACCUM
    batches = micro_batches(LIBRARY_STEPS * per_step)
    blocks, orders = [], []
    for s in range(LIBRARY_STEPS):
        blocks.append(optimizer.current_block)
        orders.append(list(optimizer._order))
        for batch in batches[s * per_step:(s + 1) * per_step]:
            (model(**batch).loss / per_step).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    assert got["blocks_per_rank"][0] == blocks and got["orders_per_rank"][0] == orders  # rank 0's seed
    assert len(set(blocks)) == 3  # three blocks visited: the comparison crosses switches
    diffs = _diffs(got["weights"], full_weights(model))
    assert diffs.max() <= 1e-2 * LR and (diffs > 1e-7).sum() <= 1e-3 * diffs.numel()



def test_overlapped_update_defers_the_average_to_step_and_changes_no_number(ddp):
    """Two gloo ranks, bf16: with overlap_update the all-reduces stay in flight after backward (every step) and are
    averaged inside step(), clipped there; weights and norms equal the plain data-parallel optimizer's bit for bit."""
    got = ddp["library_overlap"]
    assert got["deferred"] == (0, LIBRARY_STEPS)
    assert got["norms"][0] == got["norms"][1] and got["equal"]

def test_ranks_built_differently_get_one_clear_error(ddp):
    errors = ddp["library"]["mismatch_errors"]
    assert len(errors) == WORLD and all("rank 1 differs from rank 0 in schedule" in (e or "") for e in errors)


@pytest.mark.parametrize("case", ["resume", "resume_sharded"])
def test_resume_under_ddp_is_bitwise(ddp, case):
    out = ddp[case]  # 5 steps straight vs 3, checkpoint.pt, fresh model + method + attachment, 2 more (K = 2)
    straight, resumed = out["straight"], out["resumed"]
    assert resumed["step"] == 3 and resumed["describe"] == straight["describe"]
    for key, value in straight["weights"].items():
        assert torch.equal(resumed["weights"][key], value), key
    if case == "resume_sharded":  # train.ddp_shard_frozen: the same numbers as replicated, less held per rank
        replicated = ddp["resume"]
        assert all(torch.equal(value, replicated["straight"]["weights"][k]) for k, value in straight["weights"].items())
        assert resumed["dp"]["frozen_blocks"] == "sharded"
        assert resumed["split"]["parameters"] < replicated["resumed"]["split"]["parameters"]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_experiments_run_ddp_equals_fsdp2_and_resumes(fsdp2_run):
    """The harness under train.distributed=ddp (2 ranks, batch 1 each), stopped after 2 steps and resumed to 4,
    against the uninterrupted fsdp2 run of the same config, which test_fsdp2_training compares with one process."""
    got = fsdp2_run["ddp"]["harness"]
    assert got["statuses"] == ["ok", "ok"]  # stop_after_steps ends a run "ok" (stopped early)
    assert got["distributed"]["mode"] == "ddp" and got["distributed"]["world_size"] == WORLD
    assert got["distributed"]["optimizer_states"] == "replicated"
    base = fsdp2_run["harness_dir"]
    sharded = base / "straight" / "smollm2_alpaca-badam"
    resumed = base.parent / "ddp" / "harness" / "half" / "smollm2_alpaca-badam"  # resumed in its own directory
    assert (resumed / "checkpoint.pt").is_file() and read_summary(resumed)["steps"] == 4
    for a, b in zip(read_metrics(sharded), read_metrics(resumed), strict=True):
        assert b["tokens"] == a["tokens"] and b["active_block"] == a["active_block"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    diffs = torch.cat([(v - _weights(sharded / "model")[k]).abs().flatten()
                       for k, v in _weights(resumed / "model").items()])
    assert diffs.max() <= 1e-2 * LR and (diffs > 1e-7).float().mean() <= 1e-3


def test_experiments_run_ddp_with_frozen_blocks_sharded_equals_replicated(fsdp2_run):
    """train.ddp_shard_frozen=true through experiments.run, stopped after 2 steps and resumed to 4: the replicated ddp
    run's metrics and saved model bit for bit (the checkpoint and the model are gathered onto rank 0)."""
    harness = fsdp2_run["harness_dir"].parent / "ddp" / "harness"
    replicated, sharded = (harness / name / "smollm2_alpaca-badam" for name in ("half", "sharded"))
    assert read_summary(sharded)["steps"] == 4 and read_summary(sharded)["distributed"]["frozen_blocks"] == "sharded"
    for a, b in zip(read_metrics(replicated), read_metrics(sharded), strict=True):
        assert (b["loss"], b["grad_norm"], b["active_block"]) == (a["loss"], a["grad_norm"], a["active_block"])
    want = _weights(replicated / "model")
    assert all(torch.equal(v, want[k]) for k, v in _weights(sharded / "model").items()) and want
    placed = fsdp2_run["ddp"]["harness"]["placed"]  # random:tiny-llama built on meta, placed unit by unit
    assert placed["status"] == "ok"
    losses = [m["loss"] for m in read_metrics(Path(placed["dir"]))]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    got = _weights(Path(placed["dir"]) / "model")
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert all(v.abs().sum() > 0 for v in got.values())  # every weight drawn, none left empty or zero


def test_experiments_run_ddp_with_compiled_layers_keeps_the_losses(fsdp2_run):
    """train.distributed=ddp with train.compile_layers=aot_eager (Dynamo's capture on every rank, eager kernels): the
    uninterrupted fsdp2 run's losses, and the compile stats in the summary (graphs counted, none broken)."""
    got = fsdp2_run["ddp"]["harness"]["compiled"]
    assert got["status"] == "ok"
    stats = got["compile_layers"]
    assert stats["backend"] == "aot_eager" and stats["graphs"] >= 2 and stats["graph_breaks"] == 0
    sharded = fsdp2_run["harness_dir"] / "straight" / "smollm2_alpaca-badam"
    compiled = read_metrics(Path(got["dir"]))
    assert [m["loss"] for m in compiled] == pytest.approx([m["loss"] for m in read_metrics(sharded)], rel=1e-6)
    assert len(compiled) == 4


def test_benchmark_alternates_single_alone_and_data_parallel_phases(ddp):
    """benchmarks/multi_gpu.py --mode ddp --compare-single 2 --alone-phase --single-every-rank (tiny Llama): each rank
    alone in turn, both ranks on their own at once, then both ranks averaging, twice; the scaling figures are the
    ratios of rank 0's single and the ddp phases; BAdam's schedule is the same on both ranks in every phase; every
    step records the host side, and the ddp steps the all-reduce's window and tail."""
    result = ddp["bench"]
    assert [(p["kind"], p["round"], p["gpus"]) for p in result["phases"]] == [
        ("single", 1, 1), ("alone", 1, 2), ("ddp", 1, 2), ("single", 2, 1), ("alone", 2, 2), ("ddp", 2, 2)]
    single, data_parallel = result["phases"][0::3], result["phases"][2::3]
    ratios = [d["tokens_per_s"] / (WORLD * s["tokens_per_s"]) for s, d in zip(single, data_parallel)]
    assert result["scaling_per_round"]["min"] == min(ratios) and result["scaling_per_round"]["max"] == max(ratios)
    assert result["scaling_of_medians"] == pytest.approx(
        result["ddp_tokens_per_s"]["median"] / (WORLD * result["single_tokens_per_s"]["median"]))
    assert result["alone_tokens_per_s"]["n"] == 2
    for rank in result["per_rank"]:  # rank 1 ran its own single phases too
        assert [(p["kind"], p["round"]) for p in rank["phases"]] == [
            ("single", 1), ("alone", 1), ("ddp", 1), ("single", 2), ("alone", 2), ("ddp", 2)]
        assert rank["host"]["cpus"] and rank["host"]["torch_threads"] >= 1
        for phase in rank["phases"]:
            for step in phase["steps"]:
                assert step["host_forward_ms"] > 0 and step["cpu_forward_ms"] >= 0 and step["host_backward_ms"] > 0
                assert ("reduce_tail_ms" in step) == (phase["kind"] == "ddp")
    for kind in ("alone", "ddp"):
        ranks = [[p for p in r["phases"] if p["kind"] == kind] for r in result["per_rank"]]
        for phase0, phase1 in zip(*ranks, strict=True):
            assert [s["active_block"] for s in phase0["steps"]] == [s["active_block"] for s in phase1["steps"]]
    diagnostics = result["diagnostics"]
    assert diagnostics["paired"]["ddp"]["same_blocks"] and diagnostics["paired"]["alone"]["same_blocks"]
    assert diagnostics["paired"]["ddp"]["rank1_reference"] == "own single"
    assert {(m["kind"], m["rank"]) for m in diagnostics["rank_medians"]} == {
        (k, r) for k in ("single", "alone", "ddp") for r in range(WORLD)}


@pytest.mark.parametrize("layout", ["flags in the last bucket", "flags alone"])
def test_gradients_present_on_some_ranks_only(ddp, layout):
    """A parameter with a gradient on rank 0 only gets (g0 + 0) / 2 on both ranks, one with a gradient nowhere keeps
    none, the others the fp32 average of the ranks' bf16 gradients, whether the presence flags ride in the last
    bucket (several tensors there) or travel in an all-reduce of their own."""
    got = ddp["partial"][layout]
    assert got["flags_in_bucket"] == (layout == "flags in the last bucket")
    local = [r["local"] for r in got["ranks"]]
    for name in local[0]:
        held = [r["synced"][name] for r in got["ranks"]]
        if name.endswith("_none"):
            assert held == [None, None] and local[0][name] is None
            continue
        theirs = [loc[name].float() if loc[name] is not None else torch.zeros(4 if name[0] == "b" else (4, 4))
                  for loc in local]
        if name.endswith("_rank0"):
            assert local[1][name] is None and local[0][name] is not None
        want = ((theirs[0] + theirs[1]) / 2).to(torch.bfloat16)
        assert torch.equal(held[0], want) and torch.equal(held[1], want), name


def test_benchmark_places_a_meta_model_as_it_shards_the_frozen_blocks(ddp):
    """--mode ddp --shard-frozen without --compare-single (what fits no single GPU, e.g. 70B): the model is built on
    the meta device and placed layer by layer in the one ddp phase, which trains (finite losses, the same schedule on
    both ranks) and counts the whole model's parameters and FLOPs."""
    result = ddp["bench"]["placed"]
    assert [(p["kind"], p["gpus"]) for p in result["phases"]] == [("ddp", 2)] and result["shard_frozen"]
    assert result["total_params"] == ddp["bench"]["total_params"]
    steps = [r["phases"][0]["steps"] for r in result["per_rank"]]
    assert [s["active_block"] for s in steps[0]] == [s["active_block"] for s in steps[1]]
    assert all(math.isfinite(s["loss"]) and s["model_flops"] == steps[0][0]["model_flops"] > 0 for s in steps[0])


def test_benchmark_with_compiled_layers_records_three_graphs_per_rank(ddp):
    """--mode ddp --compile-layers aot_eager (tiny Llama, 3 steps over both blocks): the layers' three graphs are
    compiled in the first steps on each rank and recorded in the result; both ranks keep the same schedule and the
    replicas train (the compiled losses' agreement with eager ones: tests/distributed/test_layer_compile.py)."""
    result = ddp["bench_compiled"]
    assert [(p["kind"], p["gpus"]) for p in result["phases"]] == [("ddp", 2)]
    assert result["compile_layers"]["backend"] == "aot_eager"
    blocks = [s["active_block"] for s in result["per_rank"][0]["phases"][0]["steps"]]
    for rank in result["per_rank"]:
        stats = rank["compile_layers"]
        assert (stats["graphs"], stats["recompiles"], stats["graph_breaks"]) == (3, 2, 0), stats
        steps = rank["phases"][0]["steps"]
        assert [s["new_graphs"] for s in steps] == [2, 0, 1]  # blocks 0, 0, 1: the third graph at the switch
        assert [s["active_block"] for s in steps] == blocks  # the same schedule on both ranks
        assert all(s["reduce_tail_ms"] >= 0 for s in steps)  # the averaging ran on the compiled backward's gradients


def test_frozen_blocks_sharded_train_bitwise_like_replicated_and_hold_less(ddp):
    """shard_frozen_blocks on 2 gloo ranks (bf16, embeddings and head as blocks, non-reentrant checkpointing): the
    same losses and weights as the unsharded data-parallel optimizer, bit for bit, with less held per rank (and with
    two units prefetched); the state dict gathered on rank 0 loads back into a fresh sharded model; release() makes
    the model whole again."""
    got = ddp["library_sharded"]
    assert got["losses"][0] == got["losses"][1]
    assert got["equal"] and got["reloaded_equal"] and got["released"]
    assert got["units"] == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]
    assert got["gathers"] > 0 and {"model.embed_tokens.weight", "lm_head.weight"} & set(got["sharded_names"])
    assert 0 < got["prefetched"] < got["gathers"]  # gathers issued ahead (forward, recomputation, next step) were used
    deeper = got["deeper"]  # two units ahead: the same numbers, more of the gathers issued ahead
    assert deeper["losses_equal"] and deeper["equal"]
    assert deeper["gathers"] == got["gathers"] and got["prefetched"] < deeper["prefetched"] <= deeper["gathers"]
    plain, sharded = got["held_bytes"]
    assert all(s < 0.75 * p for p, s in zip(plain, sharded)), (plain, sharded)  # embeddings and head are most of it
