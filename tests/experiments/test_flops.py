"""experiments/flops.py: the FLOP model against a hand count and against torch's own FLOP counter on a tiny Llama,
for a full backward, BAdam's partial backward (every active block), LoRA and LOMO's norm pass; the loop's per-step
counts and summary.json's compute block; the device peaks."""
from __future__ import annotations

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from badam.hf import enable_block_checkpointing
from experiments.config import TrainConfig
from experiments.flops import FlopCounter, Trainable, count_step, device_peak, utilization_summary
from experiments.loop import train
from experiments.results import read_metrics

HIDDEN, INTER, VOCAB, HEADS, HEAD_DIM = 16, 32, 64, 2, 8   # one KV head: k and v are 16 x 8
LAYER_MATMUL = HIDDEN * HIDDEN * 2 + HIDDEN * HEAD_DIM * 2 + 3 * HIDDEN * INTER  # q, o; k, v; gate, up, down = 2304
HEAD = HIDDEN * VOCAB                                                               # 1024


def tiny(layers=2, eager=True, checkpointing=False):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                                      num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=1,
                                      max_position_embeddings=32, use_cache=False)
    if eager:
        config._attn_implementation = "eager"  # attention as two bmm, which torch's counter sees
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    if checkpointing:
        enable_block_checkpointing(model)
    return model.train()


def batch(rows=2, length=8, seed=0):
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def torch_count(model, data) -> tuple[int, int]:
    """(forward, backward) FLOPs as torch.utils.flop_counter sees them (matmuls only, as our convention)."""
    with FlopCounterMode(display=False) as forward:
        loss = model(**data).loss
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


def ours(model, data, passes=1):
    counter = FlopCounter(model)
    return counter.count(counter.snapshot(), [data], backward_passes=passes)


def test_hand_count_of_a_full_step_is_6n_tokens_plus_attention():
    model, data = tiny(), batch()
    tokens, seq = 16, 8
    n_matmul = 2 * LAYER_MATMUL + HEAD                     # 5,632 weights that multiply activations
    attention = 2 * 4 * 2 * seq * seq * HEADS * HEAD_DIM   # 2 layers x 4 s^2 (heads x head_dim) x 2 rows
    forward = 2 * tokens * n_matmul + attention
    assert forward == 196_608
    counted = ours(model, data)
    assert (counted.forward, counted.backward, counted.recompute) == (forward, 2 * forward, 0)
    assert counted.model == 3 * forward == 6 * tokens * n_matmul + 3 * attention
    assert torch_count(model, data) == (forward, 2 * forward)


@pytest.mark.parametrize("block", [0, 1, 2])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_badam_backward_depends_on_the_active_block(block, checkpointing):
    model, data = tiny(layers=3, checkpointing=checkpointing), batch()
    for name, p in model.named_parameters():
        p.requires_grad_(f"layers.{block}." in name)
    counted = ours(model, data)
    forward, backward = torch_count(model, data)
    assert counted.forward == forward
    # hardware FLOPs = backward + the re-forward of the checkpointed layers the backward reaches
    assert counted.backward + counted.recompute == backward
    # by hand: input gradients of layers >= block and of the head, weight gradients of the block, attention backward
    tokens, attention = 16, 4 * 2 * 64 * HEADS * HEAD_DIM
    by_hand = 2 * tokens * (LAYER_MATMUL * (3 - block) + HEAD) + 2 * tokens * LAYER_MATMUL + 2 * attention * (3 - block)
    assert counted.backward == by_hand
    assert (counted.recompute > 0) == checkpointing


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_counts_adapters_and_the_input_gradients_of_every_layer(checkpointing):
    peft = pytest.importorskip("peft")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(tiny(layers=3, checkpointing=checkpointing),
                                peft.LoraConfig(r=2, lora_alpha=8, lora_dropout=0.1, target_modules=targets))
    model.train()
    data = batch()
    counted = ours(model, data)
    forward, backward = torch_count(model, data)
    assert counted.forward == forward and counted.backward + counted.recompute == backward
    rank = 2  # A (in -> r) and B (r -> out) on q, o (16 -> 16), k, v (16 -> 8), gate, up, down (16 <-> 32)
    adapters_per_token = rank * (2 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + HEAD_DIM) + 3 * (HIDDEN + INTER))
    assert counted.forward == ours(tiny(layers=3), data).forward + 2 * 16 * 3 * adapters_per_token


def test_head_only_and_frozen_models():
    model, data = tiny(), batch()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    counted = ours(model, data)
    assert counted.backward == 2 * 16 * HEAD  # the head's weight gradient, nothing below it
    for p in model.parameters():
        p.requires_grad_(False)
    assert ours(model, data).backward == 0


def test_padding_is_not_counted_and_the_norm_pass_doubles_the_backward():
    model = tiny()
    padded = batch()
    padded["attention_mask"] = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    counted = ours(model, padded, passes=2)
    matmul = 2 * 13 * (2 * LAYER_MATMUL + HEAD)
    attention = 2 * 4 * (64 + 25) * HEADS * HEAD_DIM
    assert counted.forward == matmul + attention
    assert counted.model == counted.forward + 2 * counted.backward


