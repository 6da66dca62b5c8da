"""run_all's plan: every run of a profile resolved and checked before anything trains (plan_runs), with what a
method's class declares it cannot do adapted (method_adaptations) and what --methods adds said in the plan
(added_method_lines). experiments/run_all.py has the profile format."""
from __future__ import annotations

import json
from pathlib import Path

from baselines.registry import get_method_class, method_names
from experiments.config import ConfigError, config_to_dict, load_config
from experiments.suite import PlannedRun, group_matches, select_groups


def resolved_device(cfg) -> str:
    """cuda or cpu: where the run will train (train.device auto: CUDA when available)."""
    device = str(cfg.train.device)
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else device


def method_adaptations(method: str, cfg) -> list[tuple[str, str]]:
    """[(override, why)] that make a group's common settings fit what the method's class declares it can do
    (baselines/base.py): a fused update cannot accumulate gradients, so the micro-batch takes the whole effective
    batch; a method that updates inside backward cannot clip to a global norm, so clipping goes off. Profiles need no
    per-method overrides for these; the plan says what was changed."""
    cls = get_method_class(method)
    out = []
    accum = int(cfg.train.grad_accum)
    if accum > 1 and not cls.supports_grad_accumulation:
        batch = int(cfg.train.batch_size) * accum
        out += [(f"train.batch_size={batch}", f"batch {cfg.train.batch_size} x {accum} micro-batches -> one batch of "
                                               f"{batch} (its update is fused into backward: no accumulation)"),
                ("train.grad_accum=1", "")]
    if cfg.train.max_grad_norm is not None and cfg.train.max_grad_norm > 0 and not cls.supports_clipping:
        out.append(("train.max_grad_norm=null", f"no clipping (max_grad_norm {cfg.train.max_grad_norm:g} is "
                                                "impossible: it updates each parameter inside backward)"))
    return out


def plan_runs(profile: dict, *, output_root: Path, only_methods: list[str] | None = None,
              extra_overrides: tuple[str, ...] = (), only_groups: list[str] | None = None,
              only_seeds: list[int] | None = None) -> list[PlannedRun]:
    """Resolve and validate every run of the profile before anything trains (a bad config fails in seconds)."""
    skip = profile.get("skip") or {}
    if only_methods:
        unknown = [m for m in only_methods if m not in method_names()]
        if unknown:
            raise ConfigError(f"--methods names unknown method(s) {', '.join(unknown)}; valid methods: "
                              f"{', '.join(method_names())}")
    if only_groups:
        select_groups((entry["group"] for entry in profile["runs"]), only_groups, where=f"profile {profile['name']}")
    planned = []
    in_profile = {m for e in profile["runs"] for m in e["methods"]}
    # --methods runs a method the profile does not list anywhere with each group's common overrides (said in the
    # plan), once per distinct settings: a group split over several entries (seeds 0 / 1, 2) gets every seed, and
    # groups that share their settings (two of the cpu profile do) do not train the same run twice. A method the
    # profile lists runs only where it is listed.
    extra = [m for m in (only_methods or []) if m not in in_profile]
    planned_settings: set[str] = set()   # of the added methods' runs
    refused: set = set()                 # (group, added method) whose settings are not for it
    for entry in profile["runs"]:
        if only_groups and not group_matches(entry["group"], only_groups):
            continue
        stem = entry.get("name") or Path(entry["config"]).stem
        seeds = entry.get("seeds") or [None]
        methods = [*entry["methods"], *extra]
        # seed-major: a suite cut short by a deadline has every method at seed 0 before any at seed 1
        for seed in seeds:
            if only_seeds is not None and seed is not None and seed not in only_seeds:
                continue
            for method in methods:
                if only_methods and method not in only_methods:
                    continue
                if method in skip:
                    if seed == seeds[0]:
                        planned.append(PlannedRun(entry["group"], method, None, skip_reason=str(skip[method])))
                    continue
                for lr in (entry.get("lrs") or {}).get(method) or [None]:
                    name = stem + f"-{method}" + (f"-lr{float(lr):g}" if lr is not None else "") + \
                        (f"-s{seed}" if seed is not None else "")
                    overrides = [*(entry.get("overrides") or []),
                                 *((entry.get("method_overrides") or {}).get(method) or []),
                                 *((entry.get("first_seed_overrides") or []) if seed == seeds[0] else []),
                                 f"method.name={method}", f"run_name={name}",
                                 f"output.dir={output_root / entry['group']}",
                                 *([f"seed={seed}"] if seed is not None else []),
                                 *([f"method.lr={float(lr)!r}"] if lr is not None else []), *extra_overrides]
                    try:
                        cfg = load_config(entry["config"], overrides)
                        adapted = method_adaptations(method, cfg)
                        if adapted:
                            overrides = [*overrides, *(o for o, _ in adapted)]
                            cfg = load_config(entry["config"], overrides)
                    except ConfigError as exc:
                        if method in extra and _group_settings_refuse(entry, overrides, extra_overrides):
                            # an added method the group's own settings do not fit (a BAdam ablation's
                            # method.switch_mode): that group is not for it; the other groups still run it
                            if (entry["group"], method) not in refused:
                                refused.add((entry["group"], method))
                                planned.append(PlannedRun(entry["group"], method, None, skip_reason=(
                                    f"the group's settings are not for {method}: {exc}".split("; valid")[0])))
                            break
                        raise ConfigError(f"profile {profile['name']}, group {entry['group']}, method {method}: "
                                          f"{exc}") from exc
                    if method in extra:
                        settings = _settings_key(cfg) + f" lr_from={entry.get('lr_from')}"
                        if settings in planned_settings:
                            continue  # planned already, in this group or an earlier one with the very same settings
                        planned_settings.add(settings)
                    cuda_only = get_method_class(method).cuda_only
                    if cuda_only and resolved_device(cfg) != "cuda":
                        if seed == seeds[0]:
                            planned.append(PlannedRun(entry["group"], method, None,
                                                      skip_reason=f"CUDA only: {cuda_only}"))
                        break  # every lr of the sweep would be skipped alike
                    planned.append(PlannedRun(entry["group"], method, cfg, config=entry["config"],
                                              overrides=tuple(overrides), lr_from=entry.get("lr_from"),
                                              adaptations=tuple(why for _, why in adapted if why),
                                              exclusive=bool(entry.get("exclusive")),
                                              extend_at_edge=int(entry.get("extend_at_edge") or 0) if lr else 0))
    if not planned:
        raise ConfigError(f"profile {profile['name']}: nothing to run (check --methods and --groups)")
    return planned


