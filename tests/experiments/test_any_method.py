"""Any method, one file: a throwaway method added to a temporary copy of the registry is run by `run_all --methods`
in every group of the default profile, with what its class declares, and shows up in the results the tables and the
report read; a method declaring a missing requirement is skipped with the install command; what a method cannot do
is adapted from its class, not from the profile."""
from __future__ import annotations

import pytest

import baselines.registry as registry
from experiments import run_all
from experiments.results import read_summary
from plots import select
from plots.report import collect
from plots.runs import discover_runs
from tests.experiments.test_default_profile import REDUCED, _sets

THROWAWAY = '''
from baselines.sgd import SGD


class Throwaway(SGD):
    name = "throwaway"
    description = "SGD under another name, added by a test to a temporary copy of the registry"
    requirements = ("pytest>=1",)
'''


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "throwaway_method.py").write_text(THROWAWAY)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(registry, "METHODS", {**registry.METHODS, "throwaway": "throwaway_method:Throwaway"})
    return "throwaway"


def test_a_new_method_is_run_by_methods_and_reaches_the_results(tmp_path, throwaway, capsys):
    out_dir = tmp_path / "runs"
    code = run_all.main(["--methods", f"adam,{throwaway}", "--groups", "paper_mtbench_smollm2", "--seeds", "0",
                         "--output-dir", str(out_dir), "--no-eval", "--no-progress", *_sets(REDUCED)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"not in the profile, run in every group with the group's settings (once where groups share them): " \
           f"{throwaway}" in out
    run_dir = out_dir / "paper_mtbench_smollm2" / f"smollm2_alpaca-{throwaway}-s0"
    summary = read_summary(run_dir)
    assert summary["status"] == "ok" and summary["method"] == throwaway and summary["final_eval_loss"] is not None
    assert summary["method_info"]["description"].startswith("SGD under another name")
    # what the tables and figures read (plots.runs) and the report's rows hold the new method
    runs = discover_runs(out_dir)
    assert {r.method for r in runs} == {"adam", throwaway}
    results = collect(runs)[summary["model"]]
    assert results[throwaway].eval_loss is not None and results[throwaway].eval_curves()
    assert f"| {throwaway} |" in (out_dir / "report.md").read_text()
    # the figures' data (F2's loss curves draw every method of the group) and the tables (a row of its own)
    assert throwaway in {group.method for group in select.f2(runs).loss_groups}
    assert f"| {throwaway} |" in (out_dir / "tables_figures" / "tables" / "T5_mtbench.md").read_text()


def test_methods_runs_a_listed_method_where_listed_and_an_added_one_once_per_settings_with_its_lr_said(
        tmp_path, throwaway, capsys):
    """--methods badam,<new>: badam only in the groups that list it (it ran in the cpu profile's BSGD ablation too,
    and report.md counted that copy as a second seed); the new method once per distinct settings (the cpu profile's
    two groups share theirs), every seed of a group split over entries; a group whose own settings are not for it (a
    BAdam ablation's method.switch_mode) skipped with the reason, not the whole plan refused; and the plan says which
    lr it gets (the profile sets lrs per method) and that a sweep has no grid for it."""
    planned = run_all.plan_runs(run_all.load_profile("cpu"), output_root=tmp_path, only_methods=["badam", throwaway])
    runs = sorted((p.group, p.cfg.run_name) for p in planned)
    assert runs == [("paper_mtbench_smollm2", f"smollm2_alpaca-{m}-s{s}") for m in ("badam", throwaway) for s in (0, 1)]
    quality = run_all.plan_runs(run_all.load_profile("quality-gpu"), output_root=tmp_path, only_methods=[throwaway],
                                only_groups=["*_gemma3_270m"])
    trained = [p for p in quality if p.cfg is not None]
    assert sorted(p.cfg.run_name for p in trained if p.group == "paper_mtbench_gemma3_270m") == \
        [f"gemma3_270m_alpaca-{throwaway}-s{s}" for s in (0, 1, 2)]
    assert not any(p.group == "ablation_bsgd_gemma3_270m" for p in trained)  # the same settings as paper_mtbench
    (order,) = [p for p in quality if p.group == "ablation_order_gemma3_270m"]
    assert order.cfg is None and "settings are not for throwaway: unknown key(s) method.switch_mode" in \
        order.skip_reason
    assert run_all.main(["--profile", "quality-gpu", "--methods", throwaway, "--groups", "*_gemma3_270m",
                         "--output-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{throwaway}: lr 3e-05 (the config's default: the profile sets no lr for {throwaway}; " \
           f"--set method.{throwaway}.lr=X sets one); lr_sweep_gemma3_270m: an lr sweep with no lrs for " in out
    assert run_all.main(["--methods", throwaway, "--set", f"method.{throwaway}.lr=0.03", "--output-dir", str(tmp_path),
                         "--dry-run"]) == 0
    assert f"  {throwaway}: lr 0.03\n" in capsys.readouterr().out


def test_the_smoke_profile_runs_a_newly_registered_method_without_an_edit(tmp_path, throwaway):
    """README: one file and one registry line; cpu-smoke ("every registered method") listed its methods by name, so a
    new one was left out of it (and tests/experiments/test_default_profile.py failed until the profile was edited)."""
    planned = run_all.plan_runs(run_all.load_profile("cpu-smoke"), output_root=tmp_path)
    assert throwaway in {p.method for p in planned if p.cfg is not None}


def test_a_missing_requirement_skips_the_method_with_the_install_command(tmp_path, throwaway, monkeypatch):
    cls = registry.get_method_class(throwaway)
    monkeypatch.setattr(cls, "requirements", ("no-such-package-xyz>=1.0",))
    planned = run_all.plan_runs(run_all.load_profile("cpu"), output_root=tmp_path, only_methods=[throwaway],
                                only_groups=["paper_mtbench_smollm2"], only_seeds=[0],
                                extra_overrides=tuple(REDUCED))
    (outcome,) = run_all.run_planned(planned, progress=False)
    assert outcome.status == "skipped"
    assert "no-such-package-xyz>=1.0, which is not installed here" in outcome.note
    assert "pip install 'no-such-package-xyz>=1.0'" in outcome.note
    assert read_summary(outcome.run_dir)["error_kind"] == "unsupported"


def test_fused_and_unclippable_methods_are_adapted_from_their_class(tmp_path, capsys):
    profile = run_all.load_profile("cpu-smoke")
    planned = {p.method: p for p in run_all.plan_runs(profile, output_root=tmp_path) if p.cfg}
    base = planned["adam"].cfg.train
    assert (base.batch_size, base.grad_accum, base.max_grad_norm) == (2, 2, 1.0)
    for method in ("lomo", "galore_layerwise"):
        train = planned[method].cfg.train
        assert (train.batch_size, train.grad_accum) == (4, 1), "same effective batch, no accumulation"
        assert "one batch of 4" in " ".join(planned[method].adaptations)
    assert planned["lomo"].cfg.train.max_grad_norm == 1.0           # LOMO clips (a second backward pass)
    assert planned["galore_layerwise"].cfg.train.max_grad_norm is None
    assert run_all.main(["--profile", "cpu-smoke", "--dry-run", "--output-dir", str(tmp_path)]) == 0
    assert "galore_layerwise, adapted to what the method can do" in capsys.readouterr().out
