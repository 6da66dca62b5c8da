"""report.md's method table pools the seeds of one setting of a method, never an lr sweep or an ablation's settings
(a quality-gpu results folder read 'lora 2.6110 ± 3.0290 (8 seeds)' over four lrs and two seeds)."""
from __future__ import annotations

from plots.report import write_report
from plots.report_results import collect
from plots.runs import discover_runs
from tests.plots.synthetic import write_run


def test_a_method_row_holds_the_seeds_of_one_setting_and_names_what_it_left_out(tmp_path):
    for lr, loss in ((1e-4, 1.9), (1e-3, 1.2), (1e-2, 4.0)):          # the sweep: one run per lr
        write_run(tmp_path, "lr_sweep_x", f"t-lora-lr{lr:g}", method="lora", lr=lr, final_eval_loss=loss,
                  epochs=0.25)
    for seed, loss in ((0, 1.20), (1, 1.22)):                          # the main runs: two seeds at the chosen lr
        write_run(tmp_path, "paper_mtbench_x", f"t-lora-s{seed}", method="lora", lr=1e-3, seed=seed,
                  final_eval_loss=loss)
        write_run(tmp_path, "paper_mtbench_x", f"t-badam-s{seed}", method="badam", lr=1e-4, seed=seed,
                  final_eval_loss=loss + 0.1)
    (result,) = [r for r in collect(discover_runs(tmp_path)).values()]
    lora = result["lora"]
    assert sorted(r.name for r in lora.runs) == ["t-lora-s0", "t-lora-s1"] and len(lora.other_settings) == 3
    assert lora.lrs == [1e-3] and lora.eval_loss.text() == "1.2100 ± 0.0100 (2 seeds)"
    assert not result["badam"].other_settings
    path, _ = write_report(tmp_path)
    text = path.read_text()
    assert "| lora | 0.001 | 1.2100 ± 0.0100 (2 seeds) |" in text
    assert "runs of other settings (lr sweeps, ablations) are in the tables, not pooled here: lora 3." in text
