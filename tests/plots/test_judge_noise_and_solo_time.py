"""Uncertainty of MT-bench scores (standard error over judgments) and the estimated time axis of runs that shared a
GPU (plots/timing.py), on SYNTHETIC run directories (tests/plots/synthetic.py): every number is chosen here."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from plots import claims, figures, tables_quality
from plots.paper import load_paper_values
from plots.runs import discover_runs
from plots.tables import to_csv, to_markdown
from tests.plots.synthetic import JUDGE, NOTE, edit_summary, quality_tree, write_json, write_run

MAIN = "paper_mtbench_tiny"


def write_scores(run: Path, overall: float, *, se: float | None, scored: int = 120, judged: int = 160,
                 judgment_file: str | None = None) -> None:
    """eval/mtbench/scores_<judge>.json as eval.mtbench writes it (se None: an older file without the SE)."""
    entry = {"overall": overall, "n_turn1": scored // 2, "n_turn2": scored - scored // 2,
             "n_unparseable": judged - scored}
    if se is not None:
        entry.update(overall_se=se, n_scored=scored)
    doc = {"judge": JUDGE, "models": {run.name: entry}, "fixture_note": NOTE}
    if judgment_file is not None:
        doc["judgment_file"] = judgment_file
    write_json(run / "eval" / "mtbench" / f"scores_{JUDGE}.json", doc)


def judged_tree(root: Path, *, se: float, scored: int = 150) -> Path:
    """The quality tree with one judged seed of adam, badam, lora and the base model, each with standard error `se`."""
    quality_tree(root)
    for method, score in {"adam": 6.0, "badam": 6.1, "lora": 5.5}.items():
        write_scores(root / MAIN / f"tiny-{method}-s0", score, se=se, scored=scored)
    write_scores(root / MAIN / "tiny-base", 3.0, se=se, scored=scored)
    return root


def test_a_difference_inside_the_judges_noise_is_not_separable(tmp_path):
    quiet = claims.t5(discover_runs(judged_tree(tmp_path / "quiet", se=0.1)))
    # 6.1 vs 5.5 with SE 0.1 each: 2·SE = 0.28 < 0.6, a verdict
    assert "BAdam at or above LoRA (MT-bench): holds (6.100 ± 0.100 vs 5.500 ± 0.100)" in quiet
    assert "BAdam within 0.25 points of Adam (MT-bench): not separable by this judge (difference +0.1, 2·SE 0.28" \
        in quiet
    noisy = claims.t5(discover_runs(judged_tree(tmp_path / "noisy", se=0.3)))
    # the same scores with SE 0.3: 2·SE = 0.85 > 0.6, no verdict
    assert "BAdam at or above LoRA (MT-bench): not separable by this judge (difference +0.6, 2·SE 0.85" in noisy
    assert "BAdam at or above the base model (MT-bench): holds" in noisy   # 3.1 points apart
    assert "gave no rating" not in noisy                                   # 10 of 160 unparseable: below 10%


def test_the_share_of_unparseable_judgments_is_named(tmp_path):
    line = claims.t5(discover_runs(judged_tree(tmp_path, se=0.2, scored=100)))
    assert "240 of 640 judgments (38%) gave no rating and are left out" in line


def test_t5_shows_the_standard_error_and_counts(tmp_path):
    root = judged_tree(tmp_path, se=0.27, scored=115)
    table = tables_quality.build_t5(load_paper_values(), discover_runs(root))
    markdown = to_markdown(table)
    assert "| 6.10 ± 0.27 (SE; seed 0: 115 of 160 scored) |" in markdown   # badam: three seeds, seed 0 judged
    assert "| 3.00 ± 0.27 (SE; 115 of 160 scored) |" in markdown           # base: no seeds to name
    frame = pd.read_csv(pd.io.common.StringIO(to_csv(table)))
    column = f"MT-bench ({JUDGE})"
    badam = frame[(frame["method"] == "badam") & frame["section"].str.startswith("Other")].iloc[0]
    assert float(badam[column]) == pytest.approx(6.1) and float(badam[f"{column} SE"]) == pytest.approx(0.27)
    assert int(badam[f"{column} scored"]) == 115 and int(badam[f"{column} judged"]) == 160


def test_two_judged_seeds_show_the_spread_over_seeds(tmp_path):
    root = judged_tree(tmp_path, se=0.27)
    write_scores(root / MAIN / "tiny-badam-s1", 6.5, se=0.3)
    markdown = to_markdown(tables_quality.build_t5(load_paper_values(), discover_runs(root)))
    mean, std = statistics.fmean([6.1, 6.5]), statistics.stdev([6.1, 6.5])
    assert f"| {mean:.2f} ± {std:.2f} (n=2) |" in markdown


def _judgments(path: Path, model: str, scores: list[float]) -> None:
    """FastChat single-grading records: the scores alternate turns 1 and 2 over consecutive questions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question_id": 81 + i // 2, "model": model, "judge": [JUDGE, "single-v1"],
                                        "user_prompt": "...", "judgment": "...", "score": s, "turn": 1 + i % 2,
                                        "tstamp": 0.0}) + "\n" for i, s in enumerate(scores)))


