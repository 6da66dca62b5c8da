"""Run configuration: YAML files + dotted `key=value` overrides, validated into dataclasses.

A config has the sections run_name, seed, description, model, data, method, train, output (see the dataclasses).
The `method` section holds the common settings (name, lr, weight_decay), options of the selected method as flat
keys, and optional per-method subsections, so one file can carry every method's paper hyperparameters:

    method:
      name: badam
      lr: 1e-6
      badam: {switch_block_every: 100, switch_mode: random}
      lora: {lr: 1e-4, rank: 100}

For the selected method the precedence is: common keys in the file < its subsection < `method.KEY=...` on the command
line. Method options are checked against `get_method_class(name).Options`. A file may start with `inherit: other.yaml`
(relative to itself) to extend another config. YAML 1.1 reads "1e-5" as a string; values are converted to the type
each field declares, so "1e-5" becomes a float where a float is expected.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from badam.hf import CHECKPOINTING_POLICIES
from baselines.registry import get_method_class, method_names
from experiments.distributed_modes import MODES, same_setting
from experiments.layer_compile import BACKENDS as COMPILE_BACKENDS
from experiments.results import check_run_name
from experiments.schedule import SCHEDULES

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROFILE_DIR = CONFIG_DIR / "profiles"

DTYPES = ("bf16", "fp32")
TASKS = ("causal_lm", "sequence_classification", "multiple_choice")
DATA_FORMATS = ("alpaca", "math", "text", "superglue")
AUTOCAST = ("auto", "bf16", "none")
DISTRIBUTED = MODES  # torchrun: experiments/distributed.py (fsdp2), experiments/ddp.py; auto: launch_mode.py
DDP_REDUCE_DTYPES = ("fp32", "bf16")  # train.ddp_reduce_dtype: the dtype gradients are all-reduced in
COMPILE_LAYERS = ("none", *COMPILE_BACKENDS)  # train.compile_layers
COMMON_METHOD_KEYS = ("name", "lr", "weight_decay")
FP16_UNSUPPORTED = ("fp16 is not supported: it needs a dynamic loss scaler that every method (including fused LOMO "
                    "updates and BAdam's block optimizer) would have to honour; use bf16 (or fp32)")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the problem and the valid choices."""


@dataclass
class ModelConfig:
    source: str = "smollm2-135m-instruct"   # hub id | folder | .gguf | llama2c:<file> | random:<name> | alias
    dtype: str = "bf16"                      # storage dtype of the weights: bf16 | fp32
    gradient_checkpointing: bool = False
    checkpointing_policy: str = "non-reentrant"  # badam.hf's; block-graphed: CUDA graphs below BAdam's active block
    attn_implementation: str | None = None
    task: str = "causal_lm"
    num_labels: int | None = None
    # None: the source's own tokenizer (random configs: their stand-in). Else a tokenizer folder, a stand-in name or
    # a hub id, e.g. a carried tokenizer folder on a GPU machine that lacks the packages the stand-ins come from.
    tokenizer: str | None = None
    # CUDA only: let scaled_dot_product_attention use its cuDNN backend (off: known silent-corruption bugs on Hopper,
    # see experiments.models.load_model)
    cudnn_attention: bool = False


@dataclass
class DataConfig:
    source: str = "alpaca-gpt4-sample"       # a shared alias (experiments.data.DATASET_ALIASES)
    format: str = "alpaca"
    split: str = "train"
    subset: str | None = None                # e.g. the SuperGLUE task (BoolQ, RTE, ...)
    max_length: int = 512
    max_samples: int | None = None           # training examples (None: all)
    eval_samples: int = 0                    # held-out examples taken after the training ones, for eval loss
    split_seed: int | None = None            # seed of the train / held-out split (None: the run's seed); fix it so
                                             # that runs with different seeds are scored on the same held-out set
    packing: bool = False
    pad_to_max_length: bool = False          # every batch max_length wide: fixed shapes for time/memory runs
    group_by_length: bool = False
    shuffle: bool = True


@dataclass
class MethodConfig:
    name: str = "badam"
    lr: float = 1e-5
    weight_decay: float = 0.0
    options: dict = field(default_factory=dict)  # resolved options of the selected method


