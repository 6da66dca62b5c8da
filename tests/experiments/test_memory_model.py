"""experiments/memory_model.py: the one analytic memory model (paper Table 1 and the multi-GPU prediction)."""
from __future__ import annotations

import pytest

from experiments.memory_model import (block_method_bytes, decoder_parameters, layer_parameters, paper_formula,
                                      sharded_bytes_per_device)
from experiments.model_configs import RANDOM_MODELS

LLAMA3_8B = dict(RANDOM_MODELS["llama3-8b"].config)


def test_parameter_counts_match_the_published_models():
    assert decoder_parameters(LLAMA3_8B) == 8_030_261_248
    assert layer_parameters(LLAMA3_8B) == 218_112_000  # 4096^2 x 2 + 4096 x 1024 x 2 + 3 x 4096 x 14336 + 2 x 4096


def test_table1_formulas():
    p = decoder_parameters(LLAMA3_8B)
    assert paper_formula("adam", p, 32, 4096).bytes == 18 * p
    assert paper_formula("badam", p, 32, 4096).bytes == round(2 * p + 16 * p / 32)
    assert paper_formula("lomo", p, 32, 4096).bytes == round(2 * p + 2 * p / 32)
    lora = paper_formula("lora-rank8", p, 32, 4096)
    assert lora.bytes == round(2 * p + 36 * 8 * p / 4096) and lora.formula.startswith("2M + 36rM/m")
    with pytest.raises(ValueError, match="valid: adam, lomo"):
        paper_formula("adafactor", p, 32, 4096)


def test_sharded_prediction_is_the_same_model_divided_over_devices():
    p, block = 8_030_261_248, 218_112_000
    assert sharded_bytes_per_device("badam", p, block, 2).bytes == (2 * p + 16 * block) // 2
    assert sharded_bytes_per_device("badam", p, block, 1).bytes == block_method_bytes(p, block).bytes
    assert sharded_bytes_per_device("adam", p, None, 4).bytes == 18 * p // 4
    assert sharded_bytes_per_device("lora", p, None, 1) is None
    with pytest.raises(ValueError, match="devices must be >= 1"):
        sharded_bytes_per_device("adam", p, None, 0)
