"""Readers of a results tree that run_all's lr handling changed (experiments/lr_extension.py): a stale run moved to
<group>/superseded/ is read as a run by nobody (plots, restore_runs), the record of lrs tried past the edge of a
grid travels with the restored sweep, and the LR table says which candidates came from an extension. Synthetic
results in tmp_path (tests/plots/synthetic.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from experiments.lr_selection import EXTENSIONS_FILE, record_extension, record_lr_selection, select_lr
from plots.runs import discover_runs
from plots.tables_lr import build_lr
from tests.plots.synthetic import write_run, write_superglue

REPO = Path(__file__).resolve().parents[2]
SWEEP, MAIN = "lr_sweep_tiny", "paper_mtbench_tiny"


def tree(root: Path) -> Path:
    """adam's sweep on [1e-4, 1e-3] extended once below (1e-5 won, inside now); its follow-up re-trained at 1e-5
    with the 1e-4 run moved aside; badam's sweep without extension, chosen at its top edge."""
    for lr, loss in ((1e-5, 1.2), (1e-4, 1.5), (1e-3, 2.0)):
        write_run(root, SWEEP, f"t-adam-lr{lr:g}", method="adam", lr=lr, final_eval_loss=loss)
    record_extension(root / SWEEP, "adam", {"lr": 1e-5, "edge": "lowest", "beyond": 1e-4})
    write_run(root, SWEEP, "t-adam-lr1e-06", method="adam", lr=1e-6, final_eval_loss=1.9)
    record_extension(root / SWEEP, "adam", {"lr": 1e-6, "edge": "lowest", "beyond": 1e-5})
    for lr, loss in ((1e-4, 1.6), (1e-3, 1.4)):
        write_run(root, SWEEP, f"t-badam-lr{lr:g}", method="badam", lr=lr, final_eval_loss=loss)
    for seed in (0, 1):
        write_run(root, MAIN, f"t-adam-s{seed}", method="adam", lr=1e-5, seed=seed, final_eval_loss=1.1)
    write_run(root, MAIN, "superseded/t-adam-s0-lr0.0001", method="adam", lr=1e-4, seed=0, final_eval_loss=9.0)
    write_superglue(root, "follow_sg", "superseded/sg-badam-s1-lr0.0001", method="badam", lr=1e-4, seed=1,
                    test={"copa": 50.0})
    for method in ("adam", "badam"):
        record_lr_selection(root, MAIN, method, select_lr(root, SWEEP, method))
    return root


def test_superseded_runs_are_not_runs_of_their_group(tmp_path):
    runs = discover_runs(tree(tmp_path))
    assert not [r for r in runs if "superseded" in r.path.parts]
    assert sorted(r.path.name for r in runs if r.group == MAIN) == ["t-adam-s0", "t-adam-s1"]


def test_the_lr_table_marks_the_extended_candidates_and_the_edge_text_counts_them(tmp_path):
    table = build_lr(discover_runs(tree(tmp_path)), tmp_path)
    frame = table.sections[0].frame
    adam = frame[frame["method"] == "adam"].set_index("lr")
    assert list(frame.columns[:4]) == ["sweep", "method", "lr", "grid"]
    assert adam.loc["1e-06", "grid"] == "extended below" and adam.loc["0.0001", "grid"] == "grid"
    assert adam.loc["1e-05", "at edge of grid"] == "no (grid extended by 2 lrs)"
    badam = frame[frame["method"] == "badam"].set_index("lr")
    assert badam.loc["0.001", "grid"] == "grid" and badam.loc["0.001", "at edge of grid"] == \
        "yes: highest lr of the grid"
    assert "grid extended past its edge (extend_at_edge) for adam by 2 lrs" in table.claim
    assert "extension" in json.dumps(json.loads((tmp_path / MAIN / "lr_selection.json").read_text())["adam"])


def test_restore_leaves_superseded_runs_behind_and_brings_the_extension_record(tmp_path):
    spec = importlib.util.spec_from_file_location("restore_runs", REPO / "scripts" / "gpu" / "restore_runs.py")
    restore_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(restore_runs)
    results, out = tree(tmp_path / "results"), tmp_path / "out"
    profile = {"runs": [{"group": SWEEP}, {"group": MAIN}, {"group": "follow_sg"}], "evaluators": []}
    restored, _ = restore_runs.restore(profile, results, out, question_ids=set())
    assert not [r for r in restored if "superseded" in r] and f"{MAIN}/t-adam-s0" in restored
    assert not (out / MAIN / "superseded").exists() and not (out / "follow_sg").exists()
    assert json.loads((out / SWEEP / EXTENSIONS_FILE).read_text())["adam"][0]["lr"] == 1e-5
