"""FSDP2's own host cost on one process, measured on the CPU: the plain path against FSDP2 (issue 18's one-GPU target).

    python benchmarks/fsdp2_host_cost.py --out results/bench/fsdp2_host_cost [--layers 32] [--rounds 5] [--profile]
        [--layers-per-unit K] [--frozen-shards]

Why on the CPU: on one H100 a Llama 3-8B BAdam step under FSDP2 makes 0.69-0.85 of the plain path's tokens/s, and the
FSDP2 step is host-bound (its issuing thread's time equals the GPU's; benchmarks/README.md, "FSDP2 on one GPU"). A
Llama of many layers and tiny width (default 32 layers of width 32, sequence 16) makes every operation cost its host
time alone, so FSDP2's per-layer hooks (unshard, the single-rank all-gather's copies, reshard, backward hooks) show as
they do on the GPU host, and a change to them can be measured here without a GPU. What it does not show: the GPU
kernels' own time, the real all-gather, memory.

Setting: one gloo process (WORLD_SIZE 1), fp32 weights (bf16 arithmetic is emulated on most CPUs), checkpointing per
layer as the harness sets it, BAdam with K = 1 in ascending order (every step a block switch, backward reaching from
the active layer up, as in the GPU runs), AdamW lr 1e-3, the same random batch every step. Both models come from one
seed (the FSDP2 one sharded by experiments/distributed.py shard_model, FSDP2's default layout). After --warmup untimed
steps of each, in each of --rounds rounds the two paths take --steps steps in turn, one each (this VM's CPU speed
drifts up to 2x within seconds; taking turns step by step lets a slow stretch reach both). Reported: per round each
path's median step, and over rounds the median and range of each path and of their ratio (plain / FSDP2 = FSDP2's
share of the plain path's throughput, the quantity of the one-GPU target). --profile adds cProfile's 25 costliest
functions under FSDP2 (cumulative; names containing "fsdp" or "gather") from --steps more FSDP2 steps.
--layers-per-unit K > 1 shards K consecutive layers as one FSDP2 unit (``fully_shard`` of the K modules together, then
the root; not a harness layout, and without experiments/fsdp_gather.py's per-layer policy): it separates what FSDP2
costs per unit (hooks, one gather per unit) from what it costs per weight (each unshard copies and swaps every weight
of the unit), at the price of K layers gathered at once. --frozen-shards adds a third path to the turns: BAdam's own
sharding of the frozen layers (BlockOptimizer.shard_frozen_blocks, badam/frozen_shards.py) on one rank, where its
per-layer hooks install views of each layer's buffer (``frozen_shards_ms``, ``plain_over_frozen_shards``). Writes
<out>/fsdp2_host_cost_l<L>.json (K > 1: ..._l<L>_u<K>.json).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from experiments import distributed as dist_mod  # noqa: E402


def build_model(layers: int, width: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from badam.hf import enable_block_checkpointing

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=width, intermediate_size=2 * width,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64))
    enable_block_checkpointing(model)
    model.config.use_cache = False
    return model


def build_method():
    from baselines.registry import get_method_class

    cls = get_method_class("badam")
    options = cls.Options(switch_block_every=1, switch_mode="ascending", start_block=0, seed=0)
    return cls(options, lr=1e-3, weight_decay=0.0)


class TrainingPath:
    """One training path: a model (prepared by its method, then `shard`ed when given), its BAdam optimizer and the
    fixed batch."""

    def __init__(self, model, batch, shard=None):
        self.method = build_method()
        self.model = self.method.prepare_model(model)
        if shard is not None:
            self.model = shard(self.model)
        self.method.build_optimizer(self.model)
        self.model.train()
        self.batch = batch

    def forward(self) -> torch.Tensor:
        return self.model(input_ids=self.batch, labels=self.batch).loss

    def update(self, loss: torch.Tensor) -> None:
        """The rest of the step: backward, the optimizer step, gradients cleared."""
        loss.backward()
        self.method.optimizer.step()
        self.method.optimizer.zero_grad()

    def step(self) -> None:
        self.update(self.forward())

    def timed_step(self) -> float:
        start = time.perf_counter()
        self.step()
        return (time.perf_counter() - start) * 1000.0


def cpu_environment() -> dict:
    """The command, the software and the host of a CPU proxy's run."""
    return {"command": " ".join([sys.executable, *sys.argv]), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def profile_fsdp2(path: TrainingPath, steps: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        path.step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats("fsdp|gather", 25)
    return text.getvalue()


def sharding(ctx, layers_per_unit: int):
    """How the FSDP2 path shards its model: the harness's layout (shard_model) for one layer per unit, else K
    consecutive layers per FSDP2 unit and the root."""
    if layers_per_unit == 1:
        return lambda model: dist_mod.shard_model(model, ctx)

    def shard(model):
        from torch.distributed.fsdp import fully_shard

        layers = list(dist_mod.transformer_layers(model))
        for first in range(0, len(layers), layers_per_unit):
            fully_shard(layers[first:first + layers_per_unit], mesh=ctx.mesh)
        fully_shard(model, mesh=ctx.mesh)
        return model
    return shard


def run(args, ctx) -> dict:
    batch = torch.randint(0, 256, (1, args.seq_len), generator=torch.Generator().manual_seed(1))
    plain = TrainingPath(build_model(args.layers, args.width), batch)
    sharded = TrainingPath(build_model(args.layers, args.width), batch, sharding(ctx, args.layers_per_unit))
    paths = {"plain": plain, "fsdp2": sharded}
    if args.frozen_shards:
        paths["frozen_shards"] = TrainingPath(build_model(args.layers, args.width), batch)
        paths["frozen_shards"].method.optimizer.shard_frozen_blocks(paths["frozen_shards"].model)
    for path in paths.values():
        for _ in range(args.warmup):
            path.step()
    rounds = []
    for _ in range(args.rounds):  # the paths step by step in turn: the host's slow stretches reach all
        times = [[path.timed_step() for path in paths.values()] for _ in range(args.steps)]
        rounds.append({f"{name}_ms": statistics.median(t[i] for t in times) for i, name in enumerate(paths)})
    with torch.no_grad():  # the same steps on the same batch: the same model (a check that the sharding is exact)
        losses = {name: float(path.forward()) for name, path in paths.items()}
    result = {"layers": args.layers, "layers_per_unit": args.layers_per_unit, "width": args.width,
              "seq_len": args.seq_len, "steps_per_round": args.steps,
              "warmup": args.warmup, "threads": torch.get_num_threads(), "rounds": rounds,
              "losses_after": losses, "environment": cpu_environment()}
    for name in paths:  # each path's step, and the plain path's against each other's
        result[f"{name}_ms"] = spread([r[f"{name}_ms"] for r in rounds])
        if name != "plain":
            result[f"plain_over_{name}"] = spread([r["plain_ms"] / r[f"{name}_ms"] for r in rounds])
    if args.profile:
        result["fsdp2_profile"] = profile_fsdp2(sharded, args.steps)
    return result


def tiny_model_parser(description: str, steps: int, warmup: int, unit: str) -> argparse.ArgumentParser:
    """The arguments of this CPU proxy (also checkpoint_host_cost.py's): the tiny model, the rounds, the threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--width", type=int, default=32, help="hidden size (multiple of 4 heads x 2)")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=steps, help=f"timed steps per {unit} and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed steps per {unit} first")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: host time without thread noise)")
    return p


def checked_args(p: argparse.ArgumentParser, argv: list[str] | None):
    """tiny_model_parser's arguments parsed; one error line for a value out of range."""
    args = p.parse_args(argv)
    if min(args.layers, args.steps, args.rounds, args.seq_len) < 1 or args.warmup < 0 or args.width % 8:
        p.error("--layers, --steps, --rounds and --seq-len must be >= 1, --warmup >= 0, --width a multiple of 8")
    return args


def parse_args(argv: list[str] | None = None):
    p = tiny_model_parser(__doc__.split("\n\n")[0], steps=10, warmup=3, unit="path")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--layers-per-unit", type=int, default=1, metavar="K",
                   help="consecutive layers per FSDP2 unit (1: the harness's layout)")
    p.add_argument("--frozen-shards", action="store_true",
                   help="a third path: BlockOptimizer.shard_frozen_blocks on one rank (badam/frozen_shards.py)")
    args = checked_args(p, argv)
    if args.layers_per_unit < 1:
        p.error(f"--layers-per-unit must be >= 1; got {args.layers_per_unit}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("MASTER_PORT", str(29400 + os.getpid() % 1000))
    ctx = dist_mod.init_distributed("cpu", mode="fsdp2")
    try:
        result = run(args, ctx)
    finally:
        torch.distributed.destroy_process_group()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unit = f"_u{args.layers_per_unit}" if args.layers_per_unit > 1 else ""
    path = out / f"fsdp2_host_cost_l{args.layers}{unit}{'_frozen' if args.frozen_shards else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    r = result["plain_over_fsdp2"]
    print(f"{args.layers} layers of width {args.width} ({args.layers_per_unit} per FSDP2 unit), {args.rounds} rounds "
          f"of {args.steps} steps: plain "
          f"{result['plain_ms']['median']:.1f} ms, FSDP2 {result['fsdp2_ms']['median']:.1f} ms per step; plain / FSDP2 "
          f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}] -> {path}")
    if args.frozen_shards:
        r = result["plain_over_frozen_shards"]
        print(f"frozen shards {result['frozen_shards_ms']['median']:.1f} ms per step; plain / frozen shards "
              f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]")
    if args.profile:
        print(result["fsdp2_profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
