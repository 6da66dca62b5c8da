"""GPU benchmark: our badam.BlockOptimizer against the official badam 1.4, one process per optimizer.

Setup (identical for both): random-init Llama-3-8B config in bf16 built directly on the GPU, batch 2 x 728 random
token ids (throughput and memory do not depend on the token values), labels = inputs, non-reentrant activation
checkpointing without input-require-grads hooks, AdamW(lr=1e-6, weight_decay=0) over all parameters as the base
optimizer, one block per layer (32 blocks).

Two phases per process:
  * k1_epoch    K=1, ascending: 2 warm-up steps, then one full block-epoch (every block visited once) is measured.
  * k100_steady K=100, ascending from the middle layer: 3 warm-up steps, then 30 measured steps of that one block
                (no switch happens: a steady state inside one block visit).
Per step, CUDA events time forward, backward and update (optimizer.step + zero_grad, including any block switch).
Block switches are timed separately (synchronize around our `_activate` / 1.4's `switch_trainable_params`).

Memory (torch.cuda allocated bytes): weights; `activations` = peak of a forward/backward with no optimizer and the
lowest layer trainable (its gradients dropped at once) minus weights; `peak` per phase; `update_peak` = highest
allocation inside optimizer.step (no activations are alive then) minus weights; `held_after_backward` = bytes the
optimizer holds when backward ends (fp32 masters, states, and gradients: fp32 ones for ours, the model's bf16 ones
for 1.4). Optimizer memory is reported two ways:
  * optimizer_bytes       = max(update_peak, held_after_backward): what the optimizer needs at its worst moment;
  * peak_minus_activations = peak - weights - activations (the whole-run formula; when the overall peak falls in
                            early backward, where both hold the same states next to the logits, it hides differences).

Usage (GPU):  python benchmarks/badam_vs_official.py --out results/bench/badam_vs_official --official-path DIR
Usage (CPU smoke test): python benchmarks/badam_vs_official.py --tiny --out /tmp/bench
DIR holds the unpacked badam 1.4 wheel (a folder containing badam/block_optim.py).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a bare checkout (nothing installed on the GPU machine)
    sys.path.insert(0, str(REPO))

OPTIMIZERS = ("ours", "official")
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, rope_theta=500000.0, max_position_embeddings=128, rms_norm_eps=1e-5,
            tie_word_embeddings=False)
TARGETS = {"step_time_ratio": 0.90, "optimizer_memory_ratio": 0.90, "switch_ms": 20.0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for the JSON results, logs and the Markdown table")
    parser.add_argument("--official-path", default=None,
                        help="folder with the unpacked badam 1.4 (default: $BADAM_OFFICIAL_PATH or .venv/reference)")
    parser.add_argument("--tiny", action="store_true", help="tiny Llama on CPU, to check the script itself")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated subset of ours,official")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=728)
    parser.add_argument("--steady-steps", type=int, default=None,
                        help="measured K=100 steps (default 30; 5 with --tiny)")
    parser.add_argument("--profile-dir", default=None,
                        help="also write a torch.profiler table of the last 3 steady-state steps per optimizer here")
    parser.add_argument("--worker", choices=OPTIMIZERS, help=argparse.SUPPRESS)  # internal: run one optimizer here
    parser.add_argument("--worker-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    unknown = [o for o in chosen if o not in OPTIMIZERS]
    if unknown or not chosen:
        parser.error(f"--optimizers: unknown {unknown or 'empty list'}; valid choices are {', '.join(OPTIMIZERS)}")
    args.optimizers = chosen
    if args.tiny and args.seq_len == 728:
        args.seq_len = 32
    if args.steady_steps is None:
        args.steady_steps = 5 if args.tiny else 30
    return args


# ----------------------------------------------------------------------------------------------- worker side ----
class Clock:
    """Elapsed milliseconds between marks: CUDA events on GPU (read after one synchronize per step), else
    perf_counter."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            out = [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        else:
            out = [(b - a) * 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        self.marks = []
        return out


def build_model(torch, tiny, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(TINY if tiny else LLAMA3_8B), use_cache=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:  # allocate and initialise directly on the target device, in bf16
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    from badam.hf import enable_block_checkpointing

    enable_block_checkpointing(model)
    model.train()
    return model


def batch(torch, step, args, vocab, device):
    g = torch.Generator().manual_seed(10_000 + step)
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}


def memory_now(torch, device):
    return torch.cuda.memory_allocated() if device.type == "cuda" else None


def reset_peak(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak(torch, device):
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def activation_baseline(torch, model, args, device):
    """Peak above the weights of forward+backward with layer 0 trainable (deepest backward) and no optimizer."""
    params = list(model.model.layers[0].parameters())
    hooks = []
    for p in params:
        p.requires_grad_(True)
        hooks.append(p.register_post_accumulate_grad_hook(lambda t: setattr(t, "grad", None)))
    weights = memory_now(torch, device)
    reset_peak(torch, device)
    for step in range(2):
        model(**batch(torch, step, args, model.config.vocab_size, device)).loss.backward()
    result = peak(torch, device) - weights if device.type == "cuda" else None
    for h in hooks:
        h.remove()
    for p in params:
        p.requires_grad_(False)
    return result


def storage_bytes(torch, tensors):
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def held_bytes(torch, name, opt, model):
    """Bytes the optimizer holds now, counted from its tensors (plus the model's gradients it relies on)."""
    states = [v for s in (opt.base_optimizer.state.values()) for v in s.values()]
    model_grads = [p.grad for p in model.parameters() if p.grad is not None]
    if name == "ours":
        masters = opt.masters
    else:
        masters = list(getattr(opt, "param_idx2hp", {}).values())
    master_grads = [m.grad for m in masters if m.grad is not None]
    return storage_bytes(torch, [*masters, *master_grads, *states, *model_grads])


def make_optimizer(torch, name, model, K, start_block, official_path):
    base = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    named = list(model.named_parameters())
    if name == "ours":
        from badam import BlockOptimizer

        return BlockOptimizer(base, named, switch_block_every=K, switch_mode="ascending", start_block=start_block,
                              verbose=0)
    from badam.reference import load_official

    official = load_official(official_path)
    return official.BlockOptimizer(base, named, switch_block_every=K, switch_mode="ascending",
                                   start_block=start_block, verbose=0)


def time_switches(torch, name, opt, device, sink):
    """Wrap the optimizer's block-switch routine with a synchronized timer appending milliseconds to `sink`."""
    attr = "_activate" if name == "ours" else "switch_trainable_params"
    inner = getattr(opt, attr)

    def timed(*a, **kw):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = inner(*a, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sink.append((time.perf_counter() - t0) * 1000.0)
        return result

    setattr(opt, attr, timed)


def run_phase(torch, name, model, args, device, *, K, start_block, warmup, measured, first_step):
    from tqdm import tqdm

    weights = memory_now(torch, device)  # before the optimizer creates its first masters
    opt = make_optimizer(torch, name, model, K, start_block, args.official_path)
    switches: list[float] = []
    time_switches(torch, name, opt, device, switches)
    clock = Clock(torch, device)
    step_ms, step_peaks, update_peaks, held_backward, held_after_step, losses = [], [], [], [], [], []
    reset_peak(torch, device)
    profiler = None
    for i in tqdm(range(warmup + measured), desc=f"{name} K={K}", file=sys.stdout, mininterval=5):
        if args.profile_dir and K > 1 and i == warmup + measured - 3:  # profile the last 3 steady steps
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []))
            profiler.__enter__()
        data = batch(torch, first_step + i, args, model.config.vocab_size, device)
        clock.mark()
        loss = model(**data).loss
        clock.mark()
        loss.backward()
        clock.mark()
        loss_value = loss.detach()
        del loss  # the graph is gone after backward; drop the handle before measuring the update
        held_backward.append(held_bytes(torch, name, opt, model))
        forward_backward_peak = peak(torch, device)
        reset_peak(torch, device)  # from here on the peak belongs to the update alone (no activations alive)
        clock.mark()  # the bookkeeping above is excluded from the timings
        opt.step()
        opt.zero_grad()
        clock.mark()
        if device.type == "cuda":
            update_peak = peak(torch, device)
            reset_peak(torch, device)
            update_peaks.append(update_peak - weights)
            step_peaks.append(max(forward_backward_peak, update_peak))
        held_after_step.append(held_bytes(torch, name, opt, model))
        f, b, _bookkeeping, u = clock.intervals_ms()
        losses.append(float(loss_value))
        if i >= warmup:
            step_ms.append({"forward": f, "backward": b, "update": u, "step": f + b + u})
    if profiler is not None:
        profiler.__exit__(None, None, None)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort, row_limit=25)
        Path(args.profile_dir, f"profile_{name}_K{K}.txt").write_text(table)
    switch_measured = switches  # the constructor's initial activation happened before the timer was attached
    result = {
        "K": K, "start_block": start_block, "warmup_steps": warmup, "measured_steps": measured,
        "median_ms": {k: statistics.median(r[k] for r in step_ms) for k in ("forward", "backward", "update", "step")},
        "switch_ms": {"median": statistics.median(switch_measured) if switch_measured else None,
                      "max": max(switch_measured) if switch_measured else None, "count": len(switch_measured)},
        "losses": losses,
        "memory": {
            "weights_bytes": weights,
            "peak_allocated_bytes": max(step_peaks) if step_peaks else None,
            "update_peak_above_weights_bytes": max(update_peaks) if update_peaks else None,
            "held_after_backward_bytes": max(held_backward),
            "held_after_step_bytes": held_after_step[-1],
        },
    }
    if name == "ours":
        opt.release()  # unhook the model's parameters before the next phase builds a new optimizer
    del opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for p in model.parameters():  # the next phase starts from a clean slate
        p.grad = None
        p.requires_grad_(False)
    return result


