"""Where a harness run's step spends its time: torch.profiler over a few steady-state steps of any method, with the
loop's forward / backward / update phases as ranges, and for LOMO its norm pass, its update pass and its
per-parameter hooks as ranges of their own.

    # LOMO's backward on Llama 3-8B (about 1 minute on an H100), with and without its gradient-norm pass:
    python benchmarks/profile_step.py --config memory/llama3_8b_memory.yaml --out results/bench/profile_lomo \
        --set method.name=lomo --set train.max_grad_norm=1.0 --set data.packing=false \
        --set data.pad_to_max_length=false --set model.tokenizer=PATH
    # the same for LoRA, BAdam, ... (--set method.name=lora --set method.rank=8 ...)
    # CPU check of the script: --config small/smollm2_alpaca.yaml --set model.source=random:tiny-llama ...

The run trains W + 3 S + 2 steps through the harness's own loop (experiments.loop.train, into <out>/run; W =
train.timing_warmup_steps, S = --steps): W warm-up steps, S steps whose batches are kept, the kept batches again
without the profiler (the reference: the same batches, every shape already seen once), one profiler warm-up step,
the kept batches once more while the profiler records (S steps), and one step that closes the window. So the
summary's measured step and MFU come from unprofiled steps of exactly the batches whose kernels were recorded (the
profiler's host overhead lengthens a host-bound step: an earlier version timed mostly profiled steps of other
batches, and read a 277 ms step against 48.6 ms of kernels on an H100). summary.json's own timing_ms (a median over
the run's timed steps) still mixes profiled and unprofiled steps. Writes to --out:
  profile_<method>.txt / .json  torch's op tables (by device and by host time) and per-op records with the ranges;
  where_time_goes_<method>.md   per step: the phases' host and device milliseconds, the device's idle time inside
                                backward, and for LOMO the host time inside its hooks with the cost of the
                                named_parameters() scan that each hook call runs over the whole model (lomo-optim's
                                fused update looks for finished gradients by scanning every parameter, once per
                                parameter, in Python).
The LOMO ranges come from wrapping lomo-optim's Lomo / AdaLomo methods in this process only (class attributes,
before the optimizer is built); nothing in the library or the harness changes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):  # run as a script from a bare checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from experiments.process_env import apply_defaults  # noqa: E402

apply_defaults()

import profiling  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a config under experiments/configs/ (or a path)")
    p.add_argument("--set", action="append", default=[], metavar="section.key=value", help="config override")
    p.add_argument("--out", required=True, type=Path, help="folder for the profile and the summary")
    p.add_argument("--steps", type=int, default=3, help="steps recorded by the profiler (default 3)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    return args


# --- LOMO's ranges ------------------------------------------------------------------------------------------------
def instrument_lomo():
    """Wrap lomo-optim's hook factory and its two backward entry points with profiler ranges in this process; returns
    a function that puts the originals back (None when lomo-optim is absent)."""
    try:
        import lomo_optim
    except ImportError:
        return None
    originals = []
    for cls in (lomo_optim.Lomo, lomo_optim.AdaLomo):
        make_hook, grad_norm, fused_backward = cls.fuse_update, cls.grad_norm, cls.fused_backward
        originals.append((cls, make_hook, grad_norm, fused_backward))

        def fuse_update(self, _make=make_hook):
            inner = _make(self)

            def hook(x):
                with profiling.phase("lomo hook"):
                    return inner(x)
            return hook

        def norm_pass(self, loss, _f=grad_norm):
            with profiling.phase("lomo norm pass"):
                return _f(self, loss)

        def update_pass(self, loss, lr, _f=fused_backward):
            with profiling.phase("lomo update pass"):
                return _f(self, loss, lr)

        cls.fuse_update, cls.grad_norm, cls.fused_backward = fuse_update, norm_pass, update_pass

    def restore():
        for cls, make_hook, grad_norm, fused_backward in originals:
            cls.fuse_update, cls.grad_norm, cls.fused_backward = make_hook, grad_norm, fused_backward
    return restore


def scan_ms(model, repeats: int = 20) -> float:
    """Milliseconds of one pass of lomo-optim's search loop (named_parameters() with its two attribute tests)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _name, p in model.named_parameters():
            if p.requires_grad and p.grad is not None:
                pass
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# --- the run --------------------------------------------------------------------------------------------------------
def replayed_batches(batches_fn, profiler, grad_accum: int, *, fresh_steps: int, kept_steps: int):
    """batches_fn for the profiled run: steps 1..fresh_steps and the next kept_steps steps take fresh micro-batches
    from batches_fn, the latter are kept, and every later step replays the kept steps in turn (the loop takes
    grad_accum micro-batches per step). The profiler's schedule advances as the first micro-batch of every step after
    the first is handed out. A remainder the loop drops at an epoch's end is forgotten here too."""
    if kept_steps < 1:
        raise ValueError(f"kept_steps must be >= 1, got {kept_steps}")
    state = {"handed": 0, "stepped": 1, "kept": [], "partial": []}

    def wrapped(epoch):
        state["handed"] -= state["handed"] % grad_accum  # a new epoch: the loop dropped a partial step, if any
        state["partial"] = []
        source = iter(batches_fn(epoch))
        while True:
            step, micro = divmod(state["handed"], grad_accum)
            step += 1
            if step <= fresh_steps + kept_steps:
                item = next(source, None)
                if item is None:
                    return
                if step > fresh_steps:
                    state["partial"].append(item)
                    if len(state["partial"]) == grad_accum:
                        state["kept"].append(state["partial"])
                        state["partial"] = []
            else:
                kept = state["kept"]
                item = kept[(step - fresh_steps - kept_steps - 1) % len(kept)][micro]
            if step > state["stepped"]:
                profiler.step()
                state["stepped"] = step
            state["handed"] += 1
            yield item
    return wrapped


