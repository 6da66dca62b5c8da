"""BAdam, Adam and LoRA (frozen bf16-or-fp32 base inside the FSDP2 units, trainable adapters) sharded with FSDP2 over 2
gloo processes equal the single-process run on the same global batch; BAdam resumed from a sharded checkpoint equals
the uninterrupted run; `experiments.run ... train.distributed=fsdp2` does all this end to end.

One spawn runs every distributed case (tests/distributed/conftest.py); the single-process references run here.

Tolerances, and why:
  * fp32 weights: per step, the single process sums the 4 micro-batch gradients in order, FSDP2 sums 2 per rank and
    then reduce-scatters, and the gradient norm is a sum of squares over shards; only the summation order differs, so
    weights agree to fp32 rounding: at least 99.9 % of them within 1e-7. Adam divides by sqrt(v) + eps, which turns
    a rounding-level difference in a near-zero gradient into a visible one, so a handful of weights may differ more,
    but never by more than 1 % of one step's largest move (lr = 1e-3, so 1e-5); training moves weights by > 1e-3.
  * bf16 weights: one process sums the bf16 micro-batch gradients into fp32 exactly (reordering them changes
    nothing, checked), but FSDP2 reduce-scatters in the weights' dtype, so the summed gradient is rounded to bf16 once
    more. Adam's normalised update then turns that rounding of near-zero gradients into differences of up to about
    lr per step in a few weights, and bf16 write-back rounds some masters the other way. Measured here: losses within
    5e-5 relative, 1.7 % of weights more than one bf16 ulp apart, at most 3 lr. Asserted: losses within 2e-4
    relative, <= 5 % of weights more than one ulp apart, every weight within 2 lr per step.
  * resume: the same operations in the same order on the same data: bitwise equal.
"""
from __future__ import annotations

import json

import pytest
import torch

from experiments import run as run_cli
from experiments.results import read_metrics, read_summary
from tests.distributed.common import STEPS, WORLD, full_weights, make_method, micro_batches, tiny_llama, train_steps
from tests.distributed.workers import GRAD_ACCUM, harness_args

LR = 1e-3  # common.make_method's default


@pytest.fixture(scope="module")
def sharded(fsdp2_run):
    return fsdp2_run["equivalence"]


def single_process(method_name: str, dtype: torch.dtype):
    """The same global batch on one process: grad_accum = WORLD x GRAD_ACCUM micro-batches per step."""
    per_step = WORLD * GRAD_ACCUM
    batches = micro_batches(STEPS * per_step)
    method = make_method(method_name)
    model = method.prepare_model(tiny_llama(dtype))
    method.build_optimizer(model)
    losses = train_steps(model, method, [batches[s * per_step:(s + 1) * per_step] for s in range(STEPS)])
    return model, method, losses


@pytest.mark.parametrize("method_name", ["badam", "adam", "lora"])
def test_fp32_sharded_equals_single_process(sharded, method_name):
    got = sharded[f"{method_name}/float32"]
    model, method, losses = single_process(method_name, torch.float32)
    want = full_weights(model)
    initial = full_weights(make_method(method_name).prepare_model(tiny_llama(torch.float32)))
    assert got["weights"].keys() == want.keys()
    diffs = torch.cat([(got["weights"][k] - want[k]).abs().flatten() for k in want])
    assert diffs.max() <= 1e-2 * LR, f"{method_name}: sharded and single-process weights differ by {diffs.max()}"
    assert (diffs > 1e-7).sum() <= 1e-3 * diffs.numel()
    assert got["losses"] == pytest.approx(losses, rel=1e-6)
    # the comparison means something only if training moved the weights (LoRA: the adapters, B starts at zero)
    moved = max((want[k] - initial[k]).abs().max().item() for k in want)
    assert moved > 1e-3
    if method_name == "badam":
        assert got["describe"]["active_block"] == method.describe()["active_block"]


def test_bf16_badam_close_and_its_memory_sharded(sharded):
    got = sharded["badam/bfloat16"]
    model, method, losses = single_process("badam", torch.bfloat16)
    want = full_weights(model)
    diffs = torch.cat([(got["weights"][k] - ref).abs().flatten() for k, ref in want.items()])
    ulps = torch.cat([(ref.abs() * 2 ** -7).flatten() for ref in want.values()])  # bf16: 8 significant bits
    assert diffs.max() <= 2 * LR * STEPS
    assert (diffs > ulps).float().mean() <= 0.05
    assert got["losses"] == pytest.approx(losses, rel=2e-4)
    # the active block's fp32 master and Adam moments are sharded like the weights: each rank holds half
    single = method.memory_split(model)
    assert got["split"]["parameters"] == single["parameters"] // WORLD
    assert got["split"]["optimizer_states"] == single["optimizer_states"] // WORLD > 0