@dataclass
class TrainConfig:
    batch_size: int = 2
    grad_accum: int = 1
    max_steps: int | None = None             # optimizer steps; when set it wins over epochs
    epochs: float = 1.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0        # None or <= 0: no clipping (the norm is still logged)
    eval_every: int = 0                      # steps; 0: only at the end (when there is eval data)
    eval_batch_size: int | None = None
    save_every: int = 0                      # steps between checkpoints; 0: none
    resume_from: str | None = None           # checkpoint.pt or a run directory holding one
    autocast: str = "auto"                   # auto: bf16 autocast when the weights are bf16
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    distributed: str = "auto"                # auto | none | fsdp2 | ddp (auto: none on one process, under torchrun ddp
    #                                          if the model fits one GPU replicated, else ddp with the frozen blocks
    #                                          sharded if that fits (BAdam, BSGD), else fsdp2; launch_mode.py)
    ddp_reduce_dtype: str = "fp32"           # ddp: dtype of the gradient all-reduce (badam/data_parallel.py)
    ddp_shard_frozen: bool = False           # ddp, BAdam: 1/N of each frozen block per rank (badam/frozen_shards.py)
    fsdp_forward_prefetch: int = 0           # fsdp2: layers whose all-gather is issued ahead (experiments.distributed)
    fsdp_keep_gathered_layers: int = 0       # fsdp2: layers backward reaches that keep their gathered weights (-1: all;
                                             # experiments/fsdp_gather.py)
    stop_after_steps: int | None = None      # end early (time budget); the schedule still spans the full run
    timing_warmup_steps: int = 2             # left out of the median timings
    loss_chunk_tokens: int = 0               # > 0: causal-LM loss over labelled tokens in chunks of this many rows,
                                             # never materialising the full logits (experiments/lm_loss.py); 0: the
                                             # model's own loss
    track_memory: bool = True
    compile_layers: str = "none"             # torch.compile each decoder layer: shorter launch-bound steps (issue 18)


@dataclass
class OutputConfig:
    dir: str = "runs"
    overwrite: bool = False
    save_model: bool = False                 # write the final model to <run_dir>/model for the evaluators


@dataclass
class RunConfig:
    run_name: str | None = None
    seed: int = 42
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "output": OutputConfig}


# --- typed conversion -----------------------------------------------------------------------------------------------
def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert `value` (from YAML or the command line) to the declared type; one clear error if impossible."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}={value!r} is not valid; valid values: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, item_type, where) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.strip().lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _fill_dataclass(cls, values: dict, section: str):
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"valid keys in {section}: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


# --- YAML loading ---------------------------------------------------------------------------------------------------
def resolve_config_path(name: str | Path) -> Path:
    """A config given as a path, or relative to experiments/configs/ (with or without .yaml)."""
    candidates = [Path(name), CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ConfigError(f"config {str(name)!r} not found; available configs: {', '.join(list_configs())}")


def list_configs() -> list[str]:
    """Run configs under experiments/configs/ (profiles excluded), relative names."""
    return sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml")
                  if PROFILE_DIR not in p.parents)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_yaml_file(path: Path):
    """The YAML document in `path`; a syntax error or an unreadable file becomes one ConfigError line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); a config is YAML text") \
            from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}" + (f" ({context})" if context else "")) from None


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """The raw mapping of a config file, with `inherit:` resolved (child keys win)."""
    path = resolve_config_path(path)
    if path in _seen:
        raise ConfigError(f"config inheritance loops through {path}")
    data = parse_yaml_file(path)
    if data is None:  # an empty file would run every default (a full SmolLM2 run): surely not what was meant
        raise ConfigError(f"{path}: the config is empty; valid: a mapping of sections (model, data, method, train, "
                          "output) or 'inherit: <config>', e.g. experiments/configs/small/smollm2_alpaca.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    parent = data.pop("inherit", None)
    if parent:
        parent_path = (path.parent / parent) if (path.parent / parent).is_file() else parent
        data = _deep_merge(load_yaml(parent_path, _seen + (path,)), data)
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` → ("a.b.c", value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. method.name=lora)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides) -> dict:
    data = _deep_merge({}, data)
    for text in overrides:
        key, value = parse_override(text) if isinstance(text, str) else text
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"override {key}: {part!r} is a value, not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


# --- the method section ----------------------------------------------------------------------------------------------
def method_options_class(name: str):
    return get_method_class(name).Options


def _method_key(key: str, name: str, subsections: dict) -> str:
    """Where the user wrote `key`: in the method's own subsection (method.badam.key) or flat (method.key)."""
    return f"method.{name}.{key}" if key in subsections.get(name, {}) else f"method.{key}"


