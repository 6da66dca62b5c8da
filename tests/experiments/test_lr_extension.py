"""experiments/lr_extension.py through run_all: a finished run of an lr_from group whose sweep now chooses another lr
is moved to <group>/superseded/ and trained again (training runs and SuperGLUE run directories), and a sweep with
extend_at_edge adds lrs past the edge of its grid while the choice lies there (in-process, child-process jobs, the
SuperGLUE evaluator path, --dry-run). No training: a fake run writes summary.json with an eval loss that is a
function of the lr, lowest at TARGET."""
from __future__ import annotations

import json
import math
import sys

import pytest
import yaml

from experiments import run_all, suite
from experiments.config import ConfigError
from experiments.lr_extension import beyond_edge
from experiments.lr_selection import EXTENSIONS_FILE, LR_SELECTION_FILE
from experiments.results import read_summary
from tests.plots.synthetic import write_run, write_superglue

TINY = ["model.source=random:tiny-llama", "train.max_steps=2"]


def loss_at(lr: float, target: float) -> float:
    return 1.0 + (math.log10(lr) - math.log10(target)) ** 2


def fake_training(monkeypatch, target: float, trained: list) -> None:
    """run_in_process writes a finished run whose final eval loss is loss_at(lr, target)."""
    def run_in_process(item, state, *, progress):
        trained.append((item.group, item.cfg.run_name, item.cfg.method.lr))
        write_run(item.run_dir.parent.parent, item.group, item.cfg.run_name, method=item.method,
                  lr=item.cfg.method.lr, final_eval_loss=loss_at(item.cfg.method.lr, target))
        return suite.outcome_from_summary(item, read_summary(item.run_dir), item.run_dir)
    monkeypatch.setattr(suite, "run_in_process", run_in_process)


def profile(tmp_path, lrs, *, extend: int | None = None, follow_up: bool = True) -> str:
    sweep = {"config": "small/smollm2_alpaca.yaml", "group": "sweep", "name": "t", "methods": ["adam"],
             "overrides": TINY, "lrs": {"adam": lrs}, **({"extend_at_edge": extend} if extend is not None else {})}
    main = {"config": "small/smollm2_alpaca.yaml", "group": "main", "name": "t", "methods": ["adam"],
            "overrides": TINY, "lr_from": "sweep"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"description": "edges", "output_dir": str(tmp_path / "out"),
                                    "runs": [sweep, *([main] if follow_up else [])]}))
    return str(path)


ARGS = ["--no-progress", "--no-eval", "--no-plots"]


def test_the_next_lr_past_an_edge_takes_the_outermost_step_rounded_to_two_digits():
    assert beyond_edge([3e-5, 1e-4, 3e-4, 1e-3], "lowest") == 9e-6
    assert beyond_edge([1e-2, 3e-2, 1e-1], "highest") == 0.33
    assert beyond_edge([1e-5, 3e-5, 1e-4], "highest") == 3.3e-4