def test_badam_resume_from_sharded_checkpoint_equals_uninterrupted(fsdp2_run):
    out = fsdp2_run["resume"]  # 5 steps straight vs 3 steps, save, fresh model + method, load, 2 steps (K = 2)
    straight, resumed = out["straight"], out["resumed"]
    assert resumed["position"] == {"step": 3} and out["rank_states"] == [0, 1]
    assert resumed["describe"] == straight["describe"]  # same block, same place in the schedule
    for key, value in straight["weights"].items():
        assert torch.equal(resumed["weights"][key], value), key


def test_meta_device_init_builds_a_proper_random_model(fsdp2_run):
    from experiments.models import load_model

    got = fsdp2_run["meta_init"]
    reference, _ = load_model("random:tiny-llama", dtype="fp32", device="meta", tokenizer=False)
    with torch.device("cpu"):
        want = type(reference.model.rotary_emb)(reference.config).inv_freq
    assert torch.equal(got["inv_freq"], want)  # rotary buffers recomputed after to_empty
    assert got["q_std"] == pytest.approx(reference.config.initializer_range, rel=0.1)  # transformers' init ran
    assert torch.equal(got["norm"], torch.ones_like(got["norm"]))
    # LoRA applied on the meta device: after materialising, the adapters have peft's start (B = 0, A Kaiming-uniform:
    # std = 1/sqrt(3 * fan_in) = 1/sqrt(192) for fan_in 64), not transformers' init
    assert got["lora_B_max"] == 0.0 and got["lora_A_std"] == pytest.approx(192 ** -0.5, rel=0.15)


def _weights(model_folder):
    from safetensors.torch import load_file

    return load_file(str(model_folder / "model.safetensors"))


def test_experiments_run_fsdp2_equals_one_process_and_resumes(fsdp2_run, tmp_path):
    """torchrun-style run of experiments.run with train.distributed=fsdp2 (2 ranks, batch 1 each) against one process
    with grad_accum 2 on the same data; then the resumed run against the uninterrupted one."""
    assert fsdp2_run["harness"] == {"statuses": ["ok", "ok"], "main_exit": 0}
    base, model_dir = fsdp2_run["harness_dir"], fsdp2_run["model_dir"]
    assert run_cli.main(harness_args(model_dir, tmp_path, "train.grad_accum=2", "output.save_model=true")) == 0
    single, sharded = tmp_path / "smollm2_alpaca-badam", base / "straight" / "smollm2_alpaca-badam"
    one, many = read_metrics(single), read_metrics(sharded)
    assert [r["step"] for r in many] == [1, 2, 3, 4]
    for a, b in zip(one, many):
        assert b["world_size"] == WORLD and len(b["mem_peak_allocated_bytes_per_rank"]) == WORLD
        assert b["tokens"] == a["tokens"]  # summed over ranks
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # averaged over ranks
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["active_block"] == a["active_block"]
    assert many[-1]["eval_loss"] == pytest.approx(one[-1]["eval_loss"], rel=1e-6)
    summary = read_summary(sharded)
    assert summary["status"] == "ok" and summary["distributed"]["world_size"] == WORLD
    assert len(summary["memory"]["peak_allocated_bytes_per_rank"]) == WORLD
    diffs = torch.cat([(a - _weights(single / "model")[k]).abs().flatten()
                       for k, a in _weights(sharded / "model").items()])
    assert diffs.max() <= 1e-2 * method_lr(single) and (diffs > 1e-7).float().mean() <= 1e-3

    resumed = base / "half" / "smollm2_alpaca-badam"  # a resume continues in the checkpoint's directory
    layout = json.loads((resumed / "checkpoint.dcp" / "layout.json").read_text())
    assert layout["position"]["step"] == 4 and read_summary(resumed)["steps"] == 4
    again = read_metrics(resumed)
    assert [r["step"] for r in again] == [1, 2, 3, 4]  # history up to the checkpoint kept, then continued
    for a, b in zip(many, again):
        assert (a["loss"], a["grad_norm"], a["active_block"]) == (b["loss"], b["grad_norm"], b["active_block"])
    for key, value in _weights(sharded / "model").items():
        assert torch.equal(_weights(resumed / "model")[key], value), key


def method_lr(run_dir) -> float:
    return float(read_summary(run_dir)["method_info"]["lr"])