def test_an_older_scores_file_gets_its_standard_error_from_its_judgments(tmp_path):
    run = write_run(tmp_path, MAIN, "tiny-badam-s0", method="badam", lr=1e-4)
    scores = [8, 6, 7, -1, 3, 2, 9, -1]
    # the judging machine's absolute path: not here, so the file beside the scores file is read
    _judgments(run / "eval" / "mtbench" / "model_judgment" / f"{JUDGE}_single.jsonl", run.name, scores)
    write_scores(run, 5.833, se=None, judgment_file=f"/home/gpu-machine/runs/{run.name}/model_judgment/x.jsonl")
    (result,) = discover_runs(tmp_path)
    judged = result.mtbench_judged[JUDGE]
    kept = [s for s in scores if s != -1]
    assert judged.n_scored == 6 and judged.n_judged == 8 and judged.overall == 5.833
    assert judged.se == pytest.approx(statistics.stdev(kept) / math.sqrt(len(kept)))
    assert not result.problems


def test_a_named_judgment_file_that_is_nowhere_is_reported(tmp_path):
    run = write_run(tmp_path, MAIN, "tiny-badam-s0", method="badam", lr=1e-4)
    write_scores(run, 5.8, se=None, judgment_file="model_judgment/gone.jsonl")
    (result,) = discover_runs(tmp_path)
    assert result.mtbench_judged[JUDGE].se is None and result.mtbench_scores() == {JUDGE: 5.8}
    assert any("standard error" in p and "is not there" in p for p in result.problems)


# --- the time axis of runs that shared a GPU -------------------------------------------------------------------

def _edit_summary(run: Path, **changes) -> None:
    edit_summary(run, changes)


def shared_tree(root: Path) -> Path:
    """The quality tree, every training run packed 4 to a GPU."""
    quality_tree(root)
    for path in root.glob("*/*/metrics.jsonl"):
        _edit_summary(path.parent, **{"environment.shared_device_runs": 4})
    return root


def solo_run(root: Path, like: str, name: str, step_ms: float, *, steps: int = 12, shared: int = 1, **config):
    """A timing run of the same setting as results/<like> (another lr and seed, an unrelated group name)."""
    source = json.loads((root / like / "summary.json").read_text())
    run = write_run(root, "timing_whatever", name, method=source["method"], lr=0.5, seed=7, steps=steps,
                    options={k: v for k, v in source["config"]["method"].items() if k not in ("name", "lr")})
    _edit_summary(run, **{"timing_ms.step": step_ms, "environment.shared_device_runs": shared,
                          "environment.device_name": "Test GPU", **config})
    return run


