"""run_all's suite execution (experiments/suite.py): seeds, lr sweeps and lr_from, skipping finished runs, resuming
checkpointed ones, child-process jobs, deadlines and exit codes. Tiny random Llama, 2-3 steps per run."""
from __future__ import annotations

import json

import pytest
import yaml

from experiments import run_all, suite
from experiments.config import ConfigError
from experiments.results import read_summary

TINY = ["model.source=random:tiny-llama", "data.max_length=48", "data.max_samples=8", "data.eval_samples=2",
        "train.batch_size=2", "train.grad_accum=1", "train.eval_every=0", "train.timing_warmup_steps=0"]


def write_profile(tmp_path, runs, **extra) -> str:
    path = tmp_path / "suite_test.yaml"
    path.write_text(yaml.safe_dump({"description": "test profile", "output_dir": str(tmp_path / "out"),
                                    "runs": runs, **extra}))
    return str(path)


def group(name, methods, **keys):
    return {"config": "small/smollm2_alpaca.yaml", "group": name, "name": "t", "methods": methods,
            "overrides": [*TINY, "train.max_steps=2"], **keys}


def test_seeds_and_lrs_expand_into_named_runs(tmp_path):
    profile = run_all.load_profile(write_profile(tmp_path, [
        group("sweep", ["adam", "lora"], lrs={"adam": [1e-4, 1e-3]}),
        group("main", ["adam"], seeds=[0, 1], lr_from="sweep", first_seed_overrides=["output.save_model=true"])]))
    planned = run_all.plan_runs(profile, output_root=tmp_path / "out")
    names = [(p.group, p.cfg.run_name) for p in planned]
    assert names == [("sweep", "t-adam-lr0.0001"), ("sweep", "t-adam-lr0.001"), ("sweep", "t-lora"),
                     ("main", "t-adam-s0"), ("main", "t-adam-s1")]
    assert [p.cfg.method.lr for p in planned[:2]] == [1e-4, 1e-3]
    assert [p.cfg.seed for p in planned[3:]] == [0, 1]
    assert [p.cfg.output.save_model for p in planned[3:]] == [True, False]
    assert planned[3].lr_from == "sweep" and planned[0].lr_from is None


