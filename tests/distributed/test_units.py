"""experiments/distributed.py and distributed_checkpoint.py pieces that need no process group."""
from __future__ import annotations

import re

import pytest
import torch

from baselines.errors import MethodUnsupportedError
from baselines.registry import get_method_class, method_names
from experiments import distributed as D
from experiments import distributed_checkpoint as C


def test_round_robin_deals_whole_rounds_only():
    items = list(range(7))
    shares = [list(D.deal_round_robin(items, r, 3)) for r in range(3)]
    assert shares == [[0, 3], [1, 4], [2, 5]]  # 6 is an incomplete round: dropped on every rank
    assert sorted(sum(shares, [])) == list(range(6))


def test_sharded_batches_fn_keeps_length_and_epochs():
    ctx = D.DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), backend="gloo", mesh=None)
    fn = D.shard_batches_fn(lambda epoch: [f"e{epoch}b{i}" for i in range(5)], ctx)
    assert len(fn(0)) == 2 and list(fn(0)) == ["e0b1", "e0b3"]
    assert list(fn(1)) == ["e1b1", "e1b3"]
    gen_fn = D.shard_batches_fn(lambda epoch: (i for i in range(4)), ctx)  # no length: a plain iterator
    assert list(gen_fn(0)) == [1, 3]


def test_merge_step_records():
    records = [
        {"step": 3, "loss": 2.0, "tokens": 100, "t_step_ms": 50.0, "t_forward_ms": 10.0, "grad_norm": 0.5,
         "mem_peak_allocated_bytes": 1000, "mem_peak_reserved_bytes": None, "active_block": 1},
        {"step": 3, "loss": 4.0, "tokens": 60, "t_step_ms": 80.0, "t_forward_ms": 30.0, "grad_norm": 0.5,
         "mem_peak_allocated_bytes": 3000, "mem_peak_reserved_bytes": None, "active_block": 1},
    ]
    merged = D.merge_step_records(records)
    assert merged["loss"] == pytest.approx(3.0)
    assert merged["tokens"] == 160
    assert merged["t_step_ms"] == 80.0 and merged["t_forward_ms"] == 30.0
    assert merged["tokens_per_s"] == pytest.approx(160 / 0.08)
    assert merged["mem_peak_allocated_bytes"] == 3000
    assert merged["mem_peak_allocated_bytes_per_rank"] == [1000, 3000]
    assert merged["world_size"] == 2 and merged["active_block"] == 1 and merged["step"] == 3


def test_merge_memory_summaries_keeps_per_rank_and_the_top_split():
    a = {"device": "cuda", "peak_allocated_bytes": 10, "peak_reserved_bytes": 12, "split_bytes": {"parameters": 1},
         "process_peak_rss_bytes": 5}
    b = {"device": "cuda", "peak_allocated_bytes": 30, "peak_reserved_bytes": 31, "split_bytes": {"parameters": 2},
         "process_peak_rss_bytes": 6}
    merged = D.merge_memory_summaries([a, b])
    assert merged["peak_allocated_bytes"] == 30 and merged["peak_allocated_bytes_per_rank"] == [10, 30]
    assert merged["peak_reserved_bytes_per_rank"] == [12, 31] and merged["split_bytes"] == {"parameters": 2}
    assert merged["split_rank"] == 1 and merged["process_peak_rss_bytes_per_rank"] == [5, 6]


def test_unsupported_methods_are_refused_with_reason():
    with pytest.raises(MethodUnsupportedError, match="adalomo is unsupported under train.distributed=fsdp2"):
        D.check_method_supported("adalomo")
    refused = set()
    for name in method_names():
        cls = get_method_class(name)
        if cls.supports_fsdp2():
            D.check_method_supported(name)  # no error
            assert D.method_note(name) == cls.fsdp2_note
        else:
            refused.add(name)
            with pytest.raises(MethodUnsupportedError, match=re.escape(cls.fsdp2_unsupported[:40])):
                D.check_method_supported(name)
    # the refusals seen on 2 gloo processes (experiments/distributed.py), now declared by the methods themselves
    assert {"adalomo", "galore_8bit", "adamw_8bit", "q_galore", "apollo", "adam_mini"} <= refused