def test_a_finished_follow_up_at_an_lr_the_sweep_no_longer_chooses_is_moved_aside_and_trained_again(
        tmp_path, monkeypatch, capsys):
    trained = []
    fake_training(monkeypatch, 2e-5, trained)
    assert run_all.main(["--profile", profile(tmp_path, [1e-4, 1e-3]), *ARGS]) == 0
    out = tmp_path / "out"
    assert read_summary(out / "main" / "t-adam")["config"]["method"]["lr"] == 1e-4
    capsys.readouterr()
    trained.clear()
    # the sweep gains a run at 1e-5, which wins: the follow-up trained at 1e-4 is stale
    assert run_all.main(["--profile", profile(tmp_path, [1e-5, 1e-4, 1e-3]), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert trained == [("sweep", "t-adam-lr1e-05", 1e-5), ("main", "t-adam", 1e-5)]
    assert read_summary(out / "main" / "t-adam")["config"]["method"]["lr"] == 1e-5
    kept = out / "main" / "superseded" / "t-adam-lr0.0001"
    assert read_summary(kept)["config"]["method"]["lr"] == 1e-4          # moved, never deleted
    assert "stale: trained at lr 0.0001, the sweep now picks 1e-05" in printed
    assert json.loads((out / "main" / LR_SELECTION_FILE).read_text())["adam"]["chosen_lr"] == 1e-5
    # a third invocation changes nothing (the run is now at the sweep's choice), and the superseded run stays apart
    trained.clear()
    assert run_all.main(["--profile", profile(tmp_path, [1e-5, 1e-4, 1e-3]), *ARGS]) == 0
    assert trained == [] and kept.is_dir()
    from experiments.results import find_runs
    assert kept not in find_runs(out)


@pytest.mark.parametrize("target, extend, extra, chosen", [
    (2e-5, 2, [1e-5, 1e-6], 1e-5),     # one step down wins, the next is worse: the choice is inside, no third
    (1e-8, 2, [1e-5, 1e-6], 1e-6),     # still at the edge after two extra lrs: N caps it
    (2e-5, 0, [], 1e-4),               # extend_at_edge 0 (the default): today's behaviour
])
def test_a_choice_at_the_edge_extends_the_grid_before_the_follow_up_takes_its_lr(
        tmp_path, monkeypatch, capsys, target, extend, extra, chosen):
    trained = []
    fake_training(monkeypatch, target, trained)
    assert run_all.main(["--profile", profile(tmp_path, [1e-4, 1e-3], extend=extend), *ARGS]) == 0
    assert trained == [*(("sweep", f"t-adam-lr{lr:g}", lr) for lr in (1e-4, 1e-3, *extra)),
                       ("main", "t-adam", chosen)]          # the follow-up last, at the final choice
    record = json.loads((tmp_path / "out" / "main" / LR_SELECTION_FILE).read_text())["adam"]
    assert record["chosen_lr"] == chosen and record["grid_extended_by"] == len(extra)
    assert [c["lr"] for c in record["candidates"] if c.get("extension") == "lowest"] == sorted(extra)
    printed = capsys.readouterr().out
    for lr in extra:
        assert f"t-adam-lr{lr:g}" in printed and "lr beyond the lowest edge of the grid" in printed
    if extend:
        recorded = json.loads((tmp_path / "out" / "sweep" / EXTENSIONS_FILE).read_text())["adam"]
        assert [(e["lr"], e["edge"]) for e in recorded] == [(lr, "lowest") for lr in extra]
    # a rerun trains nothing more: the recorded extension runs are planned again and found finished
    trained.clear()
    assert run_all.main(["--profile", profile(tmp_path, [1e-4, 1e-3], extend=extend), *ARGS]) == 0
    assert trained == []


def test_child_process_jobs_extend_the_grid_and_start_the_follow_up_after_it(tmp_path, monkeypatch, capsys):
    """run_parallel: each run a child process (here one that writes the summary at once), 2 at a time."""
    def child_command(item, state):
        lr = item.cfg.method.lr
        summary = {"status": "ok", "run_name": item.cfg.run_name, "method": item.method, "model": "fake",
                   "final_eval_loss": loss_at(lr, 2e-5), "config": {"method": {"name": item.method, "lr": lr}}}
        code = (f"import json, pathlib; p = pathlib.Path({str(item.run_dir)!r}); p.mkdir(parents=True, "
                f"exist_ok=True); (p / 'summary.json').write_text(json.dumps({summary!r}))")
        return [sys.executable, "-c", code]
    monkeypatch.setattr(suite, "child_command", child_command)
    args = ["--profile", profile(tmp_path, [1e-4, 1e-3], extend=2), *ARGS, "--jobs", "2", "--gpus", "0"]
    assert run_all.main(args) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "sweep").iterdir() if p.is_dir()) == \
        ["t-adam-lr0.0001", "t-adam-lr0.001", "t-adam-lr1e-05", "t-adam-lr1e-06"]
    assert read_summary(out / "main" / "t-adam")["config"]["method"]["lr"] == 1e-5
    # the follow-up was written after the last extension run: it waited for it
    assert (out / "main" / "t-adam" / "summary.json").stat().st_mtime_ns >= \
        (out / "sweep" / "t-adam-lr1e-06" / "summary.json").stat().st_mtime_ns
    assert "t-adam-lr1e-06" in capsys.readouterr().out
    # a rerun: the finished follow-up is kept (not stale), nothing is started
    monkeypatch.setattr(suite, "child_command", lambda item, state: pytest.fail(f"{item.cfg.run_name} started"))
    assert run_all.main(args) == 0
    assert "finished earlier" in capsys.readouterr().out