def _group_settings_refuse(entry: dict, overrides: list[str], extra_overrides: tuple[str, ...]) -> bool:
    """Whether a group's own overrides (without the command line's --set) fail to resolve for a method."""
    own = overrides[:len(overrides) - len(extra_overrides)] if extra_overrides else overrides
    try:
        load_config(entry["config"], own)
    except ConfigError:
        return True
    return False


def _settings_key(cfg) -> str:
    """What a run trains, as text: its resolved config without its name and output settings."""
    resolved = config_to_dict(cfg)
    resolved.pop("run_name", None)
    resolved.pop("output", None)
    return json.dumps(resolved, sort_keys=True, default=str)


def added_method_lines(profile: dict, planned: list[PlannedRun], added: list[str]) -> list[str]:
    """Plan lines for the methods --methods adds: the lr each gets (a profile sets lrs per method, so an added method
    falls back to its config's default unless told otherwise) and the sweeps that have no grid for it."""
    lines = []
    for method in added:
        runs = [p for p in planned if p.method == method and p.cfg is not None]
        if not runs:
            continue
        own = sorted({p.cfg.method.lr for p in runs if not p.lr_from})
        told = any(o.split("=", 1)[0] in (f"method.{method}.lr", "method.lr") for p in runs for o in p.overrides)
        text = f"  {method}: lr {', '.join(f'{lr:g}' for lr in own)}" if own else f"  {method}: lr from its sweep"
        if own and not told:
            text += (f" (the config's default: the profile sets no lr for {method}; "
                     f"--set method.{method}.lr=X sets one)")
        sweeps = sorted({e["group"] for e in profile["runs"] if e.get("lrs") and method not in e["lrs"]
                         and any(p.group == e["group"] for p in runs)})
        if sweeps:
            text += (f"; {', '.join(sweeps)}: an lr sweep with no lrs for {method}, so one run there, whose lr the "
                     f"groups with lr_from take (a grid of its own: lrs: {{{method}: [...]}} in a copy of the profile, "
                     "run with --profile <file>)")
        lines.append(text)
    return lines
