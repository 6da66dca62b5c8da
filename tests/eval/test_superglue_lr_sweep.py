"""The SuperGLUE lr sweep of the quality profile (lr_sweep_superglue_mpnet) and the seeds at the lrs it chooses
(paper_superglue_mpnet_sweptlr): their plan, the tasks they use against what the committed paper-lr runs learned,
and a tiny run of both groups through run_all, the real superglue evaluator and python -m plots."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from experiments.lr_selection import LR_SELECTION_FILE
from experiments.run_all import load_profile, plan_runs

REPO = Path(__file__).resolve().parents[2]
SWEEP, SEEDS, PAPER = "lr_sweep_superglue_mpnet", "paper_superglue_mpnet_sweptlr", "paper_superglue_mpnet"
TASKS = {"copa", "wic", "rte"}


def _entries(profile: dict) -> tuple[dict, dict, dict]:
    sweep = next(e for e in profile["runs"] if e["group"] == SWEEP)
    seeds = next(e for e in profile["runs"] if e["group"] == SEEDS)
    evaluator = next(e for e in profile["evaluators"] if e["name"] == "superglue" and SWEEP in e["groups"])
    return sweep, seeds, evaluator


def test_the_sweep_plans_the_same_grid_size_for_every_method_on_three_tasks_and_the_seeds_take_its_choice(tmp_path):
    profile = load_profile("quality-gpu")
    planned = plan_runs(profile, output_root=tmp_path, only_groups=[SWEEP, SEEDS])
    sweep = {p.cfg.run_name: p.cfg for p in planned if p.group == SWEEP}
    grid = {"adam": (1e-5, 3e-5, 1e-4), "badam": (1e-5, 3e-5, 1e-4), "lora": (1e-4, 3e-4, 1e-3)}
    assert sorted(sweep) == sorted(f"mpnet_superglue-{m}-lr{lr:g}-s0" for m, lrs in grid.items() for lr in lrs)
    paper = {p.method: p.cfg for p in plan_runs(profile, output_root=tmp_path, only_groups=[PAPER])}
    for name, cfg in sweep.items():
        method = cfg.method.name
        assert cfg.seed == 0 and cfg.method.lr == float(name.split("-lr")[1].rsplit("-s", 1)[0])
        assert set(cfg.data.subset.split(",")) == TASKS and cfg.model.dtype == "fp32"
        # everything but the lr and the tasks is the paper-lr group's setting (K = 16, 768 steps, LoRA rank 8)
        assert cfg.method.options == paper[method].method.options and cfg.train == paper[method].train
    for method, lrs in grid.items():
        assert lrs[0] == paper[method].method.lr                             # the paper's lr at the bottom
        assert all(2.9 < b / a < 3.7 for a, b in zip(lrs, lrs[1:]))         # x ~3.2 apart
    follow = [p for p in planned if p.group == SEEDS]
    assert sorted(p.cfg.run_name for p in follow) == sorted(f"mpnet_superglue-{m}-s{s}" for m in grid for s in (1, 2))
    assert all(p.lr_from == SWEEP and p.cfg.data.subset == sweep["mpnet_superglue-adam-lr1e-05-s0"].data.subset
               for p in follow)
    _, _, evaluator = _entries(profile)
    assert evaluator["groups"] == [SWEEP, SEEDS] and "tasks" not in evaluator["options"]   # data.subset rules
    assert evaluator["options"]["jobs"] >= 9


def test_the_sweeps_tasks_are_the_ones_some_method_learned_at_the_papers_lr():
    """Why COPA, WiC and RTE (the profile's comment): in the committed paper-lr runs some method beats the majority
    class on each of them by more than 2 points and by more than twice its spread over seeds, and no method does so on
    BoolQ and WSC (within 2 points of the majority class) or MultiRC (seed spread larger than the gain)."""
    scores: dict[tuple[str, str], list[float]] = {}
    majority: dict[str, float] = {}
    for path in sorted((REPO / "results" / PAPER).glob("*/eval/superglue.json")):
        doc = json.loads(path.read_text())
        for task, entry in doc["tasks"].items():
            scores.setdefault((doc["method"], task), []).append(entry["metrics"]["score"])
            majority[task] = entry["majority_class_test"]["score"]
    assert len(scores) == 18, "the committed paper-lr runs: 3 methods x 6 tasks"
    learned = {task for (_m, task), values in scores.items()
               if statistics.fmean(values) - majority[task] > max(2.0, 2 * statistics.stdev(values))}
    sweep, _, _ = _entries(load_profile("quality-gpu"))
    assert learned == TASKS == set(sweep["overrides"][0].split("=")[1].split(","))


def test_a_tiny_sweep_chooses_on_validation_hands_the_seeds_their_lr_and_the_tables_show_it(tmp_path, capsys):
    """Both groups and their evaluator entry, shrunk (tiny random encoder, RTE only, 2 steps, one process): one
    run_all call scores the sweep, chooses badam's lr, writes the seeds' config and scores it; then the tables."""
    from experiments import run_all
    from plots.__main__ import main as plots_main

    sweep, seeds, evaluator = _entries(load_profile("quality-gpu"))
    options = {**evaluator["options"], "max_train": 8, "max_eval": 4, "max_length": 32, "batch_size": 4,
               "max_steps": 2, "eval_every": 1, "jobs": 1}
    profile = tmp_path / "sweep.yaml"
    profile.write_text(yaml.safe_dump({"description": "the SuperGLUE lr sweep of quality-gpu, shrunk",
                                       # extend_at_edge off: a 2-lr grid chooses at its edge; the extension
                                       # through the evaluator is tests/experiments/test_lr_extension.py's
                                       "runs": [{**sweep, "lrs": {"badam": [1e-5, 1e-4]}, "extend_at_edge": 0},
                                                {**seeds, "seeds": [1]}],
                                       "evaluators": [{**evaluator, "options": options}]}))
    out = tmp_path / "results"
    assert run_all.main(["--profile", str(profile), "--output-dir", str(out), "--methods", "badam", "--no-plots",
                         "--no-progress", "--set", "model.source=random:tiny-bert", "--set", "model.dtype=fp32",
                         "--set", "train.device=cpu", "--set", "data.subset=rte"]) == 0
    assert capsys.readouterr().out.count("evaluator superglue: ") == 2       # the sweep's, then the seeds'
    record = json.loads((out / SEEDS / LR_SELECTION_FILE).read_text())["badam"]
    validation = {c["lr"]: c["mean_validation_score"] for c in record["candidates"]}
    assert set(validation) == {1e-5, 1e-4} and record["tasks"] == ["rte"] and record["at_edge_of_grid"]
    assert validation[record["chosen_lr"]] == max(validation.values())
    results = json.loads((out / SEEDS / "mpnet_superglue-badam-s1" / "eval" / "superglue.json").read_text())
    assert results["settings"]["method"]["lr"] == record["chosen_lr"] and results["settings"]["seed"] == 1
    assert results["tasks"]["rte"]["status"] == "ok"
    assert plots_main(["--results", str(out), "--out", str(tmp_path / "tables")]) == 0
    tables = tmp_path / "tables" / "tables"
    t11 = (tables / "T11_superglue.md").read_text()
    assert f"lr of each method from {SWEEP} (highest mean validation score over RTE" in t11
    assert f"| badam | {record['chosen_lr']:g} | 0 (the sweep's run), 1 |" in t11
    lr_table = (tables / "LR_learning_rates.md").read_text()
    assert "mean validation score (%)" in lr_table and "| chosen |" in lr_table
