"""SuperGLUE fine-tuning through the harness: a random tiny BERT trains a few steps on RTE with badam and lora, the
results JSON is written and reused, the head stays trainable, steps are observed where the loop completes them."""
from __future__ import annotations

import json
import math

import pytest
import torch

from eval.superglue.cli import main, task_config
from eval.superglue.features import encode_examples, predict
from eval.superglue.finetune import CheckpointSelector, ObservedEpoch, build_method
from eval.superglue.splits import paper_splits
from eval.superglue.tasks import superglue_dir
from experiments.loop import train
from experiments.models import load_model

pytestmark = pytest.mark.skipif(not (superglue_dir() / "RTE" / "val.jsonl").exists(),
                                reason="shared SuperGLUE data not present")

SHORT = ["--model", "random:tiny-bert", "--tasks", "rte", "--max-steps", "3", "--eval-every", "2",
         "--batch-size", "4", "--max-train", "12", "--max-eval", "8", "--max-length", "32", "--device", "cpu",
         "--no-progress"]


def _results(out):
    return json.loads((out / "eval" / "superglue.json").read_text())


@pytest.mark.parametrize("method,head_option", [("badam", "active_modules"), ("lora", "modules_to_save")])
def test_finetune_rte_through_the_harness_writes_results(tmp_path, capsys, method, head_option):
    out = tmp_path / method
    extra = ["method.switch_block_every=1"] if method == "badam" else ["method.rank=4"]
    assert main(SHORT + ["--method", method, "--out", str(out)] + extra) == 0
    results = _results(out)
    entry = results["tasks"]["rte"]
    assert results["method"] == method and entry["status"] == "ok"
    assert [h["step"] for h in entry["history"]] == [2, 3]  # every 2 steps; the last step is scored after training
    best = max(entry["history"], key=lambda h: h["validation"]["score"])
    assert entry["metrics"] == best["test"] and entry["metrics"]["n"] == 8
    assert 0.0 <= entry["metrics"]["accuracy"] <= 100.0
    assert entry["sizes"] == {"train": 12, "validation": 8, "test": 8}
    assert entry["trainable_head"][head_option] == ["classifier", "bert.pooler"]
    assert entry["train"]["steps"] == 3 and math.isfinite(entry["train"]["final_loss"])
    run_dir = out / "tasks" / "rte"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["method"] == method
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert results["overall"]["scores"] == {"rte": entry["metrics"]["score"]}
    assert "rte: test accuracy" in capsys.readouterr().out

    if method == "badam":  # a rerun with the same settings skips the task; other settings are refused
        assert main(SHORT + ["--method", method, "--out", str(out)] + extra) == 0
        assert "already done" in capsys.readouterr().out
        assert _results(out)["tasks"]["rte"] == entry
        assert main(SHORT + ["--method", method, "--out", str(out), "--lr", "3e-5"] + extra) == 2
        assert "other settings" in capsys.readouterr().err


