"""One training run from a config: `python -m experiments.run --config small/smollm2_alpaca.yaml method.name=lora`.

Loads the model (experiments.models.load_model) and the data (experiments.data), builds the method from the registry,
trains it with experiments.loop.train and writes the run directory. Out of memory, divergence or any other failure, also
while loading, ends in a summary.json with status "oom", "diverged" or "error" rather than a traceback, so a suite can
go on.

Existing runs are safe: a name already taken gets a -2 suffix; `--overwrite` replaces the old run only once the new one
has loaded its model and data (a typo in a path leaves it intact); `train.resume_from=<run dir>` continues that run in
its own directory, and is refused, before anything is written, when the config differs from the run's config.yaml in
anything but train.max_steps / train.stop_after_steps / output settings (experiments/checkpoint.py).

Several GPUs: `torchrun --nproc_per_node N -m experiments.run --config ...` picks ddp or fsdp2 (train.distributed=auto,
experiments/launch_mode.py); `... train.distributed=ddp` (every GPU holds the
whole model, gradients are averaged; BAdam, LoRA, Adam, SGD: experiments/ddp.py) or `train.distributed=fsdp2` (FSDP2,
experiments/distributed.py: a random-init model is built on the meta device and each rank allocates only its shards);
rank 0 chooses the run directory and writes every file.
"""
from __future__ import annotations

from experiments.process_env import apply_defaults, ctrl_c_raises, quiet_ctrl_c_while_starting

apply_defaults()  # before torch is imported: OpenMP waiting policy, CUDA allocator (see experiments/process_env.py)
if __name__ == "__main__":
    quiet_ctrl_c_while_starting()  # one line, not an import traceback, for a Ctrl-C while torch loads

import argparse
import dataclasses
import gc
import sys
import traceback
from pathlib import Path

import torch

from baselines.registry import describe_methods
from experiments import checkpoint
from experiments.checkpoint import ResumeError
from experiments.config import (CONFIG_DIR, PROFILE_DIR, ConfigError, RunConfig, build_method_options,
                                config_from_dict, config_to_dict, list_configs, load_config)
from experiments.distributed import LaunchError, broadcast_object, init_distributed, shutdown
from experiments.launch_mode import resolve_distributed
from experiments.loop import RunNotStartedError, StoppedByCtrlC, error_kind_of, seed_everything, train
from experiments.measure import held_bytes, is_oom
from experiments.results import (RunDirExistsError, atomic_write_text, atomic_write_yaml,
                                 choose_run_dir, failure_summary, read_summary, replace_run_dir, write_summary)
from experiments.run_data import build_data, load_run_records  # build_data: also imported from here by scripts
from experiments.rundir import RunDir


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; valid here: auto, cpu")
    return name


def autocast_dtype(cfg: RunConfig) -> torch.dtype | None:
    """auto: bf16 compute when the weights are stored in bf16, so fp32 master weights or fp32 adapters never meet
    bf16 activations in one matmul; none with fp32 weights."""
    mode = cfg.train.autocast
    if mode == "none":
        return None
    if mode == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if cfg.model.dtype == "bf16" else None


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclasses.dataclass
class RunDirPlan:
    """Where a run goes. new: a fresh directory (written at once); overwrite: holds an old run, replaced only when the
    new run starts; resume: the directory of the checkpoint, whose config.yaml is checked against this run's."""
    path: Path
    mode: str
    saved_config: dict | None = None
    finished: bool = False    # resume: the run already has a summary with a final status


# A run whose summary has one of these is complete: resuming it with nothing left to train is refused. Without one
# (killed after its last checkpoint, interrupted, failed), such a resume only writes the missing summary.
FINISHED_STATUSES = ("ok", "oom", "diverged")


