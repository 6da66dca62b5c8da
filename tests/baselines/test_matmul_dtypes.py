"""Mixed precision as the harness runs it: under bf16 autocast every matrix product of forward and backward runs in
bf16, also for methods that keep fp32 trainables (LoRA's fp32 adapters, Adam's and GaLore's fp32 masters). An fp32
matmul against bf16 activations would be a measurement bug (slower and larger than the method really is)."""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from experiments.loop import _autocast
from experiments.models import load_model
from tests.baselines.conftest import build

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "_scaled_dot_product_flash_attention_for_cpu"}


class MatmulDtypes(TorchDispatchMode):
    """Counts matrix products by the dtypes of their tensor arguments."""

    def __init__(self):
        super().__init__()
        self.seen = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMULS:
            dtypes = tuple(sorted({str(a.dtype) for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}))
            self.seen[(func.overloadpacket.__name__, dtypes)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["adam", "badam", "lora", "galore"])
def test_every_matmul_is_bf16_under_autocast(name):
    model, _ = load_model("random:tiny-llama", dtype="bf16", tokenizer=False, gradient_checkpointing=True)
    method, model = build(name, model, **({"rank": 4} if name in ("lora", "galore") else {}))
    model.train()
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with MatmulDtypes() as counter:
        with _autocast(torch.device("cpu"), torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        method.backward(loss, last_micro_batch=True)
    assert counter.seen, "no matrix product was seen: the counter is broken"
    wrong = {op: n for op, n in counter.seen.items() if op[1] != ("torch.bfloat16",)}
    assert not wrong, f"{name}: matrix products outside bf16: {wrong}"
