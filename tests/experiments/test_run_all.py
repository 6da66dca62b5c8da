"""The main job: profiles resolve and validate, a failing method does not stop the suite, and the default profile's
pieces run end to end in a reduced form (2 methods, 2 steps, a tiny random Llama instead of SmolLM2)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import baselines.registry as registry
import experiments.config as config_mod
from baselines.adam import Adam
from experiments import run_all
from experiments.config import ConfigError, load_config
from experiments.results import read_summary

TINY = ["model.source=random:tiny-llama", "data.max_length=48", "data.max_samples=8", "data.eval_samples=2"]




@pytest.mark.parametrize("name", run_all.profile_names())
def test_every_profile_resolves(name, tmp_path):
    profile = run_all.load_profile(name)
    planned = run_all.plan_runs(profile, output_root=tmp_path)
    assert planned and profile["description"]
    for item in planned:
        if item.cfg is None:
            assert item.skip_reason
            continue
        assert item.cfg.method.name == item.method
        assert str(item.cfg.output.dir).startswith(str(tmp_path / item.group))
    names = [(p.group, p.cfg.run_name) for p in planned if p.cfg]
    assert len(names) == len(set(names)), "two runs of a profile would share a run directory"


def test_bad_profile_requests_fail_with_the_valid_choices(tmp_path, capsys):
    with pytest.raises(ConfigError, match="valid profiles: cpu"):
        run_all.load_profile("laptop")
    assert run_all.main(["--profile", "cpu", "--methods", "adamw", "--output-dir", str(tmp_path)]) == 2
    assert "valid methods: " in (err := capsys.readouterr().err) and "adalomo, adam, " in err
    assert run_all.main(["--profile", "cpu", "--set", "train.nope=1", "--output-dir", str(tmp_path)]) == 2
    assert "valid keys in train" in capsys.readouterr().err
    assert run_all.main(["--profile", "paper", "--groups", "paper_memory", "--output-dir", str(tmp_path)]) == 2
    assert "groups of profile paper: ablation_bsgd" in capsys.readouterr().err


def test_groups_take_patterns_so_a_session_can_run_one_models_part(tmp_path):
    profile = run_all.load_profile("quality-gpu")
    groups = lambda patterns: {p.group for p in run_all.plan_runs(profile, output_root=tmp_path,  # noqa: E731
                                                                     only_groups=patterns)}
    assert groups(["*_qwen25_coder_05b"]) == {"lr_sweep_qwen25_coder_05b", "paper_math_qwen25_coder_05b"}
    gemma = groups(["*_gemma3_270m"])
    assert "paper_mtbench_gemma3_270m" in gemma and not any("qwen" in g for g in gemma)
    assert groups(["paper_math_qwen25_coder_05b"]) == {"paper_math_qwen25_coder_05b"}
    with pytest.raises(ConfigError, match=r"unknown group\(s\) \*_llama"):
        groups(["*_qwen25_coder_05b", "*_llama"])


class OOMOnStep(Adam):
    """adam that runs out of memory in its first update, as a too-large model would on a GPU."""

    name = "oom_test"

    def step(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 57.00 GiB")


def test_a_method_that_runs_out_of_memory_does_not_stop_the_suite(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.METHODS, "oom_test", "unused:OOMOnStep")
    real = registry.get_method_class
    fake = lambda name: OOMOnStep if name == "oom_test" else real(name)  # noqa: E731
    monkeypatch.setattr(registry, "get_method_class", fake)
    monkeypatch.setattr(config_mod, "get_method_class", fake)
    planned = []
    for method in ("oom_test", "adam"):
        cfg = load_config("small/smollm2_alpaca.yaml", [*TINY, f"method.name={method}", "train.max_steps=2",
                                                         "train.grad_accum=1", f"output.dir={tmp_path}"])
        planned.append(run_all.PlannedRun("g", method, cfg))
    planned.append(run_all.PlannedRun("g", "galore_8bit", None, skip_reason="CUDA only"))
    outcomes = run_all.run_planned(planned, progress=False)
    assert [o.status for o in outcomes] == ["oom", "ok", "skipped"]
    assert "57.00 GiB" in outcomes[0].note and read_summary(outcomes[0].run_dir)["status"] == "oom"
    table = run_all.format_table(outcomes)
    assert "oom_test" in table and "oom" in table and "CUDA only" in table


def test_unsupported_method_at_run_time_is_reported_as_skipped(tmp_path):
    cfg = load_config("small/smollm2_alpaca.yaml", [*TINY, "method.name=adalomo", "train.max_steps=1",
                                                     "train.grad_accum=1", f"output.dir={tmp_path}"])
    if torch.cuda.is_available():
        pytest.skip("AdaLomo runs on this machine")
    (outcome,) = run_all.run_planned([run_all.PlannedRun("g", "adalomo", cfg)], progress=False)
    assert outcome.status == "skipped" and "needs CUDA" in outcome.note


def test_profile_evaluators_and_superglue_groups_are_checked_when_loaded(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [{config: small/smollm2_alpaca.yaml, group: g, methods: [adam]}]\n"
                   "evaluators: [{name: ranks}]\n")
    with pytest.raises(ConfigError, match="unknown evaluator 'ranks'; valid evaluators: math, mtbench, rank, superglue"):
        run_all.load_profile(str(bad))
    glue = tmp_path / "glue.yaml"
    glue.write_text("runs: [{config: small/minilm_superglue.yaml, group: paper_superglue_x, methods: [badam]}]\n")
    with pytest.raises(ConfigError, match="superglue evaluator trains"):
        run_all.load_profile(str(glue))


def test_planned_run_is_a_plain_record():
    fields = {f.name for f in dataclasses.fields(run_all.PlannedRun)}
    assert {"group", "method", "cfg", "skip_reason"} <= fields


@pytest.mark.parametrize("text, message", [
    ("runs: [\n", r"p.yaml: invalid YAML at line 2, column 1"),
    ("runs:\n  - {config: small/smollm2_alpaca.yaml, group: g, methods: adam}\n",
     # was: unknown method(s) a, d, a, m
     r"group g: methods must be a list, e.g. \[adam\], or all \(every registered method\), got 'adam'"),
    ("runs: 5\n", r"runs must be a list of run groups, got 5"),
    ("runs: [abc]\n", r"run group \?: expected a mapping, got 'abc'"),  # was: AttributeError
])
def test_a_malformed_profile_file_is_one_line_naming_the_problem(tmp_path, text, message):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        run_all.load_profile(str(tmp_path / "p.yaml"))
