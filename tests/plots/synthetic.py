"""Tiny SYNTHETIC run directories shaped like the quality profile's output (summary.json, metrics.jsonl,
eval/rank.json, eval/mtbench/scores_*.json, eval/math.json, eval/superglue.json, lr_selection.json), written by the
tests into pytest's tmp_path: no training runs, every number is chosen by the test so that it knows the answer.
Every summary carries "fixture_note" saying so."""
from __future__ import annotations

import json
import math
from pathlib import Path

NOTE = "SYNTHETIC test fixture written by tests/plots/synthetic.py; not a measurement"
MODEL = "tiny-synthetic-lm"
JUDGE = "local-judge"
MATRICES = ("q", "k", "v", "up", "down")
LAYERS = 4


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def edit_summary(run: Path, changes: dict, *, sep: str = ".") -> dict:
    """Set fields of run/summary.json (keys name nested fields joined by `sep`); returns the summary written."""
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = summary
        *parents, key = dotted.split(sep)
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    path.write_text(json.dumps(summary, indent=1))
    return summary


def write_run(root: Path, group: str, name: str, *, method: str, lr: float, seed: int | None = 0,
              final_eval_loss: float | None = 1.0, steps: int = 20, status: str = "ok", options: dict | None = None,
              epochs: float = 1.0, step_ms: float = 100.0, date: str = "2026-11-25T10:00:00+00:00",
              model: str = MODEL) -> Path:
    """One run directory: a loss curve falling towards `final_eval_loss` (eval every 5 steps and at the end)."""
    run = root / group / name
    options = dict(options or {})
    config = {"run_name": name, "seed": seed, "model": {"source": model, "dtype": "bf16"},
              "method": {"name": method, "lr": lr, **options},
              "train": {"epochs": epochs, "max_steps": None, "eval_every": 5, "batch_size": 4},
              "output": {"dir": str(root / group), "save_model": seed == 0}}
    summary = {"status": status, "run_name": name, "method": method, "model": model, "steps": steps,
               "planned_steps": steps, "final_eval_loss": final_eval_loss if status == "ok" else None,
               "method_info": {"name": method, "lr": lr, "options": options}, "config": config,
               "environment": {"date": date, "device_name": "synthetic"}, "fixture_note": NOTE}
    write_json(run / "summary.json", summary)
    records = []
    target = final_eval_loss if final_eval_loss is not None else 2.0
    for step in range(1, steps + 1):
        loss = target + 2.0 * math.exp(-step / 4) + 0.01 * ((seed or 0) - 1)
        record = {"step": step, "loss": loss, "t_step_ms": step_ms}
        if step % 5 == 0 or step == steps:
            record["eval_loss"] = target + 1.5 * math.exp(-step / 4)
        records.append(record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def write_rank(run: Path, ranks: dict[str, int], *, changed_layers=None, new_format: bool = True) -> None:
    """eval/rank.json: every matrix type in `MATRICES` at each layer, effective rank ranks[type] where changed."""
    matrices = []
    for layer in range(LAYERS):
        for kind in MATRICES:
            changed = changed_layers is None or layer in changed_layers
            rank = ranks[kind] if changed else 0
            curve = {"r": [1, 2, 64], "cvar": [0.5, 0.7, 1.0] if changed else [0.0, 0.0, 0.0]}
            matrices.append({"name": f"layers.{layer}.{kind}.weight", "layer": layer, "matrix": kind,
                             "shape": [64, 64], "effective_rank": rank, "rank_ratio": rank / 64,
                             "delta_fro_norm": 1.0 if changed else 0.0, "unchanged": not changed, "curve": curve})
    by_type = {}
    for kind in MATRICES:
        rows = [m for m in matrices if m["matrix"] == kind]
        done = [m for m in rows if m["delta_fro_norm"] > 0]
        by_type[kind] = {"count": len(rows), "mean_effective_rank_all": sum(m["effective_rank"] for m in rows) / 4}
        if new_format:
            by_type[kind].update(changed=len(done), mean_effective_rank=sum(m["effective_rank"] for m in done) /
                                 max(1, len(done)))
    write_json(run / "eval" / "rank.json", {"threshold": 0.9, "matrices": matrices, "by_type": by_type,
                                            "fixture_note": NOTE})


def write_mtbench(run: Path, score: float, judge: str = JUDGE) -> None:
    write_json(run / "eval" / "mtbench" / f"scores_{judge}.json",
               {"judge": judge, "fixture_note": NOTE, "models": {run.name: {"overall": score}}})


# Final eval losses per method and seed of the main group; the claims tests edit them.
MAIN_LOSSES = {"adam": (1.00, 1.01, 0.99), "badam": (1.01, 1.02, 1.00), "lora": (1.10, 1.11, 1.09),
               "newopt": (0.90, 0.91, 0.89)}
MAIN_LRS = {"adam": 1e-4, "badam": 1e-4, "lora": 1e-3, "newopt": 3e-4}


def quality_tree(root: Path, *, losses: dict | None = None, badam_rank: int = 45) -> Path:
    """A results tree with every group of the quality profile, for model MODEL (see the module docstring)."""
    losses = {**MAIN_LOSSES, **(losses or {})}
    main = "paper_mtbench_tiny"
    # the lr sweep: badam's best lr at the top of its grid, adam's inside, lomo with one finished lr, and a method
    # the suite does not know yet ("newopt") with two
    sweep = {"adam": {1e-5: 1.3, 1e-4: 1.1, 3e-4: 1.2}, "badam": {1e-5: 1.5, 3e-5: 1.4, 1e-4: 1.2},
             "lomo": {3e-3: 1.6}, "newopt": {1e-4: 1.05, 3e-4: 1.0}}
    for method, grid in sweep.items():
        for lr, loss in grid.items():
            write_run(root, "lr_sweep_tiny", f"tiny-{method}-lr{lr:g}", method=method, lr=lr, final_eval_loss=loss,
                      epochs=0.25)
    write_run(root, "lr_sweep_tiny", "tiny-adam-lr0.001", method="adam", lr=1e-3, status="diverged",
              epochs=0.25)
    write_json(root / main / "lr_selection.json", {
        "adam": {"from_group": "lr_sweep_tiny", "rule": "lowest final eval loss", "chosen_lr": 1e-4,
                 "at_edge_of_grid": False, "candidates": []},
        "badam": {"from_group": "lr_sweep_tiny", "rule": "lowest final eval loss", "chosen_lr": 3e-5,
                  "at_edge_of_grid": False, "candidates": []}})  # recorded before the sweep's last run
    badam_options = {"switch_block_every": 20, "switch_mode": "random", "seed": None}
    for method, per_seed in losses.items():
        for seed, loss in enumerate(per_seed):
            run = write_run(root, main, f"tiny-{method}-s{seed}", method=method, lr=MAIN_LRS[method], seed=seed,
                            final_eval_loss=loss, options=badam_options if method == "badam" else None,
                            step_ms={"badam": 60.0}.get(method, 100.0))
            if seed == 0 and method in ("adam", "badam", "lora"):
                ranks = {"adam": 50, "badam": badam_rank, "lora": 8}[method]
                write_rank(run, dict.fromkeys(MATRICES, ranks), changed_layers={0, 1} if method == "badam" else None,
                           new_format=method != "lora")
                write_mtbench(run, {"adam": 6.0, "badam": 6.1, "lora": 5.5}[method])
    base = root / main / "tiny-base"
    write_json(base / "summary.json", {"status": "ok", "method": "base", "model": MODEL, "run_name": "tiny-base",
                                       "steps": 0, "fixture_note": NOTE})
    write_mtbench(base, 3.0)
    # ablations: one seed; adam / badam come from the main group's seed 0
    write_run(root, "ablation_bsgd_tiny", "tiny-sgd", method="sgd", lr=3e-2, final_eval_loss=1.20)
    write_run(root, "ablation_bsgd_tiny", "tiny-bsgd", method="bsgd", lr=3e-2, final_eval_loss=1.21, step_ms=50.0,
              options={"switch_block_every": 20, "switch_mode": "random"})
    write_run(root, "ablation_bsgd_tiny", "tiny-newopt", method="newopt", lr=3e-4, final_eval_loss=0.95)
    for mode, loss in (("ascending", 1.03), ("descending", 1.05)):
        write_run(root, "ablation_order_tiny", f"order_{mode}-badam", method="badam", lr=1e-4, final_eval_loss=loss,
                  options={**badam_options, "switch_mode": mode})
    for k, loss in ((10, 1.02), (50, 1.04)):
        write_run(root, "ablation_k_tiny", f"k{k}-badam", method="badam", lr=1e-4, final_eval_loss=loss,
                  options={**badam_options, "switch_block_every": k})
    # math: two seeds, and the base model
    math_scores = {"base": (10.0,), "adam": (30.0, 32.0), "badam": (31.0, 33.0), "lora": (25.0, 27.0)}
    for method, per_seed in math_scores.items():
        for seed, score in enumerate(per_seed):
            run = write_run(root, "paper_math_tiny", f"math-{method}-s{seed}", method=method, lr=1e-5, seed=seed,
                            model="tiny-math-lm")
            write_json(run / "eval" / "math.json", {"fixture_note": NOTE, "datasets": {
                "gsm8k": {"accuracy_pct": score}, "math": {"accuracy_pct": score / 2}}})
    # SuperGLUE in eval.superglue's layout: <out>/eval/superglue.json with the run config as "settings"
    for method, per_seed in {"adam": (80.0, 82.0), "badam": (79.0, 81.0), "lora": (70.0, 72.0)}.items():
        for seed, score in enumerate(per_seed):
            write_superglue(root, "paper_superglue_tiny", f"enc-{method}-s{seed}", method=method, lr=1e-5, seed=seed,
                            test={"rte": score, "boolq": score + 5},   # BoolQ's best mean 86: not learned
                            majority={"rte": 53.0, "boolq": 85.0})
    return root


SUPERGLUE_MODEL = "tiny-encoder"


def write_superglue(root: Path, group: str, name: str, *, method: str, lr: float, seed: int | None,
                    test: dict, validation: dict | None = None, majority: dict | None = None,
                    subset: str | None = None, model: str = SUPERGLUE_MODEL, task_runs: bool = False) -> Path:
    """A SuperGLUE run directory as run_all and eval.superglue leave it: config.yaml (data.format superglue, the
    tasks in data.subset) and eval/superglue.json with the run config as "settings". test: {task: test score in
    percent, or a status such as "diverged" for a task that failed}; validation: {task: score} (default: the test
    score); majority: {task: majority-class test score}. task_runs: also the harness run of each task that
    eval.superglue leaves in tasks/<task>/ (its own summary.json, as on a GPU)."""
    run = root / group / name
    config = {"run_name": name, "seed": seed, "model": {"source": model},
              "data": {"format": "superglue", "subset": subset or ",".join(test)},
              "method": {"name": method, "lr": lr}, "fixture_note": NOTE}
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(json.dumps(config))   # JSON is YAML
    tasks = {}
    for task, score in test.items():
        if isinstance(score, str):
            tasks[task] = {"status": score, "error": "synthetic failure", "metrics": None, "validation": None}
            continue
        tasks[task] = {"status": "ok", "metrics": {"score": score},
                       "validation": {"score": (validation or {}).get(task, score)}}
        if majority and task in majority:
            tasks[task]["majority_class_test"] = {"score": majority[task]}
    for task in test if task_runs else ():
        write_json(run / "tasks" / task / "summary.json", {
            "status": "ok", "run_name": f"superglue-{task}", "method": method, "model": model, "steps": 8,
            "final_loss": 0.5, "config": {"seed": seed, "method": {"name": method, "lr": lr}}, "fixture_note": NOTE})
    write_json(run / "eval" / "superglue.json", {
        "evaluator": "superglue", "model": model, "method": method, "fixture_note": NOTE,
        "settings": {"seed": seed, "method": {"name": method, "lr": lr}}, "tasks": tasks})
    return run