def test_no_time_axis_without_a_matching_solo_run(tmp_path):
    root = shared_tree(tmp_path)
    solo_run(root, "ablation_bsgd_tiny/tiny-sgd", "other-batch", 100.0, **{"config.train.batch_size": 8})
    solo_run(root, "ablation_bsgd_tiny/tiny-bsgd", "too-short", 50.0, steps=5)
    solo_run(root, "ablation_bsgd_tiny/tiny-bsgd", "not-alone", 50.0, shared=2)
    runs = discover_runs(root)
    sgd = next(r for r in runs if r.group == "ablation_bsgd_tiny" and r.method == "sgd")
    assert sgd.solo_timing is None and sgd.curve()["hours"].isna().all()
    line = claims.f3(runs)
    assert "BSGD faster than SGD: not checked (up to 4 runs shared a GPU" in line
    assert "no solo timing run of BSGD and SGD" in line
    time_panel = figures.figure_f3(load_paper_values(), runs).axes[1]
    assert not time_panel.lines and any("no time" in t.get_text() for t in time_panel.texts)


def test_a_matching_solo_run_gives_an_estimated_and_labelled_time_axis(tmp_path):
    root = shared_tree(tmp_path)
    solo_run(root, "ablation_bsgd_tiny/tiny-sgd", "solo-sgd", 100.0)
    solo_run(root, "ablation_bsgd_tiny/tiny-bsgd", "solo-bsgd", 50.0)
    solo_run(root, "ablation_bsgd_tiny/tiny-bsgd", "solo-bsgd-short", 5.0, steps=5)  # under 10 steps: ignored
    runs = discover_runs(root)
    sgd = next(r for r in runs if r.group == "ablation_bsgd_tiny" and r.method == "sgd")
    curve = sgd.curve()
    assert sgd.solo_timing.step_ms == 100.0
    assert curve["hours"].tolist() == pytest.approx((curve["step"] * 100.0 / 3.6e6).tolist())
    line = claims.f3(runs)
    assert "BSGD faster than SGD (median step time of solo timing runs on Test GPU): holds (0.50×: 50.0 vs " \
           "100.0 ms)" in line
    assert "BAdam faster than Adam: not checked" in line and "no solo timing run of BAdam and Adam" in line
    time_panel = figures.figure_f3(load_paper_values(), runs).axes[1]
    assert {line.get_label() for line in time_panel.lines} == {"SGD", "BSGD"}
    label = time_panel.get_xlabel().replace("\n", " ")
    assert "estimated: steps × median step time of a solo run on Test GPU" in label


def test_a_solo_run_that_also_measured_rounding_times_the_same_step(tmp_path):
    # measure_rounding only reads the leaving block at a switch (one step in K): the quality profile's solo runs set
    # it, the ablation runs trained before it existed did not; every other option still has to match
    root = shared_tree(tmp_path)
    solo_run(root, "ablation_bsgd_tiny/tiny-sgd", "solo-sgd", 100.0)
    solo_run(root, "ablation_bsgd_tiny/tiny-bsgd", "solo-bsgd", 60.0, **{"config.method.measure_rounding": True})
    line = claims.f3(discover_runs(root))
    assert "BSGD faster than SGD (median step time of solo timing runs on Test GPU): holds (0.60×: 60.0 vs " \
           "100.0 ms)" in line
    solo_run(root, "ablation_bsgd_tiny/tiny-bsgd", "solo-bsgd-other-k", 5.0,
             **{"config.method.switch_block_every": 999, "environment.date": "2099-01-01"})
    assert "holds (0.60×: 60.0 vs 100.0 ms)" in claims.f3(discover_runs(root))   # K differs: not the same step


