"""The default profile teaches: it plans the paper's five methods and the BSGD ablation with two seeds on identical
batches, its groups feed the tables and figures, every registered method runs in some CPU profile, and a reduced run
of it (a tiny pretrained model, stories260K, instead of SmolLM2) fills every section of report.md."""
from __future__ import annotations

from collections import defaultdict

import pytest

from baselines.registry import get_method_class, method_names
from experiments import run_all
from experiments.paths import shared_dir
from plots import mapping

PAPER_AND_ABLATION = {"adam", "badam", "lora", "lomo", "galore", "sgd", "bsgd"}
STORIES = shared_dir() / "models" / "stories260K" / "stories260K.bin"
REDUCED = [f"model.source=llama2c:{STORIES}", "data.max_length=48", "data.max_samples=8", "data.eval_samples=4",
           "train.max_steps=3", "train.eval_every=1", "train.eval_batch_size=4"]


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def test_default_profile_plans_the_papers_methods_with_seeds_on_the_same_data(tmp_path):
    planned = [p for p in run_all.plan_runs(run_all.load_profile("cpu"), output_root=tmp_path) if p.cfg]
    assert {p.method for p in planned} == PAPER_AND_ABLATION
    seeds = defaultdict(set)
    for p in planned:
        seeds[p.method].add(p.cfg.seed)
    assert all(len(s) >= 2 for s in seeds.values()), seeds
    # one budget, one held-out set, one data stream per seed: only the method differs
    assert len({(p.cfg.train.max_steps, p.cfg.train.batch_size, p.cfg.data.max_length, p.cfg.data.source,
                 p.cfg.data.split_seed, p.cfg.data.eval_samples, p.cfg.train.eval_every) for p in planned}) == 1
    assert planned[0].cfg.train.eval_every > 0 and planned[0].cfg.data.split_seed is not None
    # the rank analysis reads the trained weights of adam, badam and lora
    saved = {p.method for p in planned if p.cfg.output.save_model}
    rank = next(e for e in run_all.load_profile("cpu")["evaluators"] if e["name"] == "rank")
    assert set(rank["methods"]) == {"adam", "badam", "lora"} <= saved
    # every group feeds at least one table or figure of plots/
    for group in {p.group for p in planned}:
        purposes = [k for k, prefix in mapping.GROUP_PREFIXES.items() if group.startswith(prefix)]
        assert purposes, f"group {group} feeds no table or figure (plots/mapping.py GROUP_PREFIXES)"
    assert run_all.load_profile("cpu")["time_budget_s"] <= 600


def test_every_registered_method_runs_in_a_cpu_profile(tmp_path):
    covered, skipped = set(), {}
    for name in ("cpu", "cpu-smoke"):
        for p in run_all.plan_runs(run_all.load_profile(name), output_root=tmp_path / name):
            if p.cfg is not None:
                covered.add(p.method)
            else:
                skipped[p.method] = p.skip_reason
    assert covered | set(skipped) == set(method_names())
    # only CUDA-only methods are skipped on a CPU, with the reason their own class declares
    for method, reason in skipped.items():
        assert get_method_class(method).cuda_only and reason == f"CUDA only: {get_method_class(method).cuda_only}"


@pytest.mark.slow
def test_reduced_default_run_fills_every_section_of_the_report(tmp_path, capsys, recwarn):
    code = run_all.main(["--output-dir", str(tmp_path), "--no-progress", *_sets(REDUCED)])
    out = capsys.readouterr().out
    assert code == 0, out
    # the student's default run prints no warning (Python shows these kinds by default): BlockOptimizer's fp32
    # memory reminder and peft's use of a deprecated transformers alias read like failures there
    shown = [f"{w.category.__name__}: {w.message}" for w in recwarn if issubclass(w.category, (UserWarning,
                                                                                               FutureWarning))]
    assert not shown, shown
    assert "note: evaluator rank: 6 run(s)" in out and "report: " in out  # seed 1 keeps no model: skipped, named
    assert "weights not saved (output.save_model=false), not analysed: smollm2_alpaca-adam-s1" in out
    report = (tmp_path / "report.md").read_text()
    rows: dict[str, str] = {}  # the method table comes first (the memory split table repeats the names)
    for line in report.splitlines():
        if line.startswith("| ") and line.split("|")[1].strip() in PAPER_AND_ABLATION:
            rows.setdefault(line.split("|")[1].strip(), line)
    assert set(rows) == PAPER_AND_ABLATION
    for method, line in rows.items():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert "(2 seeds)" in cells[2] and " MiB" in cells[4], line       # eval loss over 2 seeds, peak memory
        assert all(c != "-" for c in cells[5].split(" / ")[:3]), line     # step, forward, backward times
        if method in ("adam", "badam", "lora"):
            assert "changed" in cells[6], line                            # effective rank of the update
    claims = [line for line in report.splitlines() if line.startswith("| ") and "**" in line]
    assert len(claims) >= 9 and not any("**not measured**" in line for line in claims), claims
    for picture in ("report_figures/eval_loss_", "report_figures/memory_split_", "figures/F2_", "figures/F3_"):
        assert picture in report
    assert "(random-init" not in report and "Left out" not in report
    assert (tmp_path / "paper_mtbench_smollm2" / "smollm2_alpaca-badam-s0" / "eval" / "rank.json").is_file()
