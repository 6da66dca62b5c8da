"""badam/frozen_shards.py on 2 GPUs with NCCL (skipped without them): the asynchronous all-gathers issued ahead run on
NCCL's stream while the layers compute, issued from a side stream or from the compute stream, which gloo
(tests/distributed/test_ddp.py) cannot show. Sharded training must equal the replicated data-parallel run bit for
bit, with compiled layers and block-reentrant checkpointing, whatever the prefetch depth and stream."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.common import run_on_ranks

GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
STEPS = 6
# shard_frozen_blocks options: the default (one unit ahead, from the compute stream), two ahead, from a side stream
SHARDINGS = ({}, {"prefetch": 2}, {"gather_stream": True}, {"prefetch": 2, "gather_stream": True})


def sharded_against_replicated(out_dir: Path, device_type: str = "cuda") -> dict:
    """On each rank: the same tiny bf16 Llama trained replicated, then with the frozen blocks sharded (K = 1, two
    micro-batches a step, the first inside no_sync) in each of SHARDINGS; losses, the whole weights (rank 0) and the
    prefetch counts."""
    import contextlib
    import os
    import warnings

    import torch.distributed as dist

    from badam import BlockOptimizer
    from badam.hf import enable_block_checkpointing
    from experiments.layer_compile import compile_decoder_layers
    from tests.badam.tiny import lm_batch, tiny_llama

    rank = int(os.environ["RANK"])
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    runs = []
    try:
        for shard in (None, *SHARDINGS):
            torch._dynamo.reset()
            model = tiny_llama(torch.bfloat16, layers=6).to(device).train()
            model.config._attn_implementation = "eager"  # deterministic kernels: runs comparable bit for bit
            enable_block_checkpointing(model, policy="block-reentrant")
            compile_decoder_layers(model, "aot_eager", {})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimizer = BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3),
                                           list(model.named_parameters()), switch_block_every=1,
                                           switch_mode="random", seed=4, verbose=0, process_group=dist.group.WORLD)
            shards = optimizer.shard_frozen_blocks(model, **shard) if shard is not None else None
            losses = []
            for step in range(STEPS):
                for k in range(2):
                    batch = {key: value.to(device) for key, value in lm_batch(100 * step + 10 * rank + k).items()}
                    with optimizer.no_sync() if k == 0 else contextlib.nullcontext():
                        loss = model(**batch).loss
                        (loss / 2).backward()
                    losses.append(float(loss))
                optimizer.step()
                optimizer.zero_grad()
            state = (shards.gathered_state_dict(model) if shards is not None
                     else {k: v.cpu() for k, v in model.state_dict().items()})
            runs.append({"losses": losses, "state": state,
                         "prefetched": shards.prefetched if shards is not None else 0})
    finally:
        dist.destroy_process_group()
    replicated, *sharded = runs
    result = {"losses_equal": [run["losses"] == replicated["losses"] for run in sharded],
              "prefetched": [run["prefetched"] for run in sharded]}
    if rank == 0:
        result["equal"] = [all(torch.equal(run["state"][k], v) for k, v in replicated["state"].items())
                           for run in sharded]
    return result


@GPUS
def test_on_two_gpus_sharded_training_equals_replicated(tmp_path):
    got = run_on_ranks("tests.distributed.test_frozen_shards_gpus:sharded_against_replicated", 2, tmp_path)
    for rank in got:
        assert all(rank["losses_equal"]), rank["losses_equal"]
        assert all(n > 0 for n in rank["prefetched"])  # all-gathers issued ahead were waited for and used
    assert all(got[0]["equal"]), got[0]["equal"]