def step_plan(warmup: int, steps: int) -> dict:
    """Step numbers (1-based) of the profiled run: the unprofiled reference pass and the recorded pass hold the same
    kept batches; the profiler waits through everything before its one warm-up step."""
    return {"max_steps": warmup + 3 * steps + 2, "profiler_wait": warmup + 2 * steps,
            "reference": range(warmup + steps + 1, warmup + 2 * steps + 1),
            "recorded": range(warmup + 2 * steps + 2, warmup + 3 * steps + 2)}


def pass_figures(records: list[dict], steps: range, device_name: str | None) -> dict | None:
    """Mean phase times, tokens and MFU per step over the given steps of the run's metrics records (None if absent)."""
    from experiments.flops import utilization_summary

    chosen = [r for r in records if r.get("step") in steps]
    if len(chosen) != len(steps):
        return None
    mean = lambda key: statistics.fmean(float(r.get(key) or 0.0) for r in chosen)  # noqa: E731
    out = {phase: mean(f"t_{phase}_ms") for phase in ("forward", "backward", "update", "step")}
    out.update(steps=[steps.start, steps.stop - 1], tokens_per_step=mean("tokens"),
               mfu=utilization_summary(chosen, 0, device_name).get("mfu"))
    return out


def facts_of(summary: dict, scan: float | None, params: int, records: list[dict] | None = None,
             plan: dict | None = None) -> dict:
    """What where_time_goes needs from the run besides the profile (kept in where_time_goes_<method>.json, so that
    profile_summaries.py can write the summary again from committed files alone); records + plan add the unprofiled
    reference pass and the recorded pass (pass_figures)."""
    device_name = (summary.get("environment") or {}).get("device_name")
    facts = {"run_name": summary.get("run_name"), "model": summary.get("model"), "device_name": device_name,
             "timing_ms": summary.get("timing_ms"), "compute": summary.get("compute"), "lomo_scan_ms": scan,
             "parameters": params}
    if records is not None and plan is not None:
        facts["unprofiled"] = pass_figures(records, plan["reference"], device_name)
        facts["profiled"] = pass_figures(records, plan["recorded"], device_name)
    return facts


def _percent(value) -> str:
    return f"{100 * value:.1f} %" if value is not None else "not known (no bf16 peak for this device)"