@pytest.mark.parametrize("bad, message", [
    ({"seeds": [0, 0]}, "distinct integers"),
    ({"lrs": {"adamw": [1e-3]}}, "unknown method 'adamw'"),
    ({"lrs": {"adam": [-1]}}, "positive numbers"),
    ({"lr_from": "later"}, "not an earlier run group"),
])
def test_bad_group_keys_are_refused_with_the_reason(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        run_all.load_profile(write_profile(tmp_path, [group("g", ["adam"], **bad)]))


def test_bad_profile_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("runs: [\n  - {config: x")
    with pytest.raises(ConfigError, match=r"broken.yaml: invalid YAML at line 2, column 3"):
        run_all.load_profile(str(path))


def test_lr_from_picks_the_lowest_eval_loss_and_records_the_choice(tmp_path):
    root = tmp_path / "out"
    for lr, loss in ((1e-4, 2.5), (1e-3, 2.1), (1e-2, None)):
        run_dir = root / "sweep" / f"t-adam-lr{lr:g}"
        run_dir.mkdir(parents=True)
        status = "ok" if loss is not None else "diverged"
        (run_dir / "summary.json").write_text(json.dumps({
            "status": status, "method": "adam", "final_eval_loss": loss, "config": {"method": {"lr": lr}}}))
    selection = suite.select_lr(root, "sweep", "adam")
    assert selection["chosen_lr"] == 1e-3 and not selection["at_edge_of_grid"]
    assert [c["lr"] for c in selection["candidates"]] == [1e-4, 1e-3, 1e-2]
    with pytest.raises(suite.LrSelectionError, match="no finished run of method lora"):
        suite.select_lr(root, "sweep", "lora")


def test_rerun_skips_finished_runs_and_redoes_failed_ones(tmp_path, capsys):
    profile = write_profile(tmp_path, [group("g", ["adam", "sgd"])])
    args = ["--profile", profile, "--no-progress", "--no-eval", "--no-plots"]
    assert run_all.main(args) == 0
    adam_dir = tmp_path / "out" / "g" / "t-adam"
    before = (adam_dir / "summary.json").read_bytes()
    sgd_summary = read_summary(tmp_path / "out" / "g" / "t-sgd")
    sgd_summary["status"] = "error"          # as if it had failed
    (tmp_path / "out" / "g" / "t-sgd" / "summary.json").write_text(json.dumps(sgd_summary))
    capsys.readouterr()
    assert run_all.main(args) == 0
    out = capsys.readouterr().out
    assert (adam_dir / "summary.json").read_bytes() == before, "a finished run must not be touched"
    assert "finished earlier" in out
    assert read_summary(tmp_path / "out" / "g" / "t-sgd")["status"] == "ok"
    assert not (tmp_path / "out" / "g" / "t-sgd-2").exists(), "a rerun must not create -2 directories"
    assert run_all.main([*args, "--fresh"]) == 0
    assert (adam_dir / "summary.json").read_bytes() != before


def test_a_checkpointed_unfinished_run_is_resumed_in_its_directory(tmp_path):
    profile = write_profile(tmp_path, [group("g", ["adam"])])
    base = ["--profile", profile, "--no-progress", "--no-eval", "--no-plots", "--set", "train.save_every=1"]
    # stop after one of three steps: the checkpoint is there, the run has not finished
    assert run_all.main([*base, "--set", "train.max_steps=3", "--set", "train.stop_after_steps=1"]) == 0
    run_dir = tmp_path / "out" / "g" / "t-adam"
    assert read_summary(run_dir)["steps"] == 1
    (run_dir / "summary.json").unlink()       # as if the process had been killed after the checkpoint
    assert suite.run_state(run_dir) == "resume"
    assert run_all.main([*base, "--set", "train.max_steps=3"]) == 0
    summary = read_summary(run_dir)
    assert summary["status"] == "ok" and summary["steps"] == 3
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.slow
def test_child_process_jobs_run_the_sweep_before_the_runs_that_need_its_lr(tmp_path, capsys):
    profile = write_profile(tmp_path, [group("sweep", ["sgd"], lrs={"sgd": [1e-3, 1e-1]},
                                             overrides=[*TINY, "train.max_steps=2", "data.eval_samples=2"]),
                                       group("main", ["sgd"], lr_from="sweep")])
    code = run_all.main(["--profile", profile, "--no-progress", "--no-eval", "--no-plots", "--jobs", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    chosen = json.loads((tmp_path / "out" / "main" / "lr_selection.json").read_text())["sgd"]
    main_summary = read_summary(tmp_path / "out" / "main" / "t-sgd")
    assert main_summary["status"] == "ok" and main_summary["config"]["method"]["lr"] == chosen["chosen_lr"]
    losses = {c["lr"]: c["final_eval_loss"] for c in chosen["candidates"]}
    assert chosen["chosen_lr"] == min(losses, key=losses.get)
    assert (tmp_path / "out" / "logs" / "main.t-sgd.log").is_file()


def test_a_launch_deadline_leaves_runs_for_the_next_invocation(tmp_path, capsys):
    profile = write_profile(tmp_path, [group("g", ["adam"])])
    code = run_all.main(["--profile", profile, "--no-progress", "--no-eval", "--no-plots",
                         "--launch-deadline", "1e-9"])
    captured = capsys.readouterr()
    assert code == 3 and "not started" in captured.out and "rerun the same command" in captured.err
    assert not (tmp_path / "out" / "g" / "t-adam").exists()


def test_a_run_that_errors_makes_the_exit_code_nonzero(tmp_path, capsys):
    profile = write_profile(tmp_path, [group("g", ["adam"], overrides=[*TINY, "train.max_steps=2",
                                                                      "data.source=/nonexistent/file.json"])])
    assert run_all.main(["--profile", profile, "--no-progress", "--no-eval", "--no-plots"]) == 1
    captured = capsys.readouterr()
    # a missing data file stops the run before its directory exists; the suite names it by its planned run name and
    # gives the whole reason after the table
    assert "failed (1): g/t-adam" in captured.err
    assert "g/t-adam: ConfigError: data file not found: /nonexistent/file.json" in captured.err
    assert not (tmp_path / "out" / "g" / "t-adam").exists()


def test_a_checkpointed_run_that_lost_its_config_is_named_in_full_with_what_to_do(tmp_path, capsys):
    """A run left with checkpoint.pt but no config.yaml cannot be resumed (the checkpoint's settings cannot be
    checked); the only trace was the table's note cut at 90 characters ("...: it has no config.yaml, s")."""
    profile = write_profile(tmp_path, [group("g", ["adam"], overrides=[*TINY, "train.max_steps=2",
                                                                      "train.save_every=1"])])
    args = ["--profile", profile, "--no-progress", "--no-eval", "--no-plots"]
    assert run_all.main(args) == 0
    run_dir = tmp_path / "out" / "g" / "t-adam"
    (run_dir / "summary.json").unlink()
    (run_dir / "config.yaml").unlink()
    capsys.readouterr()
    assert run_all.main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == "failed (1): g/t-adam"
    assert err[-1] == (f"  g/t-adam: ResumeError: cannot resume from {run_dir}: it has no config.yaml, so the settings "
                       f"the checkpoint was trained with cannot be checked; delete {run_dir} (or rerun with --fresh) "
                       "to train it from the start")
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]   # left as it was


@pytest.mark.parametrize("flags, message", [(["--jobs", "0"], "--jobs must be >= 1"),
                                            (["--gpus", "a,b"], "CUDA device ids"),
                                            (["--kill-after", "-5"], "positive number of seconds")])
def test_bad_parallel_flags_are_usage_errors(tmp_path, capsys, flags, message):
    profile = write_profile(tmp_path, [group("g", ["adam"])])
    assert run_all.main(["--profile", profile, *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_stop_request_checkpoints_and_a_rerun_resumes_to_the_same_result(tmp_path, monkeypatch):
    """SIGTERM (run_all's deadline) -> the run ends `interrupted` with a checkpoint; the next run_all resumes it and
    the result equals an uninterrupted run's (same losses, same final weights' loss)."""
    from experiments import loop

    profile = write_profile(tmp_path, [group("g", ["adam"], overrides=[*TINY, "train.max_steps=3"])])
    args = ["--profile", profile, "--no-progress", "--no-eval", "--no-plots"]
    reference = tmp_path / "reference"
    assert run_all.main([*args, "--output-dir", str(reference)]) == 0
    monkeypatch.setattr(loop, "_stop_requested", True)
    assert run_all.main(args) == 3                      # interrupted: unfinished, rerun to continue
    run_dir = tmp_path / "out" / "g" / "t-adam"
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["steps"] == 1 and (run_dir / "checkpoint.pt").is_file()
    assert suite.run_state(run_dir) == "resume"
    monkeypatch.setattr(loop, "_stop_requested", False)
    assert run_all.main(args) == 0
    resumed = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(x)["loss"] for x in (reference / "g" / "t-adam" / "metrics.jsonl").read_text().splitlines()]
    assert resumed == straight and read_summary(run_dir)["status"] == "ok"


def test_a_finished_run_kept_by_a_call_with_other_settings_says_so(tmp_path, capsys):
    """README: a rerun skips runs that already ended. With another --set (train.max_steps=1 -> 2) the finished run
    was kept under the old settings in silence, its numbers reported as this call's."""
    profile = write_profile(tmp_path, [{**group("g", ["sgd"]), "overrides": [*TINY, "train.max_steps=1"]}])
    assert run_all.main(["--profile", profile, "--no-progress", "--no-plots", "--no-eval"]) == 0
    run_dir = tmp_path / "out" / "g" / "t-sgd"
    kept = (run_dir / "summary.json").read_bytes()
    assert run_all.main(["--profile", profile, "--no-progress", "--no-plots", "--no-eval"]) == 0
    assert "other settings" not in capsys.readouterr().out
    assert run_all.main(["--profile", profile, "--no-progress", "--no-plots", "--no-eval",
                         "--set", "train.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert ("note: g/t-sgd: kept, though trained with other settings than this call's (train.max_steps: 1 -> 2): "
            "--fresh, or delete it, to train it again") in out
    assert (run_dir / "summary.json").read_bytes() == kept