def _check_resume(cfg: RunConfig) -> RunDirPlan:
    run_dir, _ = checkpoint.locate(cfg.train.resume_from)
    saved = checkpoint.check_resume(run_dir, config_to_dict(cfg),
                                    load_saved=lambda raw: config_to_dict(config_from_dict(raw)))
    try:
        finished = (read_summary(run_dir) or {}).get("status") in FINISHED_STATUSES
    except ValueError:  # a torn summary.json: the run did not finish writing it
        finished = False
    if finished and cfg.train.max_steps:  # epochs mode: the loop knows the last step once the data is loaded
        step = checkpoint.saved_step(cfg.train.resume_from)
        last = min(cfg.train.max_steps, cfg.train.stop_after_steps or cfg.train.max_steps)
        if step >= last:
            raise ResumeError(f"resume refused: the checkpoint in {run_dir} is at step {step} and train.max_steps="
                              f"{cfg.train.max_steps}" + (f", train.stop_after_steps={cfg.train.stop_after_steps}"
                                                          if cfg.train.stop_after_steps else "")
                              + ": nothing is left to train; raise train.max_steps to continue the run")
    return RunDirPlan(run_dir, "resume", saved, finished)


def plan_run_dir(cfg: RunConfig, on_exists: str = "suffix") -> RunDirPlan:
    """Choose the directory without changing anything on disk; refusals raise ResumeError / RunDirExistsError."""
    if cfg.train.resume_from:
        return _check_resume(cfg)
    path, holds_old_run = choose_run_dir(cfg.output.dir, cfg.run_name, overwrite=cfg.output.overwrite,
                                         on_exists=on_exists)
    return RunDirPlan(path, "overwrite" if holds_old_run else "new")


def _plan_on_rank0(cfg: RunConfig, on_exists: str, dist_ctx) -> RunDirPlan:
    """Rank 0 plans (maybe a -2 suffix) and every rank uses that plan; a refusal reaches all."""
    outcome = None
    if dist_ctx is None or dist_ctx.is_main:
        try:
            outcome = plan_run_dir(cfg, on_exists)
        except (RunDirExistsError, ResumeError) as exc:
            outcome = exc
    if dist_ctx is not None:
        outcome = broadcast_object(outcome, dist_ctx)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _recorded_config(cfg: RunConfig, plan: RunDirPlan) -> dict:
    """config.yaml of the run: the resolved config; a resumed run keeps the name and place it was started with."""
    data = config_to_dict(cfg)
    if plan.mode == "resume":
        data["run_name"] = plan.saved_config["run_name"]
        data["output"] = {**data["output"], "dir": plan.saved_config["output"]["dir"]}
    return data


def load_run_model(cfg: RunConfig, device: str):
    """(model, tokenizer) of cfg.model, seeded first so that random-init models and fresh heads start from the same
    numbers every time. Every trainer of the suite loads through here (the SuperGLUE evaluator too)."""
    from experiments.models import load_model

    seed_everything(cfg.seed)
    return load_model(cfg.model.source, dtype=cfg.model.dtype, device=device, task=cfg.model.task,
                      num_labels=cfg.model.num_labels, attn_implementation=cfg.model.attn_implementation,
                      gradient_checkpointing=cfg.model.gradient_checkpointing, seed=cfg.seed,
                      tokenizer=cfg.model.tokenizer, cudnn_attention=cfg.model.cudnn_attention,
                      checkpointing_policy=cfg.model.checkpointing_policy)


def build_run_method(cfg: RunConfig, options=None):
    """The method of cfg.method from the registry; `options` replaces the resolved options (e.g. the SuperGLUE
    evaluator's task head added to them)."""
    from baselines.registry import get_method_class

    options = build_method_options(cfg.method) if options is None else options
    return get_method_class(cfg.method.name)(options, lr=cfg.method.lr, weight_decay=cfg.method.weight_decay)


def write_run_config(run_dir: Path, config_dict: dict) -> None:
    atomic_write_yaml(RunDir(run_dir).config, config_dict)


class RunStopped(KeyboardInterrupt):
    """Ctrl-C stopped run_experiment; str() is one line: where it stopped, what the run directory holds now and how
    to go on (experiments.run prints it and exits with 130)."""


