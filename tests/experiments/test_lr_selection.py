"""experiments.lr_selection: the SuperGLUE rule (highest mean validation score over the sweep's tasks, never test;
ties to the smaller lr; failed candidates left out, unfinished ones stop the choice) and run_all handing a SuperGLUE
lr_from group to its evaluator only after the sweep's evaluator ran. Synthetic evaluator files in tmp_path, no
training."""
from __future__ import annotations

import json

import pytest
import yaml

from experiments import run_all, suite
from experiments.lr_selection import LR_SELECTION_FILE, RULE_SUPERGLUE, LrSelectionError, select_lr
from tests.plots.synthetic import write_superglue

SWEEP = "lr_sweep_sg"


def _sweep(root, method: str, grid: dict[float, tuple[dict, dict]], **kwargs) -> None:
    """One run directory per lr: {lr: (validation, test)} scores per task."""
    for lr, (validation, test) in grid.items():
        write_superglue(root, SWEEP, f"sg-{method}-lr{lr:g}-s0", method=method, lr=lr, seed=0, test=test,
                        validation=validation, **kwargs)


def test_the_highest_mean_validation_score_wins_and_test_is_never_read(tmp_path):
    _sweep(tmp_path, "badam", {
        1e-5: ({"copa": 60.0, "rte": 60.0}, {"copa": 90.0, "rte": 90.0}),   # best on test: must not matter
        3e-5: ({"copa": 70.0, "rte": 66.0}, {"copa": 50.0, "rte": 50.0}),   # best mean validation: 68
        1e-4: ({"copa": 80.0, "rte": 50.0}, {"copa": 60.0, "rte": 60.0})})  # best COPA alone, mean 65
    selection = select_lr(tmp_path, SWEEP, "badam")
    assert selection["chosen_lr"] == 3e-5 and selection["rule"] == RULE_SUPERGLUE
    assert selection["tasks"] == ["copa", "rte"] and not selection["at_edge_of_grid"]
    assert [c["mean_validation_score"] for c in selection["candidates"]] == [60.0, 68.0, 65.0]
    assert all("test" not in json.dumps(c) for c in selection["candidates"])
    with pytest.raises(LrSelectionError, match="no finished run of method adam"):   # no run of that method
        select_lr(tmp_path, SWEEP, "adam")


def test_ties_go_to_the_smaller_lr_and_the_edge_of_the_grid_is_flagged(tmp_path):
    _sweep(tmp_path, "adam", {1e-4: ({"copa": 70.0, "wic": 60.0}, {"copa": 1.0, "wic": 1.0}),
                              1e-5: ({"copa": 60.0, "wic": 70.0}, {"copa": 1.0, "wic": 1.0})})
    selection = select_lr(tmp_path, SWEEP, "adam")
    assert selection["chosen_lr"] == 1e-5 and selection["at_edge_of_grid"]
    _sweep(tmp_path, "lora", {1e-4: ({"copa": 50.0}, {"copa": 1.0}), 1e-3: ({"copa": 51.0}, {"copa": 1.0})})
    assert select_lr(tmp_path, SWEEP, "lora")["chosen_lr"] == 1e-3   # the top of the grid, flagged too
    assert select_lr(tmp_path, SWEEP, "lora")["at_edge_of_grid"]


def test_a_failed_candidate_is_left_out_but_still_counts_as_tried(tmp_path):
    _sweep(tmp_path, "badam", {1e-5: ({"copa": 55.0, "rte": 55.0}, {"copa": 55.0, "rte": 55.0}),
                               3e-5: ({"copa": 60.0, "rte": 60.0}, {"copa": 60.0, "rte": 60.0}),
                               1e-4: ({"copa": 99.0}, {"copa": 99.0, "rte": "diverged"})})
    selection = select_lr(tmp_path, SWEEP, "badam")
    assert selection["chosen_lr"] == 3e-5 and not selection["at_edge_of_grid"]   # 1e-4 was tried: 3e-5 is inside
    failed = selection["candidates"][-1]
    assert failed["status"] == "failed" and failed["failed_tasks"] == {"rte": "diverged"}
    assert failed["mean_validation_score"] is None


def test_an_unfinished_sweep_chooses_nothing_and_says_which_run_lacks_what(tmp_path):
    _sweep(tmp_path, "adam", {1e-5: ({"copa": 55.0, "wic": 50.0}, {"copa": 55.0, "wic": 50.0}),
                              3e-5: ({"copa": 70.0}, {"copa": 70.0})}, subset="copa,wic")   # its WiC not run yet
    with pytest.raises(LrSelectionError, match=r"not finished for adam: sg-adam-lr3e-05-s0 lacks wic.*run its evaluator"):
        select_lr(tmp_path, SWEEP, "adam")
    # a run directory whose evaluator has not written anything yet (run_all wrote its config.yaml)
    (tmp_path / SWEEP / "sg-lora-lr1e-04-s0").mkdir()
    (tmp_path / SWEEP / "sg-lora-lr1e-04-s0" / "config.yaml").write_text(yaml.safe_dump({
        "seed": 0, "data": {"format": "superglue", "subset": "copa"}, "method": {"name": "lora", "lr": 1e-4}}))
    _sweep(tmp_path, "lora", {1e-3: ({"copa": 60.0}, {"copa": 60.0})})
    with pytest.raises(LrSelectionError, match="sg-lora-lr1e-04-s0 lacks copa"):
        select_lr(tmp_path, SWEEP, "lora")


