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


def meta_init(ctx) -> dict:
    """A random model built on the meta device, sharded, then materialised shard by shard."""
    model, _ = D.load_sharded_random_model("random:tiny-llama", ctx, dtype="fp32", tokenizer=False, seed=5)
    weights = full_weights(model)
    lora_model, _ = D.load_sharded_random_model("random:tiny-llama", ctx, dtype="fp32", tokenizer=False, seed=5,
                                                prepare=make_method("lora").prepare_model)
    lora = full_weights(lora_model)
    return {"inv_freq": model.model.rotary_emb.inv_freq.clone(), "q_std": float(weights[
        "model.layers.0.self_attn.q_proj.weight"].std()), "norm": weights["model.layers.0.input_layernorm.weight"],
        "lora_B_max": max(float(v.abs().max()) for k, v in lora.items() if "lora_B" in k),
        "lora_A_std": float(next(v for k, v in lora.items() if "lora_A" in k).std())}


def harness_args(model_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """experiments.run arguments: the tiny fp32 Llama in `model_dir`, 12 Alpaca records, batch 1, BAdam K = 2."""
    return ["--config", "small/smollm2_alpaca.yaml", f"model.source={model_dir}", "model.tokenizer=smollm2",
            "model.dtype=fp32", "method.name=badam", "method.switch_block_every=2", "train.max_steps=4",
            "train.batch_size=1", "data.max_samples=12", "data.eval_samples=2", "data.max_length=48",
            f"output.dir={out_dir}", *extra, "--no-progress"]


def harness(ctx, out_dir: Path, model_dir: Path) -> dict:
    """The real entry point, as `torchrun -m experiments.run ... train.distributed=fsdp2` runs it: an uninterrupted
    run, a run stopped after 2 steps with a sharded checkpoint, and that run resumed to the end (through main())."""
    from experiments import run as run_cli
    from experiments.config import load_config

    def args(name: str, *extra: str) -> list[str]:
        return harness_args(model_dir, out_dir / name, "train.distributed=fsdp2", "train.device=cpu",
                            "train.grad_accum=1", *extra)

    def run(name: str, *extra: str):
        a = args(name, *extra)
        return run_cli.run_experiment(load_config(a[1], [x for x in a[2:] if "=" in x]), progress=False,
                                      dist_ctx=ctx)

    # layers gathered ahead and kept gathered for backward: the same numbers
    straight, _ = run("straight", "output.save_model=true", "train.fsdp_forward_prefetch=1",
                      "train.fsdp_keep_gathered_layers=-1")
    half, half_dir = run("half", "train.stop_after_steps=2", "train.save_every=2")
    # the resume continues in the checkpoint's own directory, with the run's settings (save_every included)
    code = run_cli.main(args("half", f"train.resume_from={half_dir}", "train.save_every=2", "output.save_model=true"))
    return {"statuses": [straight["status"], half["status"]], "main_exit": code}


def all_cases(out_dir: Path, cases: list[tuple[str, str]], steps: int, resume_args: tuple,
              model_dir: Path) -> dict:
    """Everything the tests need from one process group (starting processes costs more than the cases)."""
    ctx = D.init_distributed("cpu")
    try:
        from tests.distributed.ddp_workers import all_ddp_cases

        result = {"equivalence": equivalence(ctx, cases, steps), "resume": resume(ctx, out_dir, *resume_args),
                  "meta_init": meta_init(ctx), "ddp": all_ddp_cases(ctx, out_dir / "ddp", model_dir),
                  "keep_gathered": keep_gathered(ctx), "compiled_layers": compiled_layers(ctx)}
        result["harness"] = harness(ctx, out_dir / "harness", model_dir)  # last: main() ends the process group
    finally:
        D.shutdown()
    return result if ctx.is_main else {}


def keep_gathered(ctx, steps: int = 4) -> dict:
    """BAdam (ascending, K = 2: layer 0 then layer 1 active) sharded with FSDP2's default and with every layer that
    backward reaches kept gathered (experiments/fsdp_gather.py): losses, weights and all-gathers per step."""
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as group_module

    gathers = {"count": 0}
    original = group_module.foreach_all_gather

    def counting(*args, **kwargs):
        gathers["count"] += 1
        return original(*args, **kwargs)

    out = {}
    group_module.foreach_all_gather = counting
    try:
        for budget in (0, -1, 1):
            method = make_method("badam")
            method.options.switch_mode, method.options.start_block = "ascending", 0
            model = method.prepare_model(tiny_llama(torch.float32))
            D.shard_model(model, ctx, keep_gathered_layers=budget)
            method.build_optimizer(model)
            per_step, losses = [], []
            for micro in rank_steps(ctx, steps):
                gathers["count"] = 0
                losses += train_steps(model, method, [micro])
                per_step.append(gathers["count"])
            out[budget] = {"gathers": per_step, "losses": losses, "weights": full_weights(model)}
    finally:
        group_module.foreach_all_gather = original
    return out


def compiled_layers(ctx, steps: int = 4) -> dict:
    """FSDP2's default layout, checkpointing on, BAdam (ascending, K = 2: one block switch), micro-batches without
    attention masks (one graph per requires_grad state; masks would double them): eager, then every decoder layer
    compiled after sharding (experiments/layer_compile.py, backend aot_eager; FSDP2's hooks stay outside the compiled
    forward). Losses, weights and the compiled run's graph counts."""
    from badam.hf import enable_block_checkpointing
    from experiments.layer_compile import compile_decoder_layers

    torch._dynamo.reset()  # graphs of earlier cases (the ddp benchmark's bf16 layers) are not this model's
    torch._dynamo.utils.counters.clear()
    out = {}
    for backend in (None, "aot_eager"):
        method = make_method("badam")
        method.options.switch_mode, method.options.start_block = "ascending", 0
        model = method.prepare_model(tiny_llama(torch.float32))
        enable_block_checkpointing(model)  # as load_model(gradient_checkpointing=True) does
        D.shard_model(model, ctx)
        compiled = compile_decoder_layers(model, backend) if backend else None
        method.build_optimizer(model)
        losses = []
        for micro in rank_steps(ctx, steps):
            losses += train_steps(model, method, [[{k: v for k, v in batch.items() if k != "attention_mask"}
                                                   for batch in micro]])
        out[backend or "eager"] = {"losses": losses, "weights": full_weights(model),
                                   "stats": compiled.stats() if compiled else None}
    return out
