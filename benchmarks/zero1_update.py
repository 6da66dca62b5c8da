"""BAdam's update under data parallelism, replicated or sharded ZeRO-1 style: both measured side by side (issue 18).

    torchrun --nproc_per_node 2 benchmarks/zero1_update.py --out results/bench/zero1_update     # Llama 3-8B layer
    torchrun --nproc_per_node 2 benchmarks/zero1_update.py --out /tmp/zero1 --tiny               # CPU (gloo) check

What a data-parallel BAdam step does after the gradient all-reduce, for one active decoder layer (the block), either
  replicated  (what badam/data_parallel.py does) every rank holds the layer's fp32 masters and AdamW states and runs
              the whole update on the averaged gradient, so no weights travel afterwards; or
  sharded     every rank owns a contiguous 1/N of each tensor's elements, holds masters and states for those only
              (12 bytes x P_block / N instead of 12 x P_block), updates them, writes them into its low-precision
              weights and all-gathers every tensor's pieces in place (launched right after that tensor's update, so
              the transfer overlaps the next tensors' updates; awaited at the end).
Both run the library's own per-tensor update (badam/update.py step_tensor_by_tensor, smallest tensor first) with
torch.optim.AdamW, alternately in one process, from the same weights and with the same gradient every step (a seeded
random bf16 gradient, equal on every rank: the all-reduce before the update is the same in both, since ``p.grad`` must
hold the whole average for torch.optim's contract, so it is not part of this measurement). AdamW is elementwise, so
the two give the same weights bit for bit, which the run checks at the end (an optimizer that couples a tensor's
elements, e.g. Adafactor's factored moments or Muon's orthogonalisation, could not be sliced this way).

Timing: per repeat and variant a barrier, then the update between two clock readings after a device synchronisation
(CUDA events would not see the host's part); the repeat's cost is the slowest rank's (the next step waits for it).
--warmup repeats of each variant first, untimed. Each run writes <out>/zero1_<model>_n<N>.json (per-rank times, the
spread, state bytes per rank, the equality check, command, device, versions, date) and prints a markdown summary.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.process_env import apply_defaults  # noqa: E402  (needs the repo on sys.path)

apply_defaults()  # the harness's allocator setting before torch starts, as in benchmarks/multi_gpu.py (its record)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from badam.update import step_tensor_by_tensor  # noqa: E402
from experiments import distributed as dist_mod  # noqa: E402
from experiments.measure import synchronize  # noqa: E402
from experiments.model_configs import build_random_config  # noqa: E402
from multi_gpu import environment  # noqa: E402  (the benchmarks folder is the script's own)

VARIANTS = ("replicated", "sharded")
# torch 2.13 renamed all_gather_into_tensor (a deprecation warning there); 2.11, the GPU machines', has the old name
ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
STATE_BYTES = 12  # fp32 master + AdamW's two fp32 moments per trained element


def decoder_layer(model: str, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """One decoder layer's parameters (random, the same on every rank), smallest first as BlockOptimizer updates
    them."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.manual_seed(0)
    with torch.device(device):
        layer = LlamaDecoderLayer(build_random_config(model), layer_idx=0).to(dtype)
    return sorted((p.detach() for p in layer.parameters()), key=lambda p: p.numel())


def seeded_gradients(params: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator(device=params[0].device).manual_seed(seed)
    return [torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32).mul_(1e-3).to(p.dtype)
            for p in params]


class ReplicatedUpdate:
    """Masters and states for every element of the layer; the whole update on every rank."""

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float):
        self.params = params
        self.masters = [p.float() for p in params]
        self.optimizer = torch.optim.AdamW(self.masters, lr=lr, weight_decay=weight_decay)

    def step(self, grads: list[torch.Tensor]) -> None:
        def prepare(k: int) -> bool:
            self.masters[k].grad = grads[k].float()
            return True

        def finish(k: int) -> None:
            self.params[k].copy_(self.masters[k])
            self.masters[k].grad = None

        step_tensor_by_tensor(self.optimizer, [(0, m) for m in self.masters], prepare, finish)

    def state_bytes(self) -> int:
        return STATE_BYTES * sum(m.numel() for m in self.masters)