@pytest.mark.parametrize("value, message", [
    (-1, "extend_at_edge takes an integer >= 0"), (True, "got True"), ("2", "got '2'"),
])
def test_a_bad_extend_at_edge_is_one_line_naming_the_valid_values(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        run_all.load_profile(profile(tmp_path, [1e-4, 1e-3], extend=value))
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"config": "small/smollm2_alpaca.yaml", "group": "g",
                                              "methods": ["adam"], "extend_at_edge": 1}]}))
    with pytest.raises(ConfigError, match="on a group without lrs"):
        run_all.load_profile(str(path))


def test_a_sweep_of_one_lr_cannot_extend_and_says_so(tmp_path):
    """The step past the edge is the one between the two outermost lrs: with one lr nothing was ever extended, in
    silence."""
    with pytest.raises(ConfigError, match=r"extend_at_edge needs at least two lrs per method .*lrs.adam has \[0.001\]"):
        run_all.load_profile(profile(tmp_path, ["1e-3"], extend=2))


def test_a_cut_record_is_one_line_and_nothing_is_trained_or_overwritten(tmp_path, monkeypatch, capsys):
    """A cut lr_extensions.json was read as empty: the sweep went past its cap (two more lrs) and the file was
    overwritten; a cut lr_selection.json ended run_all with a JSONDecodeError traceback after training."""
    trained = []
    fake_training(monkeypatch, 1e-8, trained)
    args = ["--profile", profile(tmp_path, [1e-4, 1e-3], extend=2), *ARGS]
    assert run_all.main(args) == 0
    assert "sweep: adam's lr 1e-06 still lies at the edge of its grid after 2 extra lr(s) (extend_at_edge: 2)" in \
        capsys.readouterr().out
    out = tmp_path / "out"
    for path, cut, problem in [(out / "sweep" / EXTENSIONS_FILE, '{"adam": [{"lr": 1e-05', "not valid JSON"),
                               (out / "main" / LR_SELECTION_FILE, "[1]", "holds list, not a JSON object")]:
        kept = path.read_text()
        path.write_text(cut)
        trained.clear()
        assert run_all.main(args) == 2
        assert trained == [] and path.read_text() == cut
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: {problem}") and "repair it, or delete it" in err and \
            len(err.splitlines()) == 1
        path.write_text(kept)
    assert run_all.main(args) == 0 and trained == []