def where_time_goes(method: str, doc: dict, facts: dict) -> str:
    """The summary of one profile (doc: its records, any age) with the run's facts (facts_of)."""
    timing = facts.get("timing_ms") or {}
    summary = profiling.summarise(doc)
    phases, steps = summary["phases"], max(1, doc["steps"])
    mfu = (facts.get("compute") or {}).get("mfu")  # None: no dense bf16 peak known for this device (e.g. a CPU)
    device_name = facts.get("device_name") or (facts.get("compute") or {}).get("device_name")
    model = f", model {facts['model']}" if facts.get("model") else ""
    reference, recorded = facts.get("unprofiled"), facts.get("profiled")
    lines = [f"# Where the step's time goes: {method}", "",
             f"- run: {facts.get('run_name') or 'profile-' + method}{model}, device {device_name}"]
    if reference and recorded:
        lines += [f"- step without the profiler (CUDA events / perf_counter, mean over steps {reference['steps'][0]}-"
                  f"{reference['steps'][1]}: the batches the profiler recorded, each already run once; "
                  f"{reference['tokens_per_step']:.0f} tokens per step): forward {reference['forward']:.1f} ms, "
                  f"backward {reference['backward']:.1f} ms, update {reference['update']:.1f} ms, step "
                  f"{reference['step']:.1f} ms; MFU {_percent(reference['mfu'])}",
                  f"- the same batches with the profiler recording (steps {recorded['steps'][0]}-"
                  f"{recorded['steps'][1]}): step {recorded['step']:.1f} ms (its overhead is host time)"]
        step, against = reference["step"], "the same batches' step without the profiler"
    else:
        lines.append(f"- step (CUDA events / perf_counter, median over the run's timed steps, all but one of them "
                     f"under the profiler in this older profile: its host overhead is in these figures and the MFU): "
                     f"forward {timing.get('forward', 0):.1f} ms, backward {timing.get('backward', 0):.1f} ms, update "
                     f"{timing.get('update', 0):.1f} ms, step {timing.get('step', 0):.1f} ms; MFU {_percent(mfu)}")
        step, against = timing.get("step"), ("the run's median step (profiled steps, other batches too: the "
                                              "profiler's host overhead inflates the idle time)")
    lines += ["", "| range | host ms/step | device ms/step | calls/step |", "|---|---|---|---|"]
    for name, p in sorted(phases.items()):
        lines.append(f"| {name} | {p['cpu_ms_per_step']:.1f} | {profiling.device_cell(p, doc.get('device'))} | "
                     f"{p['calls'] / steps:.0f} |")
    lines += ["", profiling.LEGEND]
    if doc.get("device") == "cuda" and step:
        kernels = summary["kernel_ms_per_step"]
        forward = (phases.get("forward") or {}).get("device_ms_per_step") or 0.0
        idle = max(0.0, step - kernels)
        lines += ["", f"Kernels: {summary['kernels_per_step']:.0f} launches and {kernels:.1f} ms per step in all "
                      f"({forward:.1f} ms launched by the forward, {kernels - forward:.1f} ms by backward, update and "
                      f"anything outside the ranges), against {against}, {step:.1f} ms: the "
                      f"GPU sat idle about {idle:.1f} ms ({100 * idle / step:.0f} %), waiting for the host (Python, "
                      f"launches, synchronisation). Host time inside backward: "
                      f"{(phases.get('backward') or {}).get('cpu_ms_per_step', 0.0):.1f} ms per step (profiled)."]
    hook, scan = phases.get("lomo hook"), facts.get("lomo_scan_ms")
    if hook and scan is not None:
        calls = hook["calls"] / steps
        lines += [f"LOMO's hooks: {calls:.0f} calls per step, {hook['cpu_ms_per_step']:.1f} ms of host time per step. "
                  f"Each call searches every one of the {facts.get('parameters')} parameters for a finished gradient "
                  f"(named_parameters() in Python): one scan takes {scan:.2f} ms here, so {calls:.0f} calls cost "
                  f"about {calls * scan:.0f} ms per step before any update kernel runs; the updates themselves "
                  f"launch {profiling.device_cell(hook)} ms of device work (the hooks run on autograd's thread, so "
                  f"this range sees their own kernels)."]
    return "\n".join(lines) + "\n"


def write_where_time_goes(folder: Path, method: str, doc: dict, facts: dict) -> str:
    """where_time_goes_<method>.md and .json (the facts, with the phases as summarised now)."""
    text = where_time_goes(method, doc, facts)
    (folder / f"where_time_goes_{method}.md").write_text(text)
    (folder / f"where_time_goes_{method}.json").write_text(json.dumps(
        {"phases": profiling.summarise(doc)["phases"], "steps": doc["steps"], **facts}, indent=1))
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from experiments import measure
    from experiments.config import ConfigError, load_config
    from experiments.rundir import RunDir
    from experiments.loop import train
    from experiments.run import _load_everything, autocast_dtype, resolve_device

    try:
        cfg = load_config(args.config, list(args.set))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = step_plan(cfg.train.timing_warmup_steps, args.steps)
    cfg.train.max_steps = plan["max_steps"]
    cfg.train.eval_every = 0
    device = resolve_device(cfg.train.device)
    restore = instrument_lomo() if cfg.method.name in ("lomo", "adalomo") else None
    lomo = restore is not None
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    profiler = torch.profiler.profile(activities=activities,
                                      schedule=torch.profiler.schedule(wait=plan["profiler_wait"], warmup=1,
                                                                       active=args.steps,
                                                                       repeat=1))
    args.out.mkdir(parents=True, exist_ok=True)
    measure.PHASE_RANGES = True
    try:
        method, model, _tokenizer, batches_fn, _eval = _load_everything(cfg, device, {})
        with profiler:
            batches = replayed_batches(batches_fn, profiler, cfg.train.grad_accum,
                                       fresh_steps=cfg.train.timing_warmup_steps, kept_steps=args.steps)
            summary = train(model, method, batches,
                            cfg.train, args.out / "run", autocast_dtype=autocast_dtype(cfg), device=device,
                            seed=cfg.seed, meta={"run_name": f"profile-{cfg.method.name}", "model": cfg.model.source},
                            progress=not args.no_progress)
    finally:
        measure.PHASE_RANGES = False
        if restore is not None:
            restore()
    if summary["status"] != "ok":
        print(f"error: the profiled run ended with status {summary['status']}: {summary.get('error')}",
              file=sys.stderr)
        return 1
    doc = profiling.write(profiler, args.out, f"profile_{cfg.method.name}", steps=args.steps,
                          device_type="cuda" if device.startswith("cuda") else "cpu")
    trained = method.model if lomo else model
    scan = scan_ms(trained) if lomo else None
    text = write_where_time_goes(args.out, cfg.method.name, doc,
                                 facts_of(summary, scan, sum(1 for _ in trained.parameters()),
                                          RunDir(args.out / "run").read_metrics(), plan))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