class ShardedUpdate:
    """Masters and states for this rank's 1/N of each tensor; the pieces all-gathered into every rank's weights."""

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float, rank: int, world: int):
        bad = [tuple(p.shape) for p in params if p.numel() % world]
        if bad:
            raise SystemExit(f"error: tensors of shape {bad[0]} do not split into {world} equal pieces; sharded "
                             "updates here need every tensor's size divisible by the number of GPUs")
        self.params, self.flat = params, [p.view(-1) for p in params]
        self.bounds = [(rank * f.numel() // world, (rank + 1) * f.numel() // world) for f in self.flat]
        self.masters = [f[lo:hi].float() for f, (lo, hi) in zip(self.flat, self.bounds)]
        self.optimizer = torch.optim.AdamW(self.masters, lr=lr, weight_decay=weight_decay)
        self.gather_wait_s = 0.0

    def step(self, grads: list[torch.Tensor]) -> None:
        pending = []

        def prepare(k: int) -> bool:
            lo, hi = self.bounds[k]
            self.masters[k].grad = grads[k].view(-1)[lo:hi].float()
            return True

        def finish(k: int) -> None:
            lo, hi = self.bounds[k]
            piece = self.flat[k][lo:hi]
            piece.copy_(self.masters[k])
            self.masters[k].grad = None
            # in place: this rank's piece is its own slot of the gathered tensor
            pending.append(ALL_GATHER(self.flat[k], piece, async_op=True))

        step_tensor_by_tensor(self.optimizer, [(0, m) for m in self.masters], prepare, finish)
        start = time.perf_counter()
        for work in pending:
            work.wait()
        self.gather_wait_s = time.perf_counter() - start

    def state_bytes(self) -> int:
        return STATE_BYTES * sum(m.numel() for m in self.masters)


def timed(update, grads, device) -> float:
    dist.barrier()
    synchronize(device)
    start = time.perf_counter()
    update.step(grads)
    synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run(args, ctx) -> dict:
    dtype = torch.bfloat16  # BAdam's setting: low-precision weights, fp32 masters (also on the CPU check)
    base = decoder_layer(args.model, dtype, ctx.device)
    grads = seeded_gradients(base)
    updates = {"replicated": ReplicatedUpdate([p.clone() for p in base], args.lr, args.weight_decay),
               "sharded": ShardedUpdate([p.clone() for p in base], args.lr, args.weight_decay, ctx.rank,
                                        ctx.world_size)}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    waits: list[float] = []
    for repeat in range(args.warmup + args.repeats):
        for name in VARIANTS:  # alternating, so drifts of the machine reach both alike
            ms = timed(updates[name], grads, ctx.device)
            if repeat >= args.warmup:
                times[name].append(ms)
                if name == "sharded":
                    waits.append(updates[name].gather_wait_s * 1000.0)
    same = all(torch.equal(a, b) for a, b in zip(updates["replicated"].params, updates["sharded"].params))
    # the share of elements whose stored weight moved at all: the equality above means little if nothing moved
    moved = sum(int((a != b).sum()) for a, b in zip(updates["replicated"].params, base)) / sum(p.numel() for p in base)
    mine = {"times_ms": times, "gather_wait_ms": waits, "same_weights": same, "weights_moved": moved,
            "state_bytes": {name: updates[name].state_bytes() for name in VARIANTS}}
    every = [None] * ctx.world_size
    dist.all_gather_object(every, mine)
    return combine(args, ctx, every, sum(p.numel() for p in updates["replicated"].params), dtype)


def combine(args, ctx, per_rank: list[dict], layer_params: int, dtype) -> dict:
    """The repeat's cost is the slowest rank's; medians and ranges over the repeats."""
    result = {"model": args.model, "gpus": ctx.world_size, "layer_params": layer_params,
              "weights_dtype": str(dtype).removeprefix("torch."), "repeats": args.repeats, "warmup": args.warmup,
              "lr": args.lr, "weight_decay": args.weight_decay,
              "same_weights_every_rank": all(r["same_weights"] for r in per_rank),
              "weights_moved": per_rank[0]["weights_moved"], "per_rank": per_rank}
    for name in VARIANTS:
        slowest = [max(r["times_ms"][name][i] for r in per_rank) for i in range(args.repeats)]
        result[name] = {"update_ms": spread(slowest), "state_bytes_per_rank": per_rank[0]["state_bytes"][name]}
    result["sharded"]["gather_wait_ms"] = spread([max(r["gather_wait_ms"][i] for r in per_rank)
                                                  for i in range(args.repeats)])
    result["sharded_over_replicated"] = (result["sharded"]["update_ms"]["median"]
                                         / result["replicated"]["update_ms"]["median"])
    result["environment"] = environment(ctx)  # the record of benchmarks/multi_gpu.py
    return result


def summary_markdown(r: dict) -> str:
    gib = 2 ** 30
    lines = [f"{r['model']}, one decoder layer ({r['layer_params']:,} parameters, {r['weights_dtype']} weights), "
             f"{r['gpus']} ranks, {r['repeats']} repeats after {r['warmup']} warm-up (slowest rank per repeat; "
             f"{r['environment']['device']}):", "",
             "| update | ms median [min-max] | fp32 masters + AdamW states per rank |", "|---|---|---|"]
    for name in VARIANTS:
        t = r[name]["update_ms"]
        lines.append(f"| {name} | {t['median']:.2f} [{t['min']:.2f}-{t['max']:.2f}] | "
                     f"{r[name]['state_bytes_per_rank'] / gib:.2f} GiB |")
    w = r["sharded"]["gather_wait_ms"]
    lines += ["", f"Sharded / replicated: {r['sharded_over_replicated']:.2f}; the sharded update's wait for its "
              f"all-gathers after the last tensor: {w['median']:.2f} ms [{w['min']:.2f}-{w['max']:.2f}]. Same "
              f"weights bit for bit on every rank: {'yes' if r['same_weights_every_rank'] else 'NO'} "
              f"({r['weights_moved']:.1%} of the stored weights moved over the run)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for zero1_<model>_n<N>.json")
    p.add_argument("--model", default="llama3-8b", help="random model whose decoder layer is the block")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW's lr (default 1e-5; --tiny: 1e-2, so that bf16 "
                   "weights move and the equality check can fail)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--tiny", action="store_true", help="CPU/gloo check: tiny-llama's layer, 3 repeats")
    args = p.parse_args(argv)
    if args.tiny:
        args.model, args.repeats, args.warmup, args.lr = "tiny-llama", min(args.repeats, 3), 1, 1e-2
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = dist_mod.init_distributed("cpu" if args.tiny else "auto", mode="ddp")
    try:
        result = run(args, ctx)
        if ctx.is_main:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"zero1_{args.model}_n{ctx.world_size}.json"
            path.write_text(json.dumps(result, indent=1))
            print(summary_markdown(result), end="")
            print(f"wrote {path} ({datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} UTC, "
                  f"{platform.node()})")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