def _stopped_while_loading(run_dir: Path, plan: RunDirPlan, writer: bool = True) -> RunStopped:
    """Ctrl-C before training started: a new run's directory, which holds only the config.yaml just written, is
    removed by the process that wrote it (`writer`; the same command then starts in it again); an old run
    (--overwrite, resume) was not touched yet."""
    if plan.mode != "new" or not writer:
        return RunStopped(f"stopped by Ctrl-C while loading, before training started: {run_dir} was left as it was")
    try:
        RunDir(run_dir).config.unlink(missing_ok=True)
        run_dir.rmdir()  # only when empty: nothing but what this run wrote is removed
    except OSError:
        pass
    return RunStopped("stopped by Ctrl-C while loading, before training started: nothing was written; run the same "
                      "command to start again")


def _stopped_while_training(run_dir: Path, summary: dict) -> RunStopped:
    """Ctrl-C during training: train() wrote `summary` (status "interrupted") into summary.json."""
    steps = summary.get("steps") or 0
    planned = f" of {summary['planned_steps']}" if summary.get("planned_steps") else ""
    if RunDir(run_dir).has_checkpoint():
        try:
            at = f" (step {checkpoint.saved_step(str(run_dir))})"
        except ResumeError:
            at = ""
        how = f"resume from its checkpoint{at}: the same command with train.resume_from={run_dir}"
    else:
        how = "no checkpoint to resume from (train.save_every=0): run the command again to start over"
    return RunStopped(f"stopped by Ctrl-C after step {steps}{planned}: {run_dir} (summary.json: interrupted); {how}")


def _load_everything(cfg: RunConfig, load_device: str, data_stats: dict, records: list[dict] | None = None):
    method = build_run_method(cfg)
    model, tokenizer = load_run_model(cfg, load_device)
    batches_fn, eval_fn = build_data(cfg, tokenizer, data_stats, records)
    return method, model, tokenizer, batches_fn, eval_fn


def check_trainable_here(cfg: RunConfig) -> None:
    """Configs this CLI cannot train are refused before anything is loaded."""
    if cfg.data.format == "superglue":
        raise ConfigError("data.format=superglue is trained by the SuperGLUE evaluator, which builds classification "
                          "batches and selects checkpoints per task: python -m eval.superglue --config <this config> "
                          "(or a run_all profile listing the superglue evaluator for the group)")


