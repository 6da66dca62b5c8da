"""A SuperGLUE lr sweep in the tables: LR shows each candidate's mean validation score and the choice; T11 shows each
method at its own chosen lr (the sweep's seed-0 run plus the seeds that took the choice) in a section apart from the
rows at the config's lr; T11's claim line compares BAdam and Adam at their own best lrs on the sweep's tasks.
Synthetic results in tmp_path (tests/plots/synthetic.py)."""
from __future__ import annotations

import shutil

import pytest

from experiments.lr_selection import record_lr_selection, select_lr
from plots import claims
from plots.runs import discover_runs
from plots.tables_lr import VALIDATION, build_lr
from plots.tables_quality import build_t11
from plots.paper import load_paper_values
from tests.plots.synthetic import write_superglue

SWEEP, FOLLOW, PAPER = "lr_sweep_enc", "paper_superglue_enc_sweptlr", "paper_superglue_enc"
GRID = {"adam": (1e-5, 3e-5, 1e-4), "badam": (1e-5, 3e-5, 1e-4), "lora": (1e-4, 3e-4, 1e-3)}
MAJORITY = {"copa": 43.0, "rte": 53.0, "boolq": 62.0}


def sweep_tree(root, *, badam_best_test: float = 70.0, task_runs: bool = False):
    """Adam's best validation at 3e-5, BAdam's at the top of its grid (1e-4), LoRA's at 3e-4; test scores differ
    from validation so that a table reading the wrong one shows it. Seeds 1 and 2 of the chosen lrs in FOLLOW, with
    their lr_selection.json as run_all writes it; the paper-lr group beside them (six tasks' worth: BoolQ too)."""
    validation = {"adam": (60.0, 72.0, 66.0), "badam": (50.0, 55.0, 64.0), "lora": (58.0, 70.0, 61.0)}
    best = {m: max(scores) for m, scores in validation.items()}
    for method, lrs in GRID.items():
        for lr, score in zip(lrs, validation[method]):
            write_superglue(root, SWEEP, f"enc-{method}-lr{lr:g}-s0", method=method, lr=lr, seed=0,
                            validation={"copa": score, "rte": score}, test={"copa": 40.0, "rte": 40.0},
                            majority=MAJORITY, task_runs=task_runs)
    chosen_test = {"adam": 72.0, "badam": badam_best_test, "lora": 68.0}
    for method in GRID:
        selection = select_lr(root, SWEEP, method)
        record_lr_selection(root, FOLLOW, method, selection)
        run = root / SWEEP / f"enc-{method}-lr{selection['chosen_lr']:g}-s0"
        write_superglue(root, SWEEP, run.name, method=method, lr=selection["chosen_lr"], seed=0,
                        validation={"copa": best[method], "rte": best[method]}, majority=MAJORITY,
                        test={"copa": chosen_test[method], "rte": chosen_test[method]})
        for seed, shift in ((1, 1.0), (2, -1.0)):
            write_superglue(root, FOLLOW, f"enc-{method}-s{seed}", method=method, lr=selection["chosen_lr"],
                            seed=seed, test={"copa": chosen_test[method] + shift, "rte": chosen_test[method] + shift},
                            majority=MAJORITY)
        for seed in (0, 1):
            write_superglue(root, PAPER, f"enc-{method}-s{seed}", method=method, lr=GRID[method][0], seed=seed,
                            test={"copa": 60.0, "rte": 60.0, "boolq": 62.5}, majority=MAJORITY)
    return root


def test_lr_table_ranks_a_superglue_sweep_by_mean_validation_score(tmp_path):
    root = sweep_tree(tmp_path)
    frame = build_lr(discover_runs(root), root).sections[0].frame
    rows = {(r["method"], r["lr"]): r for r in frame.to_dict("records")}
    assert rows[("adam", "3e-05")][VALIDATION] == 72.0 and rows[("adam", "3e-05")]["chosen"] == "chosen"
    assert rows[("adam", "3e-05")]["validation per task"] == "COPA 72.0, RTE 72.0"
    assert rows[("badam", "0.0001")]["at edge of grid"] == "yes: highest lr of the grid"
    assert rows[("lora", "0.0003")]["used by"] == f"{FOLLOW}: 0.0003"
    assert rows[("adam", "1e-05")]["chosen"] == "—" and "final eval loss" not in frame   # a loss-free sweep