def worker(args) -> None:
    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    t0 = time.perf_counter()
    model = build_model(torch, args.tiny, device)
    for p in model.parameters():
        p.requires_grad_(False)
    setup_s = time.perf_counter() - t0
    activations = activation_baseline(torch, model, args, device)
    layers = model.config.num_hidden_layers
    phases = {
        "k1_epoch": run_phase(torch, args.worker, model, args, device, K=1, start_block=0, warmup=2,
                              measured=layers, first_step=0),
        "k100_steady": run_phase(torch, args.worker, model, args, device, K=100, start_block=layers // 2,
                                 warmup=3, measured=args.steady_steps, first_step=1000),
    }
    for phase in phases.values():
        mem = phase["memory"]
        mem["activations_bytes"] = activations
        if mem["peak_allocated_bytes"] is not None:
            mem["optimizer_bytes"] = max(mem["update_peak_above_weights_bytes"], mem["held_after_backward_bytes"])
            mem["peak_minus_activations_bytes"] = mem["peak_allocated_bytes"] - mem["weights_bytes"] - activations
        else:  # CPU: no allocator statistics, only the counted tensors
            mem["optimizer_bytes"] = max(mem["held_after_backward_bytes"], mem["held_after_step_bytes"])
            mem["peak_minus_activations_bytes"] = None
    result = {
        "optimizer": args.worker, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": "tiny-llama" if args.tiny else "llama3-8b (random init)", "dtype": "bf16",
        "batch_size": args.batch_size, "seq_len": args.seq_len, "num_blocks": layers,
        "parameters": sum(p.numel() for p in model.parameters()), "model_setup_s": setup_s, "phases": phases,
    }
    Path(args.worker_result).write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------------------------- main side ----