def test_a_sweep_of_both_kinds_of_runs_is_refused(tmp_path):
    _sweep(tmp_path, "adam", {1e-5: ({"copa": 55.0}, {"copa": 55.0})})
    trained = tmp_path / SWEEP / "t-adam-lr0.001"
    trained.mkdir()
    (trained / "summary.json").write_text(json.dumps({"status": "ok", "method": "adam", "final_eval_loss": 1.0,
                                                      "config": {"method": {"lr": 1e-3}}}))
    with pytest.raises(LrSelectionError, match="both training runs and SuperGLUE run directories"):
        select_lr(tmp_path, SWEEP, "adam")


# --- run_all: a SuperGLUE group whose lr comes from a SuperGLUE sweep ---------------------------------------------
SUPERGLUE_OVERRIDES = ["model.source=random:tiny-bert", "model.dtype=fp32", "train.device=cpu",
                       "data.subset=copa,rte"]


def _profile(tmp_path) -> str:
    runs = [{"config": "quality/mpnet_superglue.yaml", "group": SWEEP, "name": "sg", "methods": ["badam"],
             "seeds": [0], "overrides": SUPERGLUE_OVERRIDES, "lrs": {"badam": [1e-5, 1e-4]}},
            {"config": "quality/mpnet_superglue.yaml", "group": "paper_superglue_sg_sweptlr", "name": "sg",
             "methods": ["badam"], "seeds": [1], "overrides": SUPERGLUE_OVERRIDES, "lr_from": SWEEP}]
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"description": "a SuperGLUE sweep and its seeds", "runs": runs,
                                    "evaluators": [{"name": "superglue", "groups": [SWEEP,
                                                                                   "paper_superglue_sg_sweptlr"]}]}))
    return str(path)


def test_run_all_hands_the_group_to_its_evaluator_after_the_sweeps_evaluator(tmp_path, monkeypatch, capsys):
    """The first pass writes the sweep's configs and passes the group over; the sweep's evaluator (here one that
    writes scores as the superglue evaluator would) runs; then the group gets the chosen lr, its lr_selection.json,
    its config.yaml, and its own evaluator call."""
    calls = []

    def fake_evaluators(profile, outcomes):
        dirs = [o.run_dir for o in outcomes if o.status == "ok"]
        calls.append(sorted(d.name for d in dirs))
        for run_dir in dirs:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            lr = config["method"]["lr"]
            score = {1e-5: 55.0, 1e-4: 75.0}.get(lr, 60.0)
            write_superglue(run_dir.parent.parent, run_dir.parent.name, run_dir.name, method="badam", lr=lr,
                            seed=config["seed"], test={"copa": score, "rte": score})
        return [f"evaluator superglue: {len(dirs)} run(s)"]

    monkeypatch.setattr(run_all, "run_evaluators", fake_evaluators)
    out = tmp_path / "out"
    assert run_all.main(["--profile", _profile(tmp_path), "--output-dir", str(out), "--no-plots",
                         "--no-progress"]) == 0
    assert calls == [["sg-badam-lr0.0001-s0", "sg-badam-lr1e-05-s0"], ["sg-badam-s1"]]
    follow_up = out / "paper_superglue_sg_sweptlr"
    assert yaml.safe_load((follow_up / "sg-badam-s1" / "config.yaml").read_text())["method"]["lr"] == 1e-4
    record = json.loads((follow_up / LR_SELECTION_FILE).read_text())["badam"]
    assert record["chosen_lr"] == 1e-4 and record["at_edge_of_grid"] and record["from_group"] == SWEEP
    assert "paper_superglue_sg_sweptlr  sg-badam-s1" in capsys.readouterr().out   # one row, handed over


def test_without_the_sweeps_evaluator_the_group_is_left_unfinished(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_all.main(["--profile", _profile(tmp_path), "--output-dir", str(out), "--no-plots", "--no-eval",
                         "--no-progress"]) == 3     # unfinished: rerun when the sweep has its scores
    printed = capsys.readouterr().out
    assert "not started" in printed and suite.DEFERRED_NOTE in printed
    assert not (out / "paper_superglue_sg_sweptlr").exists()
    # run alone (the sweep not in the plan) it chooses from what the sweep holds: nothing yet, so it is skipped
    assert run_all.main(["--profile", _profile(tmp_path), "--output-dir", str(out), "--no-plots", "--no-eval",
                         "--no-progress", "--groups", "paper_superglue_sg_sweptlr"]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and f"SuperGLUE sweep {SWEEP} has not finished for badam: sg-badam-lr0.0001-s0 " \
        "lacks copa" in printed


def test_a_packed_sweep_chooses_the_same_lr(tmp_path):
    """Committed sweeps hold metrics.jsonl.gz (experiments.results_pack): the choice, read from summary.json and
    eval/superglue.json, is the same before and after packing, for training runs and SuperGLUE run directories."""
    from experiments.results_pack import pack_tree
    from tests.plots.synthetic import write_run

    for lr, loss in {1e-5: 1.3, 1e-4: 1.1, 3e-4: 1.2}.items():
        write_run(tmp_path, "lr_sweep_tiny", f"tiny-adam-lr{lr:g}", method="adam", lr=lr, final_eval_loss=loss)
    _sweep(tmp_path, "badam", {1e-5: ({"rte": 60.0}, {"rte": 60.0}), 3e-5: ({"rte": 70.0}, {"rte": 50.0})})
    before = select_lr(tmp_path, "lr_sweep_tiny", "adam"), select_lr(tmp_path, SWEEP, "badam")
    assert len(pack_tree(tmp_path).packed) == 3
    assert not list(tmp_path.rglob("metrics.jsonl")) and len(list(tmp_path.rglob("metrics.jsonl.gz"))) == 3
    assert (select_lr(tmp_path, "lr_sweep_tiny", "adam"), select_lr(tmp_path, SWEEP, "badam")) == before
    assert before[0]["chosen_lr"] == 1e-4 and before[1]["chosen_lr"] == 3e-5
