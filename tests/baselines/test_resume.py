"""A checkpoint (model weights + method.state_dict, saved and loaded with weights_only=True) resumes the run so that
the next step is bit-identical to the uninterrupted one."""
from __future__ import annotations

import io

import pytest
import torch

from tests.baselines.conftest import build, make_llama, train_step

RESUMABLE = [
    ("adam", {}),
    # K = 2 and 2 steps before the checkpoint: the block switch happens right before saving; random order
    # checks that the schedule and its generator are restored too
    ("badam", {"switch_block_every": 2, "switch_mode": "random", "seed": 7}),
    ("badam_official", {"switch_block_every": 3, "switch_mode": "ascending"}),
    ("badam_ratio", {"switch_every": 3, "update_ratio": 0.2, "mask_mode": "scatter", "seed": 3}),
    ("galore", {"rank": 4, "update_proj_gap": 2}),
    ("galore_layerwise", {"rank": 4, "update_proj_gap": 2}),
    ("lora", {"rank": 4, "dropout": 0.0}),
]


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name,options", RESUMABLE, ids=[r[0] for r in RESUMABLE])
def test_state_dict_roundtrip_reproduces_the_next_steps(name, options, batch):
    check_resume_is_bitwise(name, options, batch)


def check_resume_is_bitwise(name, options, batch):
    """2 steps, checkpoint (weights_only round trip), 2 more steps == a fresh model and method loaded from the
    checkpoint, then the same 2 steps."""
    method, model = build(name, make_llama(), lr=1e-2, **options)
    for _ in range(2):
        train_step(method, model, batch)
    checkpoint = roundtrip({"model": model.state_dict(), "method": method.state_dict()})
    for _ in range(2):  # the uninterrupted run (two steps: the second one uses restored optimizer state)
        train_step(method, model, batch)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    resumed_method, resumed = build(name, make_llama(seed=99), lr=1e-2, **options)  # different init on purpose
    resumed.load_state_dict(checkpoint["model"])
    resumed_method.load_state_dict(checkpoint["method"])
    for _ in range(2):
        train_step(resumed_method, resumed, batch)
    for n, p in resumed.named_parameters():
        assert torch.equal(p, expected[n]), f"{name}: {n} differs after resume"
    assert resumed_method.describe() == method.describe()  # schedules (active block, subsets) continue too