def test_bad_input_gives_one_clear_error_line(tmp_path, capsys, monkeypatch):
    assert main(["--method", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown method 'nope'") and "badam" in err and len(err.splitlines()) == 1
    assert main(SHORT + ["--tasks", "rte,record", "--out", str(tmp_path)]) == 2
    assert "valid tasks" in capsys.readouterr().err
    assert main(SHORT + ["--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model") and "not found" in err and len(err.splitlines()) == 1
    # a results file that cannot be read is refused rather than replaced (its tasks would be lost)
    (tmp_path / "torn" / "eval").mkdir(parents=True)
    (tmp_path / "torn" / "eval" / "superglue.json").write_text('{"tasks": {"rte": {"sta')
    assert main(SHORT + ["--out", str(tmp_path / "torn")]) == 2
    err = capsys.readouterr().err.strip()
    assert "superglue.json cannot be read" in err and "--force" in err and len(err.splitlines()) == 1
    (tmp_path / "a-file").write_text("x")
    assert main(SHORT + ["--out", str(tmp_path / "a-file")]) == 2
    assert "is a file" in capsys.readouterr().err
    # a flag after an override is a flag (here it names a bad method, which must be what is reported)
    assert main(["--tasks", "rte", "train.max_steps=1", "--method", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("BADAM_SHARED", str(tmp_path / "empty"))
    assert main(SHORT + ["--out", str(tmp_path / "d")]) == 2
    assert "RTE/val.jsonl(.gz) not found" in capsys.readouterr().err


def test_head_trains_throughout_and_steps_are_observed_after_completion(tmp_path):
    cfg = task_config({"model": {"source": "random:tiny-bert", "dtype": "fp32"},
                       "method": {"name": "badam", "lr": 1e-2, "switch_block_every": 1, "switch_mode": "ascending"},
                       "train": {"batch_size": 4, "grad_accum": 2, "max_steps": 3, "device": "cpu",
                                 "lr_schedule": "constant"}}, "rte", set())
    model, tokenizer = load_model("random:tiny-bert", dtype="fp32", task="sequence_classification", num_labels=2)
    method = build_method(cfg, model)
    assert method.options.active_modules == ["classifier", "bert.pooler"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    features = encode_examples(paper_splits("rte", max_train=10).train, tokenizer, max_length=32,
                               kind="classification")
    calls = []

    def on_step(*call):  # also note how many steps the loop had logged: the step must be complete when called
        logged = tmp_path / "metrics.jsonl"
        calls.append((*call, len(logged.read_text().splitlines()) if logged.exists() else 0))

    def batches_fn(epoch):  # 3 micro-batches per epoch, grad_accum 2: one step per epoch, the remainder dropped
        return ObservedEpoch(features, tokenizer, batch_size=4, seed=0, epoch=epoch, grad_accum=2, on_step=on_step)

    summary = train(model, method, batches_fn, cfg.train, tmp_path, progress=False)
    assert summary["status"] == "ok" and summary["steps"] == 3
    assert calls == [(0, 1, True, 1), (1, 1, True, 2)]  # the loop never asks for data after its last step
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= changed  # trained in all 3 steps, whatever block
    assert not any(n.startswith("bert.embeddings.") for n in changed)  # BAdam leaves embeddings out by default
    assert any(n.startswith("bert.encoder.layer.0.") for n in changed)


def test_selector_reports_test_of_best_validation_earliest_on_ties():
    selector = CheckpointSelector.__new__(CheckpointSelector)
    selector.history = [{"step": s, "validation": {"score": v}, "test": {"score": t}}
                        for s, v, t in ((2, 50.0, 70.0), (4, 60.0, 55.0), (6, 60.0, 80.0), (8, 40.0, 90.0))]
    assert selector.best()["step"] == 4 and selector.best()["test"]["score"] == 55.0


def test_test_is_scored_only_where_validation_improves():
    """The reported test is the best-validation checkpoint's, earliest on ties: a test pass elsewhere is wasted."""
    selector = CheckpointSelector.__new__(CheckpointSelector)
    selector.history, selector.eval_seconds, scored = [], 0.0, []
    validation = iter([50.0, 60.0, 60.0, 40.0, 70.0])

    def score(part):
        scored.append(part)
        return {"score": next(validation) if part == "validation" else 10.0 * len(scored)}, 0.5

    selector._score = score
    for step in (2, 4, 6, 8, 10):
        selector.evaluate(step, epoch=0)
    assert [h["test"] is not None for h in selector.history] == [True, True, False, False, True]
    assert scored.count("test") == 3 and selector.best()["step"] == 10
    assert selector.history[2]["test_loss"] is None and selector.history[1]["test_loss"] == 0.5


def test_copa_multiple_choice_predicts_one_of_its_choices():
    model, tokenizer = load_model("random:tiny-bert", dtype="fp32", task="multiple_choice")
    examples = paper_splits("copa").validation[:5]
    features = encode_examples(examples, tokenizer, max_length=40, kind="multiple_choice")
    predictions, loss = predict(model, features, tokenizer, batch_size=2, progress=False)
    assert len(predictions) == 5 and set(predictions) <= {0, 1}
    assert math.isfinite(loss) and loss == pytest.approx(math.log(2), abs=0.2)  # an untrained head is near chance
    assert not model.training


def test_run_all_hands_a_superglue_group_to_its_evaluator(tmp_path, capsys):
    """A SuperGLUE group of a profile is not trained by experiments.run: run_all writes its config.yaml and the
    superglue evaluator (evaluate_runs, through `python -m eval superglue`) fine-tunes and scores it per task."""
    import yaml

    from experiments import run_all

    profile = tmp_path / "glue.yaml"
    profile.write_text(yaml.safe_dump({
        "description": "SuperGLUE through run_all", "output_dir": str(tmp_path / "unused"),
        "runs": [{"config": "small/minilm_superglue.yaml", "group": "paper_superglue_tiny", "name": "glue",
                  "methods": ["badam"], "overrides": ["method.switch_block_every=1"]}],
        "evaluators": [{"name": "superglue", "options": {"tasks": "rte", "max_steps": 2, "max_train": 8,
                                                         "max_eval": 4, "max_length": 32, "batch_size": 4}}]}))
    out = tmp_path / "out"
    assert run_all.main(["--profile", str(profile), "--output-dir", str(out), "--no-plots", "--no-progress",
                         "--set", "model.source=random:tiny-bert", "--set", "train.device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "evaluator superglue: 1 run(s)" in printed and "superglue mean score glue-badam" in printed
    run_dir = out / "paper_superglue_tiny" / "glue-badam"
    results = _results(run_dir)
    assert results["method"] == "badam" and results["model"] == "random:tiny-bert"
    assert results["tasks"]["rte"]["status"] == "ok" and results["tasks"]["rte"]["train"]["steps"] == 2
    assert json.loads((run_dir / "tasks" / "rte" / "summary.json").read_text())["status"] == "ok"


def test_the_training_cli_refuses_a_superglue_config_before_loading_anything(tmp_path, capsys):
    from experiments.run import main as run_main

    assert run_main(["--config", "small/minilm_superglue.yaml", f"output.dir={tmp_path}"]) == 2
    assert "python -m eval.superglue --config" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
