"""Seeds, any method, stable colours, the learning-rate table and the claim lines, on SYNTHETIC run directories
written by the tests themselves (tests/plots/synthetic.py), plus `python -m plots` on the repository's results/."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from plots import claims, figures, mapping, select, style, tables_lr
from plots.__main__ import main
from plots.paper import load_paper_values
from plots.runs import discover_runs
from plots.seeds import MeanStd, by_seed, mean_curve, summarize
from tests.plots import synthetic

REPO = Path(__file__).resolve().parents[2]


def _rows(out: Path, key: str) -> list[dict]:
    (path,) = (out / "tables").glob(f"{key}_*.csv")
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return synthetic.quality_tree(tmp_path_factory.mktemp("quality") / "results")


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quality_out")
    assert main(["--results", str(tree), "--out", str(out), "--dpi", "20"]) == 0
    return out


def test_packed_metrics_give_the_same_curves_and_tables(tree, built, tmp_path):
    """Committed results hold metrics.jsonl.gz (experiments.results_pack): every curve and table is the same, and a
    torn line inside a packed file is named with the packed file."""
    from experiments.results_pack import pack_tree

    res, out = tmp_path / "results", tmp_path / "out"
    shutil.copytree(tree, res)
    assert len(pack_tree(res).packed) == len(list(tree.rglob("metrics.jsonl"))) > 10
    before = {run.name: run.curve() for run in discover_runs(tree)}
    after = {run.name: run.curve() for run in discover_runs(res)}
    assert before.keys() == after.keys()
    for name, curve in before.items():
        pd.testing.assert_frame_equal(curve, after[name])
    assert main(["--results", str(res), "--out", str(out), "--dpi", "20"]) == 0
    tables = sorted(p.relative_to(built) for p in (built / "tables").iterdir())
    assert tables == sorted(p.relative_to(out) for p in (out / "tables").iterdir())
    assert all((built / p).read_bytes() == (out / p).read_bytes() for p in tables)
    import gzip
    packed = res / "ablation_bsgd_tiny" / "tiny-sgd" / "metrics.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"step": 1, "lo\n' + gzip.decompress(packed.read_bytes())))
    (run,) = [r for r in discover_runs(res) if r.name == "tiny-sgd"]
    assert run.metrics.empty
    assert any("metrics.jsonl.gz (its curves)" in p and "line 1 is not valid JSON" in p for p in run.problems)


# --- seeds -------------------------------------------------------------------------------------------------------

def test_seeds_of_one_setting_are_one_group(tree, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(tree, res)
    # a rerun of seed 0 (later date) replaces the first; a different execution-only setting stays in the group;
    # another lr is another setting
    synthetic.write_run(res, "paper_mtbench_tiny", "tiny-adam-s0-rerun", method="adam", lr=1e-4, seed=0,
                        final_eval_loss=0.98, date="2026-11-26T10:00:00+00:00")
    summary_path = res / "paper_mtbench_tiny" / "tiny-adam-s1" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["config"]["model"]["gradient_checkpointing"] = True
    summary_path.write_text(json.dumps(summary))
    synthetic.write_run(res, "paper_mtbench_tiny", "tiny-adam-lr3e-4", method="adam", lr=3e-4, seed=0)
    groups = by_seed(mapping.runs_for(discover_runs(res), "mtbench"))
    adam = sorted((g for g in groups if g.method == "adam"), key=lambda g: g.lr)
    assert [g.lr for g in adam] == [1e-4, 3e-4]
    assert adam[0].seeds == [0, 1, 2] and adam[0].runs[0].name == "tiny-adam-s0-rerun"
    loss = adam[0].stat(lambda r: r.final_eval_loss)
    assert loss.n == 3 and loss.mean == pytest.approx((0.98 + 1.01 + 0.99) / 3)
    assert loss.std == pytest.approx(pd.Series([0.98, 1.01, 0.99]).std())  # the sample standard deviation
    assert {g.method for g in groups} == {"adam", "badam", "lora", "newopt", "base"}


def test_mean_curve_and_band():
    a = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "hours": [0.1, 0.2, 0.3]})
    b = pd.DataFrame({"step": [1, 2], "loss": [5.0, 4.0], "hours": [0.3, 0.4]})
    curve = mean_curve([a, b], "loss", "hours")
    assert list(curve["step"]) == [1, 2]  # only steps every seed reached
    assert list(curve["mean"]) == [4.0, 3.0] and list(curve["lo"]) == [3.0, 2.0] and list(curve["hi"]) == [5.0, 4.0]
    assert list(curve["hours"]) == pytest.approx([0.2, 0.3]) and set(curve["n"]) == {2}
    assert summarize([1.0, float("nan"), "oom"]) == MeanStd(1.0, None, 1)
    assert MeanStd(0.98977, 0.0034, 3).text() == "0.9898 ± 0.0034 (n=3)"


def test_tables_show_mean_std_over_seeds_and_rows_for_every_method(built):
    t5 = {r["method"]: r for r in _rows(built, "T5") if "tiny-synthetic-lm" in r["section"]}
    assert list(t5) == ["base", "adam", "badam", "lora", "newopt"]  # a method the paper never ran has its row
    adam = t5["adam"]
    assert adam["seeds"] == "0, 1, 2"
    assert float(adam["final eval loss"]) == pytest.approx(1.0)
    assert float(adam["final eval loss std"]) == pytest.approx(0.01) and adam["final eval loss n"] == "3"
    assert float(adam["MT-bench (local-judge)"]) == 6.0  # judged for seed 0 only: one value
    assert t5["newopt"]["MT-bench (local-judge)"] == "not judged"
    assert float(t5["base"]["MT-bench (local-judge)"]) == 3.0
    markdown = next((built / "tables").glob("T5_*.md")).read_text()
    assert "| adam | 0.0001 | 0, 1, 2 | 1 | 1.000 ± 0.010 (n=3) | 6.00 |" in markdown
    t6 = {r["method"]: r for r in _rows(built, "T6") if "tiny-math-lm" in r["section"]}
    assert float(t6["badam"]["GSM8K"]) == 32.0 and float(t6["badam"]["GSM8K std"]) == pytest.approx(2 ** 0.5)
    assert t6["badam"]["Aqua"] == "no run" and t6["base"]["seeds"] == "0"
    t11 = {r["method"]: r for r in _rows(built, "T11") if "tiny-encoder" in r["section"]}
    assert float(t11["adam"]["RTE"]) == pytest.approx(0.81) and t11["adam"]["RTE n"] == "2"
    assert t11["lora"]["WiC"] == "no run" and t11["lora"]["seeds"] == "0, 1"
    majority = t11["majority class"]  # what a model that learned nothing scores, from eval.superglue's record
    assert float(majority["RTE"]) == pytest.approx(0.53) and float(majority["BoolQ"]) == pytest.approx(0.85)
    assert majority["WiC"] == "—" and majority["seeds"] == "—"


# --- colours -----------------------------------------------------------------------------------------------------

def _line_colors(ax) -> dict[str, str]:
    return {line.get_label().split(" (")[0]: line.get_color() for line in ax.get_lines()}


def test_every_method_has_one_colour_in_every_figure(tree):
    names = style.registry_names()
    assert {"adam", "badam", "lora", "lomo", "galore", "sgd", "bsgd", "adam_mini"} <= set(names)
    colours = [style.method_color(n) for n in names]
    assert len(set(colours)) == len(colours)  # every registered method has a colour of its own
    assert style.method_color("newopt") == style.hash_color("newopt") == style.method_color("newopt")
    runs = discover_runs(tree)
    f2 = _line_colors(figures.figure_f2(runs).axes[0])
    f3 = _line_colors(figures.figure_f3(load_paper_values(), runs).axes[0])
    assert set(f2) == {"Adam", "BAdam", "LoRA", "newopt"} and set(f3) == {"Adam", "BAdam", "SGD", "BSGD", "newopt"}
    for label in set(f2) & set(f3):
        assert f2[label] == f3[label]
    assert f3["newopt"] == style.hash_color("newopt") and f2["BAdam"] == style.PINNED_COLORS["badam"]


# --- F2-F4 selection ---------------------------------------------------------------------------------------------

def test_rank_json_is_found_in_the_main_group_and_ablations_borrow_from_it(tree):
    runs = discover_runs(tree)
    data = select.f2(runs)
    assert set(data.rank_groups) == {"adam", "badam", "lora"}  # no paper_rank_* group: read from paper_mtbench_*
    lora = claims.rank_by_type(data.rank_groups["lora"].first)  # a rank.json without 'changed': counted the same way
    assert lora["q"] == {"count": 4, "changed": 4, "mean_effective_rank": 8.0}
    badam = claims.rank_by_type(data.rank_groups["badam"].first)
    assert badam["up"]["changed"] == 2 and badam["up"]["mean_effective_rank"] == 45.0
    _, _, f3 = select.f3(runs)
    assert set(f3) == {"adam", "badam", "sgd", "bsgd", "newopt"}
    assert f3["adam"].first.group == "paper_mtbench_tiny" and f3["adam"].seeds == [0]
    _, orders, _, ks = select.f4(runs)
    assert [v.value for v in orders] == ["random", "ascending", "descending"]
    assert [v.value for v in ks] == [10, 20, 50] and "seed 0 of paper_mtbench_tiny" in ks[1].label


def test_rank_json_of_any_group_when_the_paper_groups_have_none(tmp_path):
    run = synthetic.write_run(tmp_path, "cpu_alpaca", "smollm2-badam", method="badam", lr=1e-4)
    synthetic.write_rank(run, dict.fromkeys(synthetic.MATRICES, 12), changed_layers={3})
    data = select.f2(discover_runs(tmp_path))
    assert list(data.rank_groups) == ["badam"] and not data.loss_groups
    cvar_ax = figures.figure_f2(discover_runs(tmp_path)).axes[3]
    assert [line.get_label() for line in cvar_ax.get_lines()][0] == "BAdam: layer 3, effective rank 12 of 64"


# --- learning rates ----------------------------------------------------------------------------------------------

def test_learning_rate_table(built):
    rows = _rows(built, "LR")
    by = {(r["method"], r["lr"]): r for r in rows}
    assert by[("adam", "0.0001")]["chosen"] == "chosen" and by[("adam", "0.0001")]["at edge of grid"] == "no"
    assert by[("adam", "0.001")]["final eval loss"] == "diverged"
    assert by[("adam", "0.0001")]["used by"] == "paper_mtbench_tiny: 0.0001"
    badam = by[("badam", "0.0001")]
    assert badam["chosen"] == "chosen" and badam["at edge of grid"] == "yes: highest lr of the grid"
    assert badam["used by"] == "paper_mtbench_tiny: 3e-05 (the sweep now picks 0.0001)"
    assert by[("lomo", "0.003")]["at edge of grid"] == "only one lr in the sweep"
    assert by[("newopt", "0.0003")]["chosen"] == "chosen"  # a method the suite does not know gets its rows
    assert sum(r["chosen"] == "chosen" for r in rows) == 4
    markdown = next((built / "tables").glob("LR_*.md")).read_text()
    assert "edge of its grid for 2 of 3 methods with two or more lrs (badam highest, newopt highest)" in markdown


def test_a_bad_lr_selection_file_is_named(tree, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(tree, res)
    (res / "paper_mtbench_tiny" / "lr_selection.json").write_text('{"adam": 3}')
    problems: list[str] = []
    table = tables_lr.build_lr(discover_runs(res), res, problems)
    assert problems == [f"{res / 'paper_mtbench_tiny' / 'lr_selection.json'} left out: the file is not a "
                        "learning-rate choice (expected {method: {from_group, chosen_lr, candidates}})"]
    frame = table.sections[0].frame
    assert set(frame.loc[frame["chosen"] == "chosen", "used by"]) == {"no run yet"}


# --- claims ------------------------------------------------------------------------------------------------------

def test_claim_lines_follow_the_data(tree, tmp_path, built):
    runs = discover_runs(tree)
    f2 = claims.f2(runs)
    assert "BAdam within 2% of Adam (final eval loss): holds" in f2
    assert "BAdam below LoRA (final eval loss): holds" in f2
    assert "BAdam's effective rank ≥ 0.8 × Adam's in 5 of 5 matrix types" in f2
    assert "best first: newopt 0.9, Adam 1, BAdam 1.01, LoRA 1.1" in f2
    assert "BSGD faster than SGD (sum of step times): holds (0.50×)" in claims.f3(runs)
    assert "robust to K (final eval losses within 2%): does not hold (spread 0.03 over 3 variants" in claims.f4(runs)
    assert "BAdam at or above LoRA (MT-bench): holds (6.1 vs 5.5)" in claims.t5(runs)
    assert "BAdam within 2 points of Adam (math): holds (24 vs 23.25, +0.75)" in claims.t6(runs)
    assert "BAdam at or above LoRA (SuperGLUE): holds (82.5 vs 73.5)" in claims.t11(runs)
    assert claims.t11(runs).endswith("no method beats the majority class by more than 2 points (mean over seeds) on: "
                                     "BoolQ.")  # RTE's best (81) is far above its 53
    # other numbers, other verdicts: nothing is typed in
    worse = synthetic.quality_tree(tmp_path / "worse", losses={"badam": (1.20, 1.22, 1.18)}, badam_rank=30)
    f2 = claims.f2(discover_runs(worse))
    assert "BAdam within 2% of Adam (final eval loss): does not hold (1.200 ± 0.020 vs 1.000 ± 0.010, +20.0%" in f2
    assert "BAdam below LoRA (final eval loss): does not hold" in f2
    assert "≥ 0.8 × Adam's in 0 of 5 matrix types" in f2
    # the lines are in the tables, under the figures and in the index
    assert "**The paper's claims at this scale:** Other scale: tiny-synthetic-lm: judge local-judge" in \
        next((built / "tables").glob("T5_*.md")).read_text()
    index = (built / "index.md").read_text()
    assert "- **F2**: Other scale: tiny-synthetic-lm: BAdam within 2% of Adam" in index


def test_no_run_where_nothing_exists(tree, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(tree / "lr_sweep_tiny", res / "lr_sweep_tiny")  # only a sweep, as after the first GPU session
    runs = discover_runs(res)
    for line in (claims.f2(runs), claims.f3(runs), claims.f4(runs), claims.t5(runs), claims.t6(runs),
                 claims.t11(runs)):
        assert line.startswith("No run of") and "not checked" in line
    doc = load_paper_values()
    for fig in (figures.figure_f2(runs), figures.figure_f3(doc, runs), figures.figure_f4(runs)):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts and all(t.startswith("no ") for t in texts)
    from plots.tables_quality import build_t5
    t5 = build_t5(doc, runs)
    assert [s.heading for s in t5.sections] == ["Paper scale: Llama 2-7B", "Paper scale: Llama 3-8B"]
    cells = pd.concat([s.frame for s in t5.sections])
    assert set(cells["epoch 1"].dropna()) == {"no run"} and set(cells["base model"].dropna()) == {"no run"}


# --- the repository's own results ----------------------------------------------------------------------------------

def test_repository_results_still_build(tmp_path):
    out = tmp_path / "out"
    assert main(["--results", str(REPO / "results"), "--out", str(out), "--dpi", "20"]) == 0
    rows = _rows(out, "LR")
    sweeps = sorted((REPO / "results").glob("lr_sweep_*/*/summary.json"))
    if not sweeps:
        assert rows[0]["sweep"] == "no run"
        return
    expected: dict[tuple, tuple[float, float]] = {}  # (sweep, method) -> (lowest final eval loss, its lr)
    for path in sweeps:
        summary = json.loads(path.read_text())
        loss, key = summary.get("final_eval_loss"), (path.parent.parent.name, summary["method"])
        if summary["status"] == "ok" and loss is not None:
            lr = summary["config"]["method"]["lr"]
            expected[key] = min(expected.get(key, (loss, lr)), (loss, lr))
    # a SuperGLUE sweep (run directories scored by eval/superglue.json, no summary.json of their own): the highest
    # mean validation score over the tasks, ties to the smaller lr
    for path in sorted((REPO / "results").glob("lr_sweep_*/*/eval/superglue.json")):
        if (path.parent.parent / "summary.json").is_file():
            continue
        doc = json.loads(path.read_text())
        scores = [t["validation"]["score"] for t in doc["tasks"].values() if t.get("status") == "ok"]
        key, lr = (path.parent.parent.parent.name, doc["method"]), doc["settings"]["method"]["lr"]
        if scores and len(scores) == len(doc["tasks"]):
            expected[key] = min(expected.get(key, (-sum(scores) / len(scores), lr)), (-sum(scores) / len(scores), lr))
    chosen = {(r["sweep"], r["method"]): float(r["lr"]) for r in rows if r["chosen"] == "chosen"}
    assert chosen == pytest.approx({key: lr for key, (_loss, lr) in expected.items()})


def test_runs_that_shared_a_gpu_give_losses_but_no_times(tree, tmp_path):
    """Runs a suite packed onto one device (environment.shared_device_runs > 1) time-sliced it: their step times are
    left out of the curves against time and of the 'faster' claims; their losses still count."""
    shared = tmp_path / "shared"
    shutil.copytree(tree, shared)
    for path in shared.glob("ablation_bsgd_*/*/summary.json"):
        summary = json.loads(path.read_text())
        summary["environment"]["shared_device_runs"] = 4
        path.write_text(json.dumps(summary))
    runs = discover_runs(shared)
    line = claims.f3(runs)
    assert "BSGD faster than SGD: not checked (up to 4 runs shared a GPU" in line
    assert "BAdam faster than Adam (sum of step times): holds" in line   # borrowed from the main group: not shared
    assert "BSGD within 2% of SGD" in line
    sgd = next(r for r in runs if r.group.startswith("ablation_bsgd") and r.method == "sgd")
    assert sgd.curve()["hours"].isna().all() and not sgd.curve()["loss"].isna().any()


def test_suite_children_record_how_many_runs_share_a_device():
    from experiments.suite import child_env

    assert child_env("0", jobs=10, devices=2)["BADAM_SHARED_DEVICE_RUNS"] == "5"
    assert child_env("1", jobs=3, devices=2)["BADAM_SHARED_DEVICE_RUNS"] == "2"
    assert child_env(None, jobs=1)["BADAM_SHARED_DEVICE_RUNS"] == "1"
