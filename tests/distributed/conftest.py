"""One process group for every FSDP2 test: starting 2 processes (each importing torch and transformers) costs more than
all the cases together, so the cases run in one spawn whose results every test reads. Under pytest-xdist the first
worker to get here runs it; the others wait on a file lock and read the saved results."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from filelock import FileLock

from tests.distributed.common import CASES, RESUME, STEPS, WORLD, run_on_ranks


@pytest.fixture(scope="session")
def fsdp2_run(tmp_path_factory, worker_id) -> dict:
    # the parent of a worker's base temp dir is shared by all workers of this session (and only by them)
    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    out = root / "fsdp2_ranks"
    with FileLock(str(root / "fsdp2_ranks.lock")):
        done = out / "results.pt"
        if not done.is_file():
            # The tiny Llama as a model folder: every rank loads the same weights (a random: source under fsdp2 is
            # built on the meta device and drawn shard by shard, so it would not start from the one-process numbers).
            from experiments.models import load_model

            model_dir = out / "tiny_llama"  # the stand-in tokenizer's 49,152 ids need the full tiny-llama vocabulary
            load_model("random:tiny-llama", dtype="fp32", tokenizer=False, seed=0)[0].save_pretrained(model_dir)
            result = run_on_ranks("tests.distributed.workers:all_cases", WORLD, out / "work", CASES, STEPS, RESUME,
                                  model_dir)[0]
            result.update(harness_dir=str(out / "work" / "harness"), model_dir=str(model_dir))
            torch.save(result, done)
    result = torch.load(done, weights_only=True)
    result["harness_dir"], result["model_dir"] = Path(result["harness_dir"]), Path(result["model_dir"])
    return result
