"""BAdam/BSGD's measure_rounding option through the harness: metrics.jsonl on switch steps, summary.json's block."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.registry import get_method_class
from experiments.checkpoint import config_differences
from experiments.config import TrainConfig, load_config
from experiments.loop import train
from experiments.results import read_metrics

VOCAB = 128


def tiny_model(dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).to(dtype)


def run(tmp_path, name, dtype, measure):
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids}
    cls = get_method_class(name)
    method = cls(cls.Options(switch_block_every=2, switch_mode="ascending", measure_rounding=measure),
                 lr=1e-3 if name == "badam" else 0.1)
    summary = train(tiny_model(dtype), method, lambda epoch: [batch], TrainConfig(max_steps=5, lr_schedule="constant"),
                    tmp_path, seed=0, progress=False)
    assert summary["status"] == "ok", summary["error"]
    return summary, read_metrics(tmp_path)


@pytest.mark.filterwarnings("ignore:BlockOptimizer")
@pytest.mark.parametrize("name", ["badam", "bsgd"])
def test_switch_steps_carry_the_visit_and_the_summary_the_block(tmp_path, name):
    summary, records = run(tmp_path, name, torch.bfloat16, True)
    measured = {r["step"]: r["badam_rounding"] for r in records if "badam_rounding" in r}
    assert sorted(measured) == [2, 4]  # K = 2: visits end at steps 2 and 4
    assert [v["block"] for v in measured.values()] == [0, 1]
    kept = [v["update_kept"] for v in measured.values()]
    block = summary["badam_rounding"]
    assert block["visits"] == 2 and block["dtype"] == "bfloat16"
    assert block["min_update_kept"] == min(kept)
    assert block["median_update_kept"] == pytest.approx(sum(kept) / 2)
    assert 0 <= block["median_elements_frozen"] <= 1
    assert block["visits_below_threshold"] == sum(k < block["threshold"] for k in kept)


@pytest.mark.filterwarnings("ignore:BlockOptimizer")
def test_off_leaves_no_trace_and_fp32_weights_measure_nothing(tmp_path):
    summary, records = run(tmp_path / "off", "badam", torch.bfloat16, False)
    assert "badam_rounding" not in summary and not any("badam_rounding" in r for r in records)
    summary, records = run(tmp_path / "fp32", "badam", torch.float32, True)
    assert summary["badam_rounding"]["visits"] == 0 and summary["badam_rounding"]["median_update_kept"] is None
    assert not any("badam_rounding" in r for r in records)


def test_the_gemma_quality_config_measures_and_a_resume_may_turn_it_on():
    for name in ("badam", "bsgd"):
        cfg = load_config("quality/gemma3_270m_alpaca.yaml", [f"method.name={name}"])
        assert cfg.method.options["measure_rounding"] is True and cfg.model.dtype == "bf16"
    saved = {"method": {"options": {"measure_rounding": False, "switch_block_every": 10}}}
    wanted = {"method": {"options": {"measure_rounding": True, "switch_block_every": 10}}}
    assert config_differences(saved, wanted) == []