def test_lr_table_shows_one_row_per_setting_beside_the_task_runs_of_the_gpu_layout(tmp_path):
    # on a GPU each sweep run directory also holds tasks/<task>/summary.json (the harness run of each task): these
    # are parts of the setting, not candidates of their own (they once gave four rows per lr and no choice)
    root = sweep_tree(tmp_path, task_runs=True)
    runs = discover_runs(root)
    assert not any(r.path.parent.name == "tasks" for r in runs)   # the 18 task runs are parts, not runs
    assert len(list(root.glob(f"{SWEEP}/*/tasks/*/summary.json"))) == 9 * 2
    frame = build_lr(runs, root).sections[0].frame
    assert sorted(zip(frame["method"], frame["lr"])) == sorted((m, f"{lr:g}") for m, lrs in GRID.items() for lr in lrs)
    chosen = {r["method"]: r["lr"] for r in frame.to_dict("records") if r["chosen"] == "chosen"}
    assert chosen == {"adam": "3e-05", "badam": "0.0001", "lora": "0.0003"}


def test_t11_shows_each_method_at_its_own_best_lr_apart_from_the_config_lr_rows(tmp_path):
    root = sweep_tree(tmp_path)
    table = build_t11(load_paper_values(), discover_runs(root))
    fixed, tuned = [s for s in table.sections if s.heading.startswith("Other scale")]
    assert tuned.heading.endswith(f"lr of each method from {SWEEP} (highest mean validation score over COPA, RTE; "
                                  "the same grid size for every method)")
    rows = {r["method"]: r for r in tuned.frame.to_dict("records")}
    assert rows["badam"]["lr"] == "0.0001" and rows["badam"]["seeds"] == "0 (the sweep's run), 1, 2"
    assert rows["adam"]["COPA"].mean == pytest.approx(0.72) and rows["adam"]["COPA"].n == 3
    assert rows["adam"]["BoolQ"] == "no run" and rows["majority class"]["RTE"] == pytest.approx(0.53)
    assert len(tuned.frame) == 4                               # the sweep's other lrs are in LR, not here
    paper = {r["method"]: r for r in fixed.frame.to_dict("records")}
    assert paper["badam"]["lr"] == "1e-05" and paper["badam"]["seeds"] == "0, 1"
    assert paper["badam"]["COPA"].mean == pytest.approx(0.60)   # no tuned run mixed in


def test_a_seed_the_sweep_and_the_follow_up_both_hold_comes_from_the_follow_up(tmp_path):
    root = sweep_tree(tmp_path)
    write_superglue(root, FOLLOW, "enc-adam-s0", method="adam", lr=3e-5, seed=0, test={"copa": 50.0, "rte": 50.0})
    table = build_t11(load_paper_values(), discover_runs(root))
    rows = {r["method"]: r for r in table.sections[-1].frame.to_dict("records")}
    assert rows["adam"]["seeds"] == "0, 1, 2"
    assert rows["adam"]["COPA"].mean == pytest.approx((0.50 + 0.73 + 0.71) / 3)


@pytest.mark.parametrize("badam_test, verdict", [(71.0, "holds"), (60.0, "does not hold")])
def test_the_claim_compares_badam_and_adam_each_at_its_own_best_lr(tmp_path, badam_test, verdict):
    line = claims.t11(discover_runs(sweep_tree(tmp_path, badam_best_test=badam_test)))
    assert f"each method at its own best lr from {SWEEP} (highest mean validation score), mean test score (%) over " \
        f"COPA, RTE; BAdam within 2 points of Adam (SuperGLUE, own best lr): {verdict} ({badam_test:.3f} ± 1.000 vs " \
        "72.000 ± 1.000, " in line and "seed noise 2·SE 1.6" in line
    # the config's lr, apart: its runs only, over every task they all finished (BoolQ too)
    assert "BAdam within 2 points of Adam (SuperGLUE): holds (60.83 vs 60.83, +0)" in line
    assert line.endswith("on: BoolQ.")                        # 62.5 vs the majority's 62


def test_a_sweep_alone_gives_a_one_seed_comparison_and_no_config_lr_clause(tmp_path):
    root = sweep_tree(tmp_path)
    shutil.rmtree(root / FOLLOW)
    shutil.rmtree(root / PAPER)
    line = claims.t11(discover_runs(root))
    assert line.startswith(f"Other scale: tiny-encoder: each method at its own best lr from {SWEEP} (highest mean "
                           "validation score), mean test score (%) over COPA, RTE; BAdam within 2 points of Adam "
                           "(SuperGLUE, own best lr): holds (70 vs 72, -2); BAdam at or above LoRA (SuperGLUE, own "
                           "best lr): holds (70 vs 68)")   # one seed each: no seed noise to state
    assert "at the config's lr" not in line


def test_without_a_sweep_the_line_says_the_own_lr_claim_was_not_checked(tmp_path):
    root = sweep_tree(tmp_path)
    shutil.rmtree(root / SWEEP)
    shutil.rmtree(root / FOLLOW)
    line = claims.t11(discover_runs(root))
    assert "at each method's own best lr: not checked, no SuperGLUE lr sweep (lr_sweep_*) with a choice" in line
    assert [s.heading for s in build_t11(load_paper_values(), discover_runs(root)).sections][-1] == \
        "Other scale: tiny-encoder (not the paper's model, not comparable)"