def test_the_dry_run_names_the_extension_due_and_the_stale_run(tmp_path, capsys):
    out = tmp_path / "out"
    for lr in (1e-4, 1e-3):
        write_run(out, "sweep", f"t-adam-lr{lr:g}", method="adam", lr=lr, final_eval_loss=loss_at(lr, 2e-5))
    write_run(out, "main", "t-adam", method="adam", lr=1e-3, final_eval_loss=1.0)   # the sweep picks 1e-4 now
    assert run_all.main(["--profile", profile(tmp_path, [1e-4, 1e-3], extend=2), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "sweep/t-adam-lr1e-05: extension due now, lr beyond the lowest edge of the grid" in printed
    assert "main/t-adam: " in printed and "(now 0.0001; stale: trained at lr 0.001" in printed
    assert "up to 2 per method" in printed and "sweep/t-adam-lr0.0001:" in printed
    assert not (out / "sweep" / EXTENSIONS_FILE).exists() and (out / "main" / "t-adam").is_dir()  # nothing written


# --- SuperGLUE: the sweep and its follow-up are trained by the evaluator ------------------------------------------
SUPERGLUE = ["model.source=random:tiny-bert", "model.dtype=fp32", "train.device=cpu", "data.subset=copa"]
SCORES = {1e-5: 55.0, 1e-4: 65.0, 1e-3: 75.0, 1e-2: 60.0}   # the best lies past the grid's top edge


def superglue_profile(tmp_path, extend: int) -> str:
    runs = [{"config": "quality/mpnet_superglue.yaml", "group": "lr_sweep_sg", "name": "sg", "methods": ["badam"],
             "seeds": [0], "overrides": SUPERGLUE, "lrs": {"badam": [1e-5, 1e-4]}, "extend_at_edge": extend},
            {"config": "quality/mpnet_superglue.yaml", "group": "follow_sg", "name": "sg", "methods": ["badam"],
             "seeds": [1], "overrides": SUPERGLUE, "lr_from": "lr_sweep_sg"}]
    path = tmp_path / f"sg{extend}.yaml"
    path.write_text(yaml.safe_dump({"description": "sg", "runs": runs,
                                    "evaluators": [{"name": "superglue", "groups": ["lr_sweep_sg", "follow_sg"]}]}))
    return str(path)


def test_a_superglue_sweep_extends_through_its_evaluator_and_the_stale_follow_up_is_redone(tmp_path, monkeypatch,
                                                                                            capsys):
    calls = []

    def fake_evaluators(profile, outcomes):   # scores as eval.superglue would; refuses other settings as it does
        dirs = [o.run_dir for o in outcomes if o.status == "ok"]
        calls.append(sorted(d.name for d in dirs))
        for run_dir in dirs:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            lr = config["method"]["lr"]
            done = run_dir / "eval" / "superglue.json"
            if done.is_file():
                assert json.loads(done.read_text())["settings"]["method"]["lr"] == lr, "other settings: refused"
                continue
            write_superglue(run_dir.parent.parent, run_dir.parent.name, run_dir.name, method="badam", lr=lr,
                            seed=config["seed"], test={"copa": SCORES[lr]})
        return []

    monkeypatch.setattr(run_all, "run_evaluators", fake_evaluators)
    out = tmp_path / "out"
    base = ["--output-dir", str(out), "--no-plots", "--no-progress"]
    assert run_all.main(["--profile", superglue_profile(tmp_path, 0), *base]) == 0
    assert calls == [["sg-badam-lr0.0001-s0", "sg-badam-lr1e-05-s0"], ["sg-badam-s1"]]
    calls.clear()
    assert run_all.main(["--profile", superglue_profile(tmp_path, 2), *base]) == 0
    # the sweep's evaluator, then once per extra lr (1e-3 wins, 1e-2 is worse: stop), then the follow-up at 1e-3
    assert calls == [["sg-badam-lr0.0001-s0", "sg-badam-lr1e-05-s0"], ["sg-badam-lr0.001-s0"],
                     ["sg-badam-lr0.01-s0"], ["sg-badam-s1"]]
    follow = out / "follow_sg"
    assert yaml.safe_load((follow / "sg-badam-s1" / "config.yaml").read_text())["method"]["lr"] == 1e-3
    old = json.loads((follow / "superseded" / "sg-badam-s1-lr0.0001" / "eval" / "superglue.json").read_text())
    assert old["settings"]["method"]["lr"] == 1e-4                    # the stale results, moved aside
    record = json.loads((follow / LR_SELECTION_FILE).read_text())["badam"]
    assert record["chosen_lr"] == 1e-3 and record["grid_extended_by"] == 2 and not record["at_edge_of_grid"]
    assert "stale: trained at lr 0.0001, the sweep now picks 0.001" in capsys.readouterr().out