def test_step_times_are_compared_from_one_device_and_the_closest_session(tmp_path):
    # lent machines of one GPU kind differ in host speed: of several timings, the two methods' pair measured closest
    # in time on one device is compared, never one of today's with one of another machine's
    root = shared_tree(tmp_path)
    solo_run(root, "ablation_bsgd_tiny/tiny-sgd", "solo-sgd-old", 80.0, **{"environment.date": "2026-01-01T10:00:00"})
    solo_run(root, "ablation_bsgd_tiny/tiny-sgd", "solo-sgd-new", 120.0, **{"environment.date": "2026-03-01T10:00:00"})
    solo_run(root, "ablation_bsgd_tiny/tiny-bsgd", "solo-bsgd", 90.0, **{"environment.date": "2026-01-01T10:05:00"})
    line = claims.f3(discover_runs(root))      # the most recent SGD timing (120 ms) would have read "holds"
    assert "BSGD faster than SGD (median step time of solo timing runs on Test GPU): does not hold (1.12×: 90.0 vs " \
           "80.0 ms)" in line
    for run in (root / "timing_whatever").glob("solo-sgd-*"):
        edit_summary(run, {"environment.device_name": "Other GPU"})
    line = claims.f3(discover_runs(root))
    assert "BSGD faster than SGD: not checked" in line
    assert "solo timing runs on different devices (Test GPU, Other GPU)" in line


def _validation(results: Path, ratings: dict[str, float], unrated: int = 16) -> Path:
    """A judge_validation.json of JUDGE as eval.mtbench's validate-judge writes it (its own functions), from a
    scores summary with the chosen means (each model 160 judgments, `unrated` of them without a rating)."""
    from eval.mtbench.validation import build_validation, load_reference_scores, write_validation

    out = results / "mtbench_judge_validation" / JUDGE
    out.mkdir(parents=True)
    files = {}
    for model in ratings:
        files[model] = out / f"{model}.jsonl"
        files[model].write_text("{}\n")
    scores = {"judge": JUDGE, "models": {m: {"overall": v, "overall_se": 0.2, "n_scored": 160 - unrated,
                                             "n_unparseable": unrated} for m, v in ratings.items()}}
    write_validation(out, build_validation(scores, load_reference_scores(), answer_files=files, questions=80,
                                           turns=(1, 2)))
    return out


def test_t5_states_how_far_its_judge_agrees_with_gpt4_or_that_it_is_unvalidated(tmp_path):
    from plots.judges import load_judge_validations

    root = judged_tree(tmp_path, se=0.3)
    runs = discover_runs(root)
    unvalidated = f"judge {JUDGE} is unvalidated: its agreement with GPT-4 was never measured"
    assert unvalidated in claims.t5(runs, load_judge_validations(root))
    assert unvalidated in tables_quality.build_t5(load_paper_values(), runs, {}).caption

    _validation(root, {"gpt-4": 9.0, "gpt-3.5-turbo": 8.0, "vicuna-7b-v1.3": 5.0, "alpaca-13b": 6.0,
                       "llama-13b": 2.0})
    validations = load_judge_validations(root)
    agreement = (f"judge {JUDGE} against GPT-4 on MT-bench's 5 reference models (mtbench_judge_validation/{JUDGE}): "
                 "Kendall tau 0.80, Spearman rho 0.90, 9 of 10 pairs in GPT-4's order, same order: no; 10% of its "
                 "judgments there gave no rating")
    line = claims.t5(discover_runs(root), validations)   # the validation folder holds no run
    assert f"Other scale: tiny-synthetic-lm: {agreement};" in line and "unvalidated" not in line
    assert "not separable by this judge" in line         # the verdicts it qualifies are still there
    table = tables_quality.build_t5(load_paper_values(), runs, validations)
    assert f"How far each judge can be trusted (python -m eval.mtbench validate-judge): {agreement}." in table.caption
    assert table.claim == line


def test_a_broken_validation_file_is_named_and_t5_calls_the_judge_unvalidated(tmp_path):
    from plots.__main__ import main

    root = judged_tree(tmp_path / "results", se=0.3)
    broken = root / "mtbench_judge_validation" / JUDGE / "judge_validation.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"judge": "x"}')
    out = tmp_path / "out"
    assert main(["--results", str(root), "--out", str(out), "--dpi", "20"]) == 0
    index = (out / "index.md").read_text()
    assert f"{broken.parent} skipped: {broken} is not a judge validation" in index
    assert f"judge {JUDGE} is unvalidated" in (out / "tables" / "T5_mtbench.md").read_text()
