"""BAdam's overlap_update option through the harness (badam/overlap.py): nothing changes on a CPU; on a GPU the losses
and weights are those of the plain update bit for bit, and grad_norm is not read (null in metrics.jsonl)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.registry import get_method_class
from experiments.config import TrainConfig
from experiments.loop import train
from experiments.results import read_metrics

VOCAB = 128


def run(tmp_path, device: str, overlap: bool):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(torch.bfloat16).to(device)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    cls = get_method_class("badam")
    method = cls(cls.Options(switch_block_every=1, switch_mode="ascending", overlap_update=overlap), lr=1e-3)
    summary = train(model, method, lambda epoch: [{"input_ids": ids, "labels": ids}],
                    TrainConfig(max_steps=7, lr_schedule="constant", max_grad_norm=0.5), tmp_path,
                    seed=0, progress=False, device=device)
    assert summary["status"] == "ok", summary["error"]
    return method, read_metrics(tmp_path), {k: v.detach().cpu() for k, v in model.state_dict().items()}


def test_on_a_cpu_the_option_changes_nothing(tmp_path):
    method, records, weights = run(tmp_path / "on", "cpu", True)
    assert not method.update_overlapped
    _, plain_records, plain_weights = run(tmp_path / "off", "cpu", False)
    assert [(r["loss"], r["grad_norm"]) for r in records] == [(r["loss"], r["grad_norm"]) for r in plain_records]
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream needs a GPU")
def test_on_a_gpu_the_overlapped_update_trains_bitwise_like_the_plain_one(tmp_path):
    method, records, weights = run(tmp_path / "on", "cuda", True)
    assert method.update_overlapped and method.optimizer._overlap.launched == 7
    _, plain_records, plain_weights = run(tmp_path / "off", "cuda", False)
    assert [r["loss"] for r in records] == [r["loss"] for r in plain_records]
    assert all(r["grad_norm"] is None for r in records) and all(r["grad_norm"] > 0 for r in plain_records)
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)  # model.state_dict() waited