def test_count_step_without_torch_counts_a_partial_selection_conservatively():
    from experiments.flops import Matmul, ModelShape

    shape = ModelShape((Matmul("l0.q", 0, 4, 4, "entry"), Matmul("l0.down", 0, 4, 4, "inner"),
                        Matmul("l1.q", 1, 4, 4, "entry"), Matmul("l1.down", 1, 4, 4, "inner"),
                        Matmul("head", None, 4, 8, "post")), num_layers=2, attention_width=4)
    only_down_of_layer_1 = Trainable(matmuls=frozenset({3}), layers=frozenset({1}))
    counted = count_step(shape, only_down_of_layer_1, [2])
    # forward 2*2*(16+16+16+16+32) + attention 4*4*4*2 = 384 + 128; backward: head input, l1.down input + weight
    assert counted.forward == 512 and counted.backward == 2 * 2 * (32 + 16 + 16)


def test_the_loop_records_flops_per_step_and_the_compute_block(tmp_path):
    from baselines.registry import get_method_class

    def batches(epoch):
        return [batch(seed=epoch * 10 + i) for i in range(3)]

    method = get_method_class("badam")(get_method_class("badam").Options(switch_block_every=1,
                                                                         switch_mode="ascending"), lr=1e-3)
    summary = train(tiny(), method, batches, TrainConfig(batch_size=2, max_steps=3, timing_warmup_steps=1),
                    tmp_path / "run", progress=False, meta={"run_name": "run"})
    records = read_metrics(tmp_path / "run")
    flops = [r["model_flops"] for r in records]
    assert flops[0] > flops[1]  # block 0 active: the backward reaches every layer; block 1: only the top one
    assert all(r["hardware_flops"] >= r["model_flops"] for r in records)
    compute = summary["compute"]
    assert compute["steps_counted"] == 2 and compute["model_tflops_per_s"] > 0
    assert compute["mfu"] is None and "no bf16 peak" in compute["peak_source"]  # a CPU has no peak in the table


def test_lomo_norm_pass_is_counted_as_a_second_backward(tmp_path):
    pytest.importorskip("lomo_optim")
    from baselines.registry import get_method_class

    def batches(epoch):
        return [batch(seed=i) for i in range(2)]

    results = {}
    for clip in (1.0, None):
        lomo = get_method_class("lomo")(get_method_class("lomo").Options(), lr=1e-3)
        run = tmp_path / f"lomo-{clip}"
        train(tiny(), lomo, batches, TrainConfig(batch_size=2, max_steps=2, max_grad_norm=clip),
              run, progress=False, meta={"run_name": run.name})
        results[clip] = read_metrics(run)[0]["model_flops"]
    forward = 196_608
    assert results[None] == 3 * forward and results[1.0] == 5 * forward


def test_utilization_summary_and_device_peaks():
    records = [{"step": 1, "t_step_ms": 999.0, "model_flops": 1e15, "hardware_flops": 2e15},
               {"step": 2, "t_step_ms": 1000.0, "model_flops": 4e14, "hardware_flops": 5e14},
               {"step": 3, "t_step_ms": 1000.0, "model_flops": 6e14, "hardware_flops": 7e14}]
    out = utilization_summary(records, 1, "NVIDIA H100 80GB HBM3")
    assert out["model_tflops_per_s"] == pytest.approx(500.0) and out["hardware_tflops_per_s"] == pytest.approx(600.0)
    assert out["mfu"] == pytest.approx(500 / 989.4) and out["model_flops_per_step"] == pytest.approx(5e14)
    assert utilization_summary([{"step": 1, "t_step_ms": 5.0}], 0, "cpu")["note"].startswith("no per-step")
    assert device_peak("NVIDIA H100 80GB HBM3")[0] == pytest.approx(989.4e12)
    assert device_peak("NVIDIA H100 PCIe")[0] == pytest.approx(756e12)
    assert device_peak("NVIDIA H200")[0] == pytest.approx(989.4e12)
    assert device_peak("NVIDIA A100-SXM4-80GB")[0] == pytest.approx(312e12)
    assert device_peak("NVIDIA GeForce RTX 3090")[0] == pytest.approx(71e12)
    assert device_peak("cpu")[0] is None


@pytest.mark.parametrize("block", [0, 1, 2])
def test_reentrant_checkpointing_above_the_active_block_recomputes_one_more_matmul_per_layer(block):
    """badam/checkpointing.py's price of policy block-reentrant: a layer above the active block recomputes its whole
    forward, where non-reentrant checkpointing stops before the MLP's down projection (its input is not needed when the
    weight needs no gradient): one HIDDEN x INTER matmul more per layer above the active block."""
    counts = {}
    for policy in ("block", "block-reentrant"):
        model, data = tiny(layers=3), batch()
        enable_block_checkpointing(model, policy=policy)
        for name, p in model.named_parameters():
            p.requires_grad_(f"layers.{block}." in name)
        counts[policy] = torch_count(model, data)
    assert counts["block"][0] == counts["block-reentrant"][0]
    assert counts["block-reentrant"][1] - counts["block"][1] == 2 * 16 * HIDDEN * INTER * (2 - block)