def run_experiment(cfg: RunConfig, *, progress: bool = True, on_exists: str = "suffix",
                   dist_ctx=None) -> tuple[dict, Path]:
    """Train one config; returns (summary, run_dir). Failures become a summary with status oom/error.
    dist_ctx: from experiments.distributed.init_distributed; with cfg.train.distributed=fsdp2 or ddp and none given, the
    process group torchrun prepared is joined here (LaunchError when the process was not started by torchrun).

    An existing run is never harmed by a new run that fails to start: with cfg.train.resume_from the run continues in
    the checkpoint's directory (ResumeError, before anything is loaded, when the config differs from that run's in a
    key a resume may not change); with cfg.output.overwrite the old run is replaced only once the new one has loaded
    its model and data and built its method. Until then nothing is written, and a failure raises RunNotStartedError.
    A data file that cannot be read, or a record without the fields data.format reads, is a ConfigError raised before
    anything is written."""
    check_trainable_here(cfg)
    cfg = resolve_distributed(cfg, announce=dist_ctx is None)  # auto: the mode this launch gets (recorded as such)
    if cfg.train.distributed != "none" and dist_ctx is None:
        dist_ctx = init_distributed(cfg.train.device, cfg.train.distributed)
    main = dist_ctx is None or dist_ctx.is_main
    device = str(dist_ctx.device) if dist_ctx is not None else resolve_device(cfg.train.device)  # before any write
    records = load_run_records(cfg)  # a bad data file is a usage error: nothing is written
    plan = _plan_on_rank0(cfg, on_exists, dist_ctx)
    run_dir = plan.path
    config_dict = _recorded_config(cfg, plan)
    deferred = plan.mode != "new"
    if main and not deferred:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, config_dict)
    # sharded runs: random models are built on the meta device (each rank materialises only its shards after
    # sharding), others load on the CPU and move to the GPU shard by shard; ddp: every rank loads the whole model
    # (with train.ddp_shard_frozen as sharded runs, placed unit by unit: experiments.ddp.placement)
    sharded = dist_ctx is not None and (dist_ctx.mode == "fsdp2" or cfg.train.ddp_shard_frozen)
    load_device = device if not sharded else ("meta" if cfg.model.source.startswith("random:") else "cpu")
    data_stats: dict = {}
    meta = {"run_name": config_dict["run_name"], "model": cfg.model.source, "config": config_dict,
            "data_stats": data_stats}
    what = {"resume": "the resumed run", "overwrite": "the new run (--overwrite)"}.get(plan.mode, "the run")
    try:
        method, model, tokenizer, batches_fn, eval_fn = _load_everything(cfg, load_device, data_stats, records)
    except KeyboardInterrupt:
        raise _stopped_while_loading(run_dir, plan, writer=main) from None
    except Exception as exc:
        _free_memory()
        if deferred:
            raise RunNotStartedError(f"{what} did not start and {run_dir} was left as it was: "
                                     f"{type(exc).__name__}: {exc}", cause=exc) from exc
        status = "oom" if is_oom(exc) else "error"
        held = held_bytes(device) if status == "oom" else None
        error = f"{type(exc).__name__}: {exc}"
        if held is not None:
            error = f"out of memory ({held} bytes held when it happened): {error}"
        summary = failure_summary(status, error, kind=error_kind_of(exc), run_name=cfg.run_name,
                                  method=cfg.method.name, model=cfg.model.source, config=config_dict, device=device,
                                  held_at_oom=held)
        if main:
            write_summary(run_dir, summary)
            atomic_write_text(RunDir(run_dir).error(), "".join(traceback.format_exception(exc)))
        return summary, run_dir

    started = []  # filled by on_start: from then on the run directory is this run's

    def on_start() -> None:  # the new run is set up: now the old one may go / the resumed one's record is updated
        started.append(True)
        if main:
            if plan.mode == "overwrite":
                replace_run_dir(run_dir)
            write_run_config(run_dir, config_dict)
        if dist_ctx is not None:
            dist_ctx.barrier()  # no rank writes into the directory before rank 0 has swapped it

    save_dir = RunDir(run_dir).model if cfg.output.save_model else None
    try:
        summary = train(model, method, batches_fn, cfg.train, run_dir, eval_batches_fn=eval_fn,
                        autocast_dtype=autocast_dtype(cfg), device=device, seed=cfg.seed, meta=meta,
                        save_model_dir=save_dir, progress=progress and main, dist_ctx=dist_ctx,
                        on_start=on_start if deferred else None, resume_may_finish=not plan.finished)
    except RunNotStartedError as exc:
        raise RunNotStartedError(f"{what} did not start and {run_dir} was left as it was: {exc}",
                                 cause=exc.cause) from exc
    except StoppedByCtrlC as exc:
        raise _stopped_while_training(run_dir, exc.summary) from None
    except KeyboardInterrupt:
        if deferred and not started:
            raise _stopped_while_loading(run_dir, plan) from None
        # several processes (each rank stops where it is), or Ctrl-C while the summary was being written
        raise RunStopped(f"stopped by Ctrl-C: {run_dir} keeps what was written; its summary.json was not "
                         "updated") from None
    finally:
        del model, method
        _free_memory()
    if save_dir is not None and summary["status"] == "ok" and tokenizer is not None and main:
        tokenizer.save_pretrained(save_dir)
    return summary, run_dir