def _resolve_method(section: dict, forced_keys: set[str]) -> MethodConfig:
    if not isinstance(section, dict):
        raise ConfigError(f"section 'method' must be a mapping, got {section!r}")
    name = section.get("name", MethodConfig.name)
    valid_methods = method_names()
    if name not in valid_methods:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(valid_methods)}")
    subsections = {k: v for k, v in section.items() if k in valid_methods and isinstance(v, dict)}
    flat = {k: v for k, v in section.items() if k not in subsections and k != "name"}
    merged = {k: v for k, v in flat.items() if k not in forced_keys}
    merged.update(subsections.get(name, {}))
    merged.update({k: v for k, v in flat.items() if k in forced_keys})
    try:
        options_cls = method_options_class(name)
    except ImportError as exc:
        raise ConfigError(f"method {name!r} is registered but its module cannot be imported: {exc}") from exc
    option_names = [f.name for f in dataclasses.fields(options_cls)] if dataclasses.is_dataclass(options_cls) else []
    unknown = sorted(set(merged) - set(COMMON_METHOD_KEYS) - set(option_names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(_method_key(k, name, subsections) for k in unknown)} for method {name!r}; "
            f"valid keys: "
            f"{', '.join(('lr', 'weight_decay', *option_names))}; per-method settings go in a subsection named after "
            f"a method ({', '.join(valid_methods)})")
    hints = typing.get_type_hints(options_cls) if option_names else {}
    options = {k: _coerce(v, hints[k], f"method.{k}") for k, v in merged.items() if k in option_names}
    return MethodConfig(name=name, lr=_coerce(merged.get("lr", MethodConfig.lr), float, "method.lr"),
                        weight_decay=_coerce(merged.get("weight_decay", 0.0), float, "method.weight_decay"),
                        options=options)


def build_method_options(method: MethodConfig):
    """An instance of the method's Options dataclass from the resolved options (its own checks become ConfigError)."""
    try:
        return method_options_class(method.name)(**method.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method {method.name!r}: invalid options {method.options}: {exc}") from exc


# --- whole config -----------------------------------------------------------------------------------------------------
def config_from_dict(data: dict, *, forced_method_keys: set[str] = frozenset(), stem: str = "run") -> RunConfig:
    valid_top = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(data) - set(valid_top))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; valid top-level keys: {', '.join(valid_top)}")
    sections = {name: _fill_dataclass(cls, data.get(name) or {}, name) for name, cls in SECTIONS.items()}
    method = _resolve_method(data.get("method") or {}, set(forced_method_keys))
    cfg = RunConfig(run_name=None if data.get("run_name") is None else str(data["run_name"]),
                    seed=_coerce(data.get("seed", 42), int, "seed"),
                    description=str(data.get("description", "") or ""), method=method, **sections)
    if not cfg.run_name:
        cfg.run_name = f"{stem}-{method.name}"
    validate(cfg)
    return cfg


def _choice(value, valid, key, extra=""):
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid{extra}; valid values: {', '.join(map(str, valid))}")


