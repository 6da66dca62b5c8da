"""Runs that ended oom / diverged, and an eval loss that came out non-finite, are recorded results: report.md (run_all's
one page) and the tables show them instead of leaving the method out in silence."""
from __future__ import annotations

from plots.report import write_report
from tests.plots.synthetic import edit_summary, write_run

GROUP = "paper_mtbench_tiny"


def test_oom_diverged_and_an_infinite_eval_loss_are_shown_not_dropped(tmp_path):
    root = tmp_path / "results"
    write_run(root, GROUP, "t-adam", method="adam", lr=1e-4, final_eval_loss=1.5)
    write_run(root, GROUP, "t-badam", method="badam", lr=1e-4, final_eval_loss=1.6)
    lora = write_run(root, GROUP, "t-lora", method="lora", lr=1e-3, final_eval_loss=1.7)
    edit_summary(lora, {"final_eval_loss": None, "nonfinite": {"final_eval_loss": "inf"}})  # fp16 eval overflow
    galore = write_run(root, GROUP, "t-galore", method="galore", lr=1e-4, status="oom", steps=3)
    edit_summary(galore, {"error_kind": "oom", "memory": {"held_at_oom_bytes": 3 * 2**30}})
    sgd = write_run(root, GROUP, "t-sgd", method="sgd", lr=1.0, status="diverged", steps=2)
    edit_summary(sgd, {"diverged_at_step": 2, "diverged_values": {"loss": "nan"}})
    # a method of the user's own (not in the registry) on another model, whose only run diverged
    own = write_run(root, "paper_mtbench_other", "o-mine", method="my_method", lr=1.0, status="diverged",
                    steps=4, model="other-model")
    edit_summary(own, {"diverged_at_step": 4, "diverged_values": {"grad_norm": "inf"}})

    path, _ = write_report(root)
    text = path.read_text()
    # before: lora's run was dropped from the page (only float eval losses counted), galore and sgd were not named
    assert "| lora | 0.001 | inf |" in text
    assert "- galore (`paper_mtbench_tiny/t-galore`): out of memory at step 3 (3,072 MiB held)" in text
    assert "- sgd (`paper_mtbench_tiny/t-sgd`): diverged at step 2 (non-finite loss nan)" in text
    assert "## other-model" in text
    assert "- my_method (`paper_mtbench_other/o-mine`): diverged at step 4 (non-finite grad_norm inf)" in text
    assert "no eval loss of the second method (non-finite: lora inf)" in text
    # T5's row for the other scale said "not measured" for the infinite loss
    t5 = (root / "tables_figures" / "tables" / "T5_mtbench.md").read_text()
    row = next(line for line in t5.splitlines() if line.startswith("| lora | 0.001 |"))
    assert "| inf |" in row and "not measured" not in row
    assert next(line for line in t5.splitlines() if line.startswith("| galore |")).count("OOM") >= 1