def check_launch(cfg: RunConfig) -> None:
    """Several processes started by torchrun with train.distributed=none would each train alone into one directory."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and cfg.train.distributed == "none":
        from baselines.registry import get_method_class, method_names

        ddp_methods = ", ".join(n for n in method_names() if get_method_class(n).supports_ddp())
        raise ConfigError(f"started as {world} processes (torchrun) but train.distributed=none; pass "
                          f"train.distributed=ddp (each GPU holds the whole model: {ddp_methods}), "
                          "train.distributed=fsdp2 (the model is sharded over the GPUs) or train.distributed=auto "
                          "(one of the two, by whether the model fits one GPU)")


def list_everything() -> str:
    lines = ["methods:"]
    lines += [f"  {line}" for line in describe_methods()]
    lines.append(f"configs (under {CONFIG_DIR}):")
    for name in list_configs():
        try:
            superglue = load_config(name).data.format == "superglue"
        except ConfigError:
            superglue = False
        lines.append(f"  {name}" + ("   (SuperGLUE: python -m eval.superglue --config " + name + ")" if superglue
                                    else ""))
    lines.append(f"profiles (python -m experiments.run_all --profile NAME; under {PROFILE_DIR}):")
    lines += [f"  {p.stem}" for p in sorted(PROFILE_DIR.glob("*.yaml"))]
    return "\n".join(lines)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line naming the valid flags instead of argparse's usage block
        flags = ", ".join(a.option_strings[-1] for a in self._actions if a.option_strings)
        self.exit(2, f"error: {message}; valid flags: {flags}, and section.key=value overrides\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m experiments.run", allow_abbrev=False,  # a typo must not silently become --overwrite
        description="Train one method on one config and write a run directory (config.yaml, metrics.jsonl, "
                    "summary.json).",
        epilog="example: python -m experiments.run --config small/smollm2_alpaca.yaml method.name=lora "
               "method.rank=8 train.max_steps=5")
    parser.add_argument("--config", help="YAML config: a path, or a name under experiments/configs/")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")
    parser.add_argument("--list", action="store_true", help="print every method, config and profile, then exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run of the same name, once the new run has loaded its model and data")
    parser.add_argument("--refuse-existing", action="store_true",
                        help="fail instead of adding a -2 suffix when the run directory exists")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _one_line(text: str) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0] + (" (...)" if len(lines) > 1 else "") if lines else ""


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 the run ended ok; 1 it ended otherwise (oom, diverged, error, interrupted) or could not start;
    2 usage errors (bad config or flags, refused resume or overwrite); 130 stopped by Ctrl-C (SIGINT: one line
    saying where the run is and how to go on; summary.json says "interrupted"); every failure is one line on stderr."""
    import signal

    from experiments.loop import request_stop

    ctrl_c_raises()  # from here on Ctrl-C is a KeyboardInterrupt, turned into one line below
    # SIGTERM (run_all's deadline, a batch scheduler's preemption): finish the step, checkpoint, exit "interrupted"
    signal.signal(signal.SIGTERM, request_stop)
    parser = build_parser()
    # intermixed: flags may come after the overrides (`... run_name=x --overwrite train.max_steps=5`)
    args = parser.parse_intermixed_args(argv)
    if args.list:
        print(list_everything())
        return 0
    if not args.config:
        parser.error("--config is required (or --list to see the configs)")
    dist_ctx = None
    try:
        overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
        cfg = load_config(args.config, overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            return 0
        cfg = resolve_distributed(cfg)
        check_launch(cfg)
        if cfg.train.distributed != "none":
            dist_ctx = init_distributed(cfg.train.device, cfg.train.distributed)
        try:
            summary, run_dir = run_experiment(cfg, progress=not args.no_progress,
                                              on_exists="refuse" if args.refuse_existing else "suffix",
                                              dist_ctx=dist_ctx)
        finally:
            if dist_ctx is not None:
                shutdown()
    except RunStopped as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130  # the shell's code for a process ended by SIGINT
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C before the run started: nothing was written", file=sys.stderr)
        return 130
    except (ConfigError, RunDirExistsError, LaunchError, ResumeError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RunNotStartedError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # the run directory cannot be created or written
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write the run{where}: {exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 1
    if dist_ctx is not None and not dist_ctx.is_main:
        return 0 if summary["status"] == "ok" else 1  # rank 0 reports
    loss = summary.get("final_loss")
    print(f"{summary['status']}: {run_dir} (steps {summary['steps']}, final loss "
          f"{'n/a' if loss is None else f'{loss:.4f}'})")
    if summary["status"] != "ok":
        error_file = RunDir(run_dir).error()
        where = f" (traceback in {error_file})" if error_file.is_file() else ""
        print(f"  {summary['status']}: {_one_line(summary['error'])}{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
