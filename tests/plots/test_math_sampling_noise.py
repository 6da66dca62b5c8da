"""T6's claims for single-seed math runs carry the benchmarks' item-sampling noise (binomial standard error over the
items scored), on SYNTHETIC run directories (tests/plots/synthetic.py): every number is chosen here."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from plots import claims
from plots.runs import discover_runs
from plots.seeds import MeanSE, MeanStd
from tests.plots.synthetic import NOTE, write_json, write_run

GROUP = "paper_math_tiny"


def write_math(root: Path, method: str, accuracies: dict[str, tuple[float, int | None]], *, seed: int = 0) -> Path:
    """A run of `method` with eval/math.json: {dataset: (accuracy %, items scored or None for a file without it)}."""
    name = f"math-{method}" if method == "base" else f"math-{method}-s{seed}"
    run = write_run(root, GROUP, name, method=method, lr=1e-5, seed=None if method == "base" else seed,
                    model="tiny-math-lm")
    datasets = {d: {"accuracy_pct": acc, **({"total": n} if n is not None else {})}
                for d, (acc, n) in accuracies.items()}
    write_json(run / "eval" / "math.json", {"fixture_note": NOTE, "datasets": datasets})
    return run


def tree(root: Path, *, items: int | None, badam: float = 31.0) -> Path:
    for method, acc in {"base": 28.0, "adam": 30.0, "badam": badam, "lora": 25.0}.items():
        write_math(root, method, {"gsm8k": (acc, items), "math": (acc / 2, items)})
    return root


def expected_se(accuracies: list[float], items: int) -> float:
    return 100 * math.sqrt(sum(p / 100 * (1 - p / 100) / items for p in accuracies)) / len(accuracies)


def test_one_seed_carries_the_binomial_standard_error_of_its_mean(tmp_path):
    values = claims._math_values(discover_runs(tree(tmp_path, items=400)))
    badam = values["badam"]
    assert isinstance(badam, MeanSE)
    assert badam.mean == pytest.approx(23.25)                      # (31 + 15.5) / 2
    assert badam.se == pytest.approx(expected_se([31.0, 15.5], 400))
    assert badam.n == 800                                          # items scored over the two datasets


def test_a_gap_inside_the_item_sampling_noise_is_not_separable(tmp_path):
    small = claims.t6(discover_runs(tree(tmp_path / "small", items=200)))
    # badam 23.25 vs adam 22.5 (0.75 apart) and base 21.0: with 200 items per dataset 2·SE ~ 4.7 points
    assert "BAdam at or above the base model (math): not separable by the benchmarks' item sampling" in small
    assert "BAdam within 2 points of Adam (math): not separable by the benchmarks' item sampling" in small
    # badam 23.25 vs lora 18.75: 4.5 apart, still inside 2·SE at 200 items
    assert "BAdam at or above LoRA (math): not separable" in small
    large = claims.t6(discover_runs(tree(tmp_path / "large", items=20000)))
    # the same accuracies on 20,000 items each: 2·SE ~ 0.5 points, so every gap gets a verdict
    assert "BAdam at or above LoRA (math): holds" in large
    assert "BAdam at or above the base model (math): holds" in large
    assert "not separable" not in large


def test_without_item_counts_or_with_seeds_there_is_no_sampling_verdict(tmp_path):
    # an older math.json without `total`: the value is a plain mean and the claim gets a verdict as before
    values = claims._math_values(discover_runs(tree(tmp_path / "old", items=None)))
    assert isinstance(values["badam"], MeanStd) and values["badam"].std is None
    assert "not separable" not in claims.t6(discover_runs(tree(tmp_path / "old", items=None)))
    # two seeds: the spread over seeds is the noise to show, not one run's item sampling
    root = tree(tmp_path / "seeds", items=400)
    write_math(root, "badam", {"gsm8k": (33.0, 400), "math": (16.5, 400)}, seed=1)
    assert isinstance(claims._math_values(discover_runs(root))["badam"], MeanStd)
