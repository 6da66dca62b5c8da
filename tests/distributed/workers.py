"""Functions run on every rank by tests/distributed (through common.run_on_ranks). Each returns what rank 0 needs."""
from __future__ import annotations

from pathlib import Path

import torch

from experiments import distributed as D
from experiments import distributed_checkpoint as C
from tests.distributed.common import full_weights, make_method, micro_batches, tiny_llama, train_steps

GRAD_ACCUM = 2  # micro-batches per rank per step: accumulation under FSDP2 is exercised too


def rank_steps(ctx, steps: int, first: int = 0) -> list[list[dict]]:
    """This rank's micro-batches for optimizer steps first..steps-1, dealt round-robin from the global stream."""
    per_step = GRAD_ACCUM * ctx.world_size
    mine = list(D.deal_round_robin(micro_batches(steps * per_step), ctx.rank, ctx.world_size))
    return [mine[s * GRAD_ACCUM:(s + 1) * GRAD_ACCUM] for s in range(first, steps)]


def sharded_setup(ctx, method_name: str, dtype: torch.dtype):
    method = make_method(method_name)
    model = method.prepare_model(tiny_llama(dtype))
    D.shard_model(model, ctx)
    method.build_optimizer(model)
    return model, method


def equivalence(ctx, cases: list[tuple[str, str]], steps: int) -> dict:
    """Train each (method, dtype) case sharded over the ranks; return the gathered weights, the global loss per step
    (mean over ranks) and this rank's memory split at the end."""
    results = {}
    for method_name, dtype_name in cases:
        model, method = sharded_setup(ctx, method_name, getattr(torch, dtype_name))
        losses = train_steps(model, method, rank_steps(ctx, steps))
        all_losses = D.gather_objects(losses, ctx)
        results[f"{method_name}/{dtype_name}"] = {
            "weights": full_weights(model), "losses": [sum(x) / len(x) for x in zip(*all_losses)],
            "split": method.memory_split(model), "describe": method.describe()}
    return results


def resume(ctx, out_dir: Path, method_name: str, total: int, save_after: int) -> dict:
    """Uninterrupted run vs save at `save_after` (sharded DCP checkpoint) + a freshly built model and method that
    load it and train on; returns both final weights and schedules."""
    model, method = sharded_setup(ctx, method_name, torch.bfloat16)
    train_steps(model, method, rank_steps(ctx, total))
    straight = {"weights": full_weights(model), "describe": method.describe()}

    model, method = sharded_setup(ctx, method_name, torch.bfloat16)
    train_steps(model, method, rank_steps(ctx, save_after))
    C.save_checkpoint(out_dir / "ckpt", model, method, ctx, position={"step": save_after},
                      rank_state={"rank": torch.tensor([ctx.rank])})
    del model, method
    model, method = sharded_setup(ctx, method_name, torch.bfloat16)
    position, rank_state = C.load_checkpoint(out_dir / "ckpt", model, method, ctx)
    train_steps(model, method, rank_steps(ctx, total, first=position["step"]))
    resumed = {"weights": full_weights(model), "describe": method.describe(), "position": position}
    return {"straight": straight, "resumed": resumed,
            "rank_states": D.gather_objects(int(rank_state["rank"]), ctx)}


def all_cases(out_dir: Path, cases: list[tuple[str, str]], steps: int, resume_args: tuple) -> dict:
    """Everything the tests need from one process group (starting processes costs more than the cases)."""
    ctx = D.init_distributed("cpu")
    try:
        result = {"equivalence": equivalence(ctx, cases, steps), "resume": resume(ctx, out_dir, *resume_args)}
    finally:
        D.shutdown()
    return result if ctx.is_main else {}