def test_a_new_method_is_not_offered_sharded_until_its_class_says_it_was_verified(monkeypatch):
    """A method file that declares nothing about FSDP2 is refused at start with the reason, as under ddp: an optimizer
    that keeps plain-tensor state (transformers' Adafactor, say) fails on DTensor parameters at its first step."""
    import baselines.registry as registry
    from baselines.precision import MasterWeightMethod

    class Unverified(MasterWeightMethod):
        name = "unverified"

    assert not Unverified.supports_fsdp2() and not Unverified.capabilities()["supports_fsdp2"]
    monkeypatch.setattr(registry, "get_method_class", lambda name: Unverified if name == "unverified"
                        else get_method_class(name))
    with pytest.raises(MethodUnsupportedError, match="unverified is unsupported under train.distributed=fsdp2: not "
                                                     "verified under FSDP2 sharding"):
        D.check_method_supported("unverified")


def test_data_parallel_is_offered_to_the_methods_that_declare_it():
    from experiments import ddp

    offered = {name for name in method_names() if get_method_class(name).supports_ddp()}
    assert offered == {"badam", "bsgd", "lora", "adam", "sgd"}  # each compared with one process (test_ddp.py)
    for name in offered:
        ddp.check_method_supported(name)  # no error
    with pytest.raises(MethodUnsupportedError, match="lomo is unsupported under train.distributed=ddp: not verified .*"
                                                     "Methods that run under ddp: adam, badam, bsgd, lora, sgd"):
        ddp.check_method_supported("lomo")


def test_init_without_torchrun_says_how_to_launch(monkeypatch):
    for name in D.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(D.LaunchError, match="torchrun --nproc_per_node N"):
        D.init_distributed("cpu")


def test_fsdp2_on_one_gpu_is_told_the_plain_path_is_faster():
    note = D.single_gpu_fsdp2_note("fsdp2", 1, cuda=True)
    assert "train.distributed=none is faster" in note and "0.69-0.85x" in note
    assert D.single_gpu_fsdp2_note("fsdp2", 2, cuda=True) is None  # sharding over GPUs is what FSDP2 is for
    assert D.single_gpu_fsdp2_note("ddp", 1, cuda=True) is None
    assert D.single_gpu_fsdp2_note("fsdp2", 1, cuda=False) is None  # gloo on the CPU: tests and examples


def test_transformer_layers_found_by_name():
    from experiments.models import load_model

    model, _ = load_model("random:tiny-llama", device="meta", tokenizer=False)
    layers = D.transformer_layers(model)
    assert layers == list(model.model.layers)


def test_flatten_roundtrip_keeps_types():
    state = {"format": "x", "schedule": {"order": [2, 0, 1], "pos": 1, "gen": torch.arange(3, dtype=torch.uint8)},
             "masters": [torch.ones(2, 3)], "base": {"state": {0: {"step": torch.tensor(4.0)}},
                                                     "param_groups": [{"betas": (0.9, 0.99), "lr": 1e-3, "x": None}]}}
    layout, flat = C.flatten_state(state, "method")
    assert set(flat) == {"method.schedule.gen", "method.masters.0", "method.base.state.0.step"}
    import json

    back = C.unflatten_state(json.loads(json.dumps(layout)), flat)  # the layout survives JSON
    assert back["base"]["state"].keys() == {0}  # int keys stay int (torch optimizers index state by int)
    assert back["base"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["schedule"]["order"] == [2, 0, 1] and back["schedule"]["gen"] is flat["method.schedule.gen"]
    with pytest.raises(TypeError, match="value of type object"):
        C.flatten_state({"bad": object()})


def test_embeddings_and_head_are_their_own_groups_unless_tied():
    from experiments.models import load_model

    untied, _ = load_model("random:tiny-llama", dtype="fp32", tokenizer=False, device="meta")
    embeddings, head = D._embeddings_and_head(untied)
    assert embeddings is untied.model.embed_tokens and head is untied.lm_head
    tied, _ = load_model("random:tiny-gpt2", dtype="fp32", tokenizer=False, device="meta")  # GPT-2 ties wte/lm_head
    assert D._embeddings_and_head(tied) == (None, None)