def validate(cfg: RunConfig) -> None:
    if cfg.model.dtype == "fp16" or cfg.train.autocast == "fp16":
        raise ConfigError(FP16_UNSUPPORTED)
    _choice(cfg.model.dtype, DTYPES, "model.dtype")
    _choice(cfg.model.task, TASKS, "model.task")
    _choice(cfg.model.checkpointing_policy, CHECKPOINTING_POLICIES, "model.checkpointing_policy")
    if cfg.model.checkpointing_policy != "non-reentrant" and not cfg.model.gradient_checkpointing:
        raise ConfigError(f"model.checkpointing_policy={cfg.model.checkpointing_policy} chooses how layers checkpoint; "
                          "set model.gradient_checkpointing=true with it (or leave the policy at non-reentrant)")
    _choice(cfg.data.format, DATA_FORMATS, "data.format")
    _choice(cfg.train.lr_schedule, SCHEDULES, "train.lr_schedule")
    _choice(cfg.train.autocast, AUTOCAST, "train.autocast")
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"train.device={device!r} is not valid; valid values: auto, cpu, cuda, cuda:N")
    _choice(cfg.train.distributed, DISTRIBUTED, "train.distributed")
    if cfg.train.distributed not in ("none", "auto") and device.startswith("cuda:"):  # auto: launch_mode checks
        raise ConfigError(f"train.device={device!r} with train.distributed={cfg.train.distributed}: each process "
                          "takes the GPU torchrun gives it (cuda:LOCAL_RANK); valid values: auto, cpu, cuda")
    _choice(cfg.train.ddp_reduce_dtype, DDP_REDUCE_DTYPES, "train.ddp_reduce_dtype")
    if cfg.train.ddp_shard_frozen and cfg.train.distributed in ("none", "fsdp2"):
        raise ConfigError(f"train.ddp_shard_frozen needs train.distributed=ddp or auto, not {cfg.train.distributed}")
    _choice(cfg.train.compile_layers, COMPILE_LAYERS, "train.compile_layers")
    if cfg.train.fsdp_keep_gathered_layers < -1:
        raise ConfigError("train.fsdp_keep_gathered_layers must be >= -1 (layers kept gathered from forward to "
                          "backward; -1: all that backward reaches, 0: FSDP2's default), got "
                          f"{cfg.train.fsdp_keep_gathered_layers}")
    if cfg.train.fsdp_forward_prefetch < 0:
        raise ConfigError(f"train.fsdp_forward_prefetch must be >= 0 (layers gathered ahead; 0: FSDP2's default), "
                          f"got {cfg.train.fsdp_forward_prefetch}")
    for key in ("batch_size", "grad_accum"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(cfg.train, key)}")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ConfigError(f"train.max_steps must be >= 1 or null, got {cfg.train.max_steps}")
    if cfg.train.max_steps is None and cfg.train.epochs <= 0:
        raise ConfigError(f"train.epochs must be > 0 when train.max_steps is null, got {cfg.train.epochs}")
    if not 0 <= cfg.train.warmup_ratio <= 1:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1], got {cfg.train.warmup_ratio}")
    if cfg.method.lr <= 0:
        raise ConfigError(f"method.lr must be > 0, got {cfg.method.lr}")
    if cfg.data.max_length < 8:
        raise ConfigError(f"data.max_length must be >= 8, got {cfg.data.max_length}")
    try:
        check_run_name(cfg.run_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.train.resume_from and cfg.output.overwrite:
        raise ConfigError("train.resume_from and output.overwrite (--overwrite) exclude each other: resuming continues "
                          "the run in its own directory; drop one of them")
    if cfg.data.eval_samples < 0:
        raise ConfigError(f"data.eval_samples must be >= 0, got {cfg.data.eval_samples}")
    options = build_method_options(cfg.method)  # the method's own checks of its options (ranges, choices)
    check_compile_layers(cfg.train.compile_layers, get_method_class(cfg.method.name), options)


ALLOW_REFUSED_COMPILE = "BADAM_ALLOW_REFUSED_COMPILE"  # =1: run a refused method/backend anyway, to investigate it


def check_compile_layers(backend: str, method_class, options) -> None:
    """ConfigError when train.compile_layers names a backend for a method that, with these options, cannot train
    with compiled layers (Method.compile_layers_problem says why); with BADAM_ALLOW_REFUSED_COMPILE=1 a warning, for
    the GPU probes that study a refusal (scripts/gpu/compile_layers_check.sh lora-probe)."""
    problem = method_class.compile_layers_problem(options, backend) if backend != "none" else None
    if problem and os.environ.get(ALLOW_REFUSED_COMPILE) == "1":
        warnings.warn(f"train.compile_layers={backend} for method {method_class.name!r} runs although refused "
                      f"({ALLOW_REFUSED_COMPILE}=1): {problem}", stacklevel=2)
    elif problem:
        raise ConfigError(f"train.compile_layers={backend} is not offered for method {method_class.name!r}: {problem}; "
                          "set train.compile_layers=none for it")


def load_config(path: str | Path, overrides=()) -> RunConfig:
    """Read a YAML config (path or name under experiments/configs/), apply `key=value` overrides, validate."""
    resolved = resolve_config_path(path)
    parsed = [parse_override(o) if isinstance(o, str) else o for o in overrides]
    data = apply_overrides(load_yaml(resolved), parsed)
    forced = {key.split(".", 1)[1] for key, _ in parsed if key.startswith("method.") and key.count(".") == 1}
    return config_from_dict(data, forced_method_keys=forced, stem=resolved.stem)


def config_to_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain data (written to config.yaml; loadable again with config_from_dict)."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples → lists, so YAML can write it
    method = data.pop("method")
    data["method"] = {"name": method["name"], "lr": method["lr"], "weight_decay": method["weight_decay"],
                      **method["options"]}
    return data


def dotted_keys(data: dict, prefix: str = "") -> dict:
    """A nested config dict as one level of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in data.items():
        out.update(dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def changed_settings(saved: dict, cfg: RunConfig) -> list[str]:
    """'key: saved -> now' for each setting in which a finished run's recorded config (summary.json's "config")
    differs from `cfg`, besides its name and where its files go; [] when the record cannot be read as a config."""
    try:
        old = config_to_dict(config_from_dict(saved))   # the present schema's defaults fill keys it lacks
    except (ConfigError, TypeError, ValueError):
        return []
    before, now = dotted_keys(old), dotted_keys(config_to_dict(cfg))
    ignored = ("run_name", "train.resume_from", "method.measure_rounding")  # the last only measures
    return [f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(before) | set(now))
            # auto in the call matches the mode a run recorded for it (distributed_modes.same_setting)
            if key not in ignored and not key.startswith("output.") and not same_setting(key, before, now)]
