"""Shared by the distributed tests: a tiny Llama, deterministic micro-batches, the training step the harness loop
runs, and a launcher that runs a function on N gloo processes the way torchrun would (same environment variables)."""
from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import torch

VOCAB = 256
SEQ = 16
WORLD = 2
STEPS = 4  # with K = 2: BAdam trains two blocks, crossing a switch
CASES = [("badam", "float32"), ("adam", "float32"), ("badam", "bfloat16"), ("lora", "float32")]
RESUME = ("badam", 5, 3)  # 5 steps straight vs 3, save, fresh model and method, load, 2 more


def tiny_llama(dtype: torch.dtype):
    """Random tiny Llama (2 layers, hidden 64), the same numbers in every process."""
    from transformers import AutoModelForCausalLM

    from experiments.model_configs import build_random_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(build_random_config("tiny-llama", vocab_size=VOCAB), dtype=dtype)


def micro_batches(count: int, seed: int = 7) -> list[dict]:
    """`count` micro-batches of one sequence each, labels = inputs; row lengths differ so padding is exercised."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(count):
        ids = torch.randint(0, VOCAB, (1, SEQ), generator=g)
        mask = torch.ones_like(ids)
        mask[0, SEQ - (i % 3):] = 0
        labels = ids.masked_fill(mask == 0, -100)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def make_method(name: str, lr: float = 1e-3):
    from baselines.registry import get_method_class

    cls = get_method_class(name)
    if name in ("badam", "bsgd"):  # K = 2 and 4+ steps: the run crosses block switches
        options = cls.Options(switch_block_every=2, switch_mode="random", seed=3)
    elif name == "lora":
        options = cls.Options(rank=4, dropout=0.0)  # dropout off: its masks would differ between layouts
    else:
        options = cls.Options()
    return cls(options, lr=lr, weight_decay=0.01)


def train_steps(model, method, steps: list[list[dict]], max_grad_norm: float = 1.0) -> list[float]:
    """The harness loop's order for each optimizer step: forward + backward(loss / grad_accum) per micro-batch, then
    clip_and_norm, step, zero_grad. Returns this process's mean loss per step."""
    losses = []
    for micro in steps:
        total = 0.0
        for batch in micro:
            loss = model(**batch).loss
            method.backward(loss / len(micro), last_micro_batch=batch is micro[-1])
            total += float(loss.detach()) / len(micro)
        method.clip_and_norm(max_grad_norm)
        method.step()
        method.zero_grad()
        losses.append(total)
    return losses


def full_weights(model) -> dict[str, torch.Tensor]:
    """fp32 copies of every weight, gathered from the shards when the model is sharded (collective)."""
    out = {}
    for name, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        out[name] = value.detach().float().clone()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn_path: str, args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    import importlib

    module_name, fn_name = fn_path.split(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    try:
        result = fn(Path(out_dir), *args)
    except BaseException:
        Path(out_dir, f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    torch.save(result, Path(out_dir) / f"result{rank}.pt")


def run_on_ranks(fn_path: str, world: int, out_dir: Path, *args) -> list:
    """Run `module:function(out_dir, *args)` on `world` spawned processes joined by gloo; returns each rank's
    return value (saved with torch.save, so tensors, numbers, lists and dicts)."""
    import torch.multiprocessing as mp

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        mp.start_processes(_entry, args=(world, _free_port(), str(out_dir), fn_path, args), nprocs=world,
                           start_method="spawn")
    except Exception as exc:
        errors = "\n".join(p.read_text() for p in sorted(out_dir.glob("error*.txt")))
        raise AssertionError(f"a rank failed:\n{errors or exc}") from exc
    return [torch.load(out_dir / f"result{r}.pt", weights_only=True) for r in range(world)]