def gib(n):
    return f"{n / 2**30:.2f}" if isinstance(n, (int, float)) else "n/a"


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def markdown(results: dict, meta: dict) -> str:
    lines = [f"# badam BlockOptimizer vs official badam 1.4", "",
             f"- date: {meta['date']}", f"- device: {meta['device']}",
             f"- torch {meta['torch']}, transformers {meta['transformers']}", f"- command: `{meta['command']}`",
             f"- model: {meta['model']}, bf16, batch {meta['batch_size']} x {meta['seq_len']} random token ids, "
             "non-reentrant checkpointing, AdamW base optimizer", ""]
    if meta["device"] == "cpu":
        lines += ["CPU run (script check only): no allocator statistics, so `optimizer GiB` counts the optimizer's "
                  "tensors when backward ends, and timings on a shared CPU mean little.", ""]
    header = ("| phase | optimizer | forward ms | backward ms | update ms | step ms | switch ms (median) | "
              "peak GiB | optimizer GiB | peak-weights-activations GiB |")
    lines += [header, "|" + "---|" * 10]
    for phase in ("k1_epoch", "k100_steady"):
        for name, res in results.items():
            if "error" in res:
                lines.append(f"| {phase} | {name} | error: {res['error']} |||||||")
                continue
            p = res["phases"][phase]
            ms, mem = p["median_ms"], p["memory"]
            sw = p["switch_ms"]["median"]
            lines.append(f"| {phase} | {name} | {ms['forward']:.1f} | {ms['backward']:.1f} | {ms['update']:.1f} | "
                         f"{ms['step']:.1f} | {'-' if sw is None else f'{sw:.1f}'} | "
                         f"{gib(mem['peak_allocated_bytes'])} | {gib(mem['optimizer_bytes'])} | "
                         f"{gib(mem['peak_minus_activations_bytes'])} |")
    if all(n in results and "error" not in results[n] for n in OPTIMIZERS):
        lines += ["", "| phase | step time ours/1.4 | optimizer memory ours/1.4 | ours switch ms | targets met |",
                  "|---|---|---|---|---|"]
        for phase in ("k1_epoch", "k100_steady"):
            ours, theirs = results["ours"]["phases"][phase], results["official"]["phases"][phase]
            t = ratio(ours["median_ms"]["step"], theirs["median_ms"]["step"])
            m = ratio(ours["memory"]["optimizer_bytes"], theirs["memory"]["optimizer_bytes"])
            sw = results["ours"]["phases"]["k1_epoch"]["switch_ms"]["median"]
            met = [t is not None and t <= TARGETS["step_time_ratio"],
                   m is not None and m <= TARGETS["optimizer_memory_ratio"],
                   sw is not None and sw <= TARGETS["switch_ms"]]
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {phase} | {fmt(t)} | {fmt(m)} | {fmt(sw)} | "
                         f"time {'yes' if met[0] else 'NO'}, memory {'yes' if met[1] else 'NO'}, "
                         f"switch {'yes' if met[2] else 'NO'} |")
        diffs = [abs(a - b) for a, b in zip(results["ours"]["phases"]["k1_epoch"]["losses"],
                                              results["official"]["phases"]["k1_epoch"]["losses"])]
        lines += ["", f"Same data and initial weights: the k1_epoch losses of ours and 1.4 differ by at most "
                  f"{max(diffs):.2e} over {len(diffs)} steps (one block per step, every block once)."]
        lines += ["", f"Targets: step time <= {TARGETS['step_time_ratio']} x 1.4; optimizer memory <= "
                  f"{TARGETS['optimizer_memory_ratio']} x 1.4; block switch <= {TARGETS['switch_ms']} ms. "
                  "See the script's docstring for how each figure is measured."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.official_path:
        env["BADAM_OFFICIAL_PATH"] = str(Path(args.official_path).resolve())
    results = {}
    for name in args.optimizers:
        result_path = out / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--worker", name,
               "--worker-result", str(result_path), "--batch-size", str(args.batch_size), "--seq-len",
               str(args.seq_len), "--steady-steps", str(args.steady_steps)]
        if args.tiny:
            cmd.append("--tiny")
        if args.profile_dir:
            cmd += ["--profile-dir", str(Path(args.profile_dir).resolve())]
        if args.official_path:
            cmd += ["--official-path", env["BADAM_OFFICIAL_PATH"]]
        print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        if proc.returncode == 0 and result_path.exists():
            results[name] = json.loads(result_path.read_text())
        else:
            tail = (out / f"{name}.log").read_text()[-2000:]
            results[name] = {"optimizer": name, "error": f"worker exited with {proc.returncode}"}
            result_path.write_text(json.dumps({**results[name], "log_tail": tail}, indent=2))
            print(tail, file=sys.stderr)
        print(f"[bench] {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    first_ok = next((r for r in results.values() if "error" not in r), {})
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "host": platform.node(),
            "device": first_ok.get("device", "n/a"), "torch": first_ok.get("torch", "n/a"),
            "transformers": first_ok.get("transformers", "n/a"), "model": first_ok.get("model", "n/a"),
            "batch_size": args.batch_size, "seq_len": args.seq_len, "targets": TARGETS}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    table = markdown(results, meta)
    (out / "summary.md").write_text(table)
    print(table)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
