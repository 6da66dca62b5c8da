"""Host cost of BAdam's activation checkpointing on the CPU: one kind for every layer against each call's own kind.

    python benchmarks/checkpoint_host_cost.py --out results/bench/checkpoint_host_cost [--compile-layers inductor]

badam.hf.enable_block_checkpointing's policies (badam/checkpointing.py): "non-reentrant" checkpoints every layer with
torch.utils.checkpoint(use_reentrant=False), as transformers does; "block" runs the layers below BAdam's active block
without checkpointing (under no_grad) and the others non-reentrant; "block-reentrant" also makes the layers above the
active block reentrant (no autograd graph and no saved-tensor hook per saved tensor in their forward; one more matmul
each in backward, which this CPU proxy cannot weigh). All compute the same numbers (tests/badam/test_checkpointing.py);
what differs is the host's work, which decides a launch-bound step (Llama 3-8B at batch 2 x 728 on one H100, issue
18). As in fsdp2_host_cost.py, a Llama of many layers and tiny width (default 32 x 32, sequence 16, fp32, one thread)
makes every operation cost its host time alone.

Setting: three copies of one seeded model, BAdam K = 1 in ascending order (every step a block switch, the active layer
walking through the model), AdamW lr 1e-3, the same batch every step; --compile-layers compiles every decoder layer
(experiments/layer_compile.py) in all. After --warmup untimed steps of each, in each of --rounds rounds the three
policies take --steps steps in turn, one each (this VM's speed drifts within seconds). Reported per policy: forward and
whole-step medians per round, and over rounds the median and range of policy / non-reentrant (forward and step), plus
the last step's loss of each (equal by construction: same weights, same data, same arithmetic).
Writes <out>/checkpoint_host_cost_l<L>[_<backend>].json.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from fsdp2_host_cost import (TrainingPath, build_model, checked_args, cpu_environment, spread,  # noqa: E402
                             tiny_model_parser)

POLICIES = ("non-reentrant", "block", "block-reentrant")


def build_path(args, policy: str, batch) -> TrainingPath:
    from badam.hf import enable_block_checkpointing
    from experiments.layer_compile import compile_method_layers

    model = build_model(args.layers, args.width)
    enable_block_checkpointing(model, policy=policy)
    path = TrainingPath(model, batch)
    if args.compile_layers:
        compile_method_layers(path.model, args.compile_layers, path.method)
    return path


def checkpoint_function(path: TrainingPath) -> str:
    """What the decoder layers checkpoint with, e.g. "checkpoint(use_reentrant=False)" (recorded per policy, so a
    result shows the policy was in force)."""
    function = path.model.model.layers[0]._gradient_checkpointing_func
    keywords = ", ".join(f"{k}={v}" for k, v in getattr(function, "keywords", {}).items())
    return f"{getattr(function, 'func', function).__name__}({keywords})"


def timed(path: TrainingPath) -> tuple[float, float, float]:
    """One step: forward ms, whole-step ms, loss."""
    start = time.perf_counter()
    loss = path.forward()
    forward = time.perf_counter()
    path.update(loss)
    end = time.perf_counter()
    return (forward - start) * 1000.0, (end - start) * 1000.0, loss.item()


def run(args) -> dict:
    from experiments.results import source_commit

    batch = torch.randint(0, 256, (1, args.seq_len), generator=torch.Generator().manual_seed(1))
    paths = {policy: build_path(args, policy, batch) for policy in POLICIES}
    for path in paths.values():
        for _ in range(args.warmup):
            path.step()
    rounds, last_loss = [], {}
    for _ in range(args.rounds):
        times: dict[str, list] = {policy: [] for policy in POLICIES}
        for _ in range(args.steps):
            for policy, path in paths.items():
                forward, step, last_loss[policy] = timed(path)
                times[policy].append((forward, step))
        rounds.append({policy: {"forward_ms": statistics.median(t[0] for t in rows),
                                "step_ms": statistics.median(t[1] for t in rows)} for policy, rows in times.items()})
    ratio = {policy: {part: spread([r[policy][part] / r["non-reentrant"][part] for r in rounds])
                      for part in ("forward_ms", "step_ms")} for policy in POLICIES[1:]}
    return {"layers": args.layers, "width": args.width, "seq_len": args.seq_len, "steps_per_round": args.steps,
            "warmup": args.warmup, "threads": torch.get_num_threads(), "compile_layers": args.compile_layers,
            "rounds": rounds, "over_non_reentrant": ratio, "last_loss": last_loss,
            "checkpoint_function": {policy: checkpoint_function(path) for policy, path in paths.items()},
            "per_policy": {policy: {part: spread([r[policy][part] for r in rounds])
                                    for part in ("forward_ms", "step_ms")} for policy in POLICIES},
            "environment": {**cpu_environment(), "source": source_commit()}}


def parse_args(argv: list[str] | None = None):
    from experiments.layer_compile import BACKENDS

    p = tiny_model_parser(__doc__.split("\n\n")[0], steps=20, warmup=4, unit="policy (compiled: >= 2 compile)")
    p.add_argument("--compile-layers", choices=BACKENDS, default=None)
    return checked_args(p, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.compile_layers}" if args.compile_layers else ""
    path = out / f"checkpoint_host_cost_l{args.layers}{suffix}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"{args.layers} layers of width {args.width}, layers {args.compile_layers or 'eager'}, {args.rounds} rounds "
          f"of {args.steps} steps per policy; last losses {result['last_loss']} -> {path}")
    for policy in POLICIES:
        step = result["per_policy"][policy]["step_ms"]["median"]
        ratios = result["over_non_reentrant"].get(policy)
        against = "" if ratios is None else "; against non-reentrant: " + ", ".join(
            f"{part[:-3]} {r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}]" for part, r in ratios.items())
        print(f"  {policy}: step {step:.1f} ms{against}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
