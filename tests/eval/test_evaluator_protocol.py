"""One evaluator protocol: every eval package exposes evaluate_runs(run_dirs, **options), `python -m eval` finds and
runs them by name (as run_all does, in a child process), and the rank evaluator skips what it cannot analyse."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import torch

from eval.__main__ import evaluator_names, main
from experiments.paths import REPO_ROOT
from tests.signals import default_sigint


def test_every_evaluator_has_the_common_entry():
    assert evaluator_names() == ["math", "mtbench", "rank", "superglue"]
    for name in evaluator_names():
        assert callable(importlib.import_module(f"eval.{name}").evaluate_runs)
    listed = subprocess.run([sys.executable, "-m", "eval", "--list"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.split() == evaluator_names()


def test_rank_through_the_runner_analyses_saved_runs_and_names_what_it_skips(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    base = LlamaForCausalLM(config)
    base.save_pretrained(tmp_path / "base")
    tuned = LlamaForCausalLM(config)
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        tuned.model.layers[1].self_attn.q_proj.weight.add_(torch.randn(16, 16))  # one matrix changes
    runs = {name: tmp_path / "g" / name for name in ("tuned", "unsaved", "random")}
    tuned.save_pretrained(runs["tuned"] / "model")
    base.save_pretrained(runs["random"] / "model")
    for name, run in runs.items():
        run.mkdir(parents=True, exist_ok=True)
        model = "random:tiny-llama" if name == "random" else str(tmp_path / "base")
        (run / "summary.json").write_text(json.dumps({"status": "ok", "method": "adam", "model": model,
                                                      "config": {"model": {"dtype": "fp32"}}}))
    note_file = tmp_path / "note.txt"
    assert main(["rank", *map(str, runs.values()), "--options", '{"matrices": ["q", "v"]}',
                 "--note-file", str(note_file)]) == 0
    note = note_file.read_text()
    assert "weights not saved (output.save_model=false), not analysed: unsaved" in note and "random-init base, skipped: random" in note
    result = json.loads((runs["tuned"] / "eval" / "rank.json").read_text())
    assert result["by_type"]["q"]["changed"] == 1 and result["by_type"]["v"]["changed"] == 0
    assert result["by_type"]["q"]["mean_effective_rank"] > 1  # over the changed matrix only, not diluted by zeros
    assert main(["rank", str(runs["tuned"]), "--options", '{"no_such_option": 1}']) == 2
    assert "unexpected keyword argument" in capsys.readouterr().err
    assert main(["ranks", str(runs["tuned"])]) == 2
    assert "valid evaluators: math, mtbench, rank, superglue" in capsys.readouterr().err


# Ctrl-C inside the entry point: a real SIGINT to the process, raised where the work happens (patched in before the
# module runs as __main__), so the test does not depend on when a signal lands.
_CTRL_C_INSIDE = """
import os, runpy, signal, sys
import {module} as target
setattr(target, {name!r}, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGINT))
sys.argv = [{entry!r}, *sys.argv[1:]]
runpy.run_module({entry!r}, run_name="__main__", alter_sys=True)
"""


def _ctrl_c_in(entry: str, module: str, name: str, *args: str) -> subprocess.CompletedProcess:
    code = _CTRL_C_INSIDE.format(module=module, name=name, entry=entry)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=default_sigint)


def test_ctrl_c_in_an_evaluator_or_the_plots_is_one_line_not_a_traceback(tmp_path):
    """run_all runs these as child processes: a Ctrl-C during the evaluators (or the tables) printed the child's
    ~50-line KeyboardInterrupt traceback above run_all's own one-line message."""
    (tmp_path / "run").mkdir()
    done = _ctrl_c_in("eval", "eval.rank", "evaluate_runs", "rank", str(tmp_path / "run"))
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == ("stopped by Ctrl-C: each result an evaluator finished is kept in <run_dir>/eval/ "
                                   "(written atomically); rerun to evaluate the rest")
    done = _ctrl_c_in("plots", "plots.tables", "write_table", "--results", str(tmp_path), "--out", str(tmp_path / "o"))
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("stopped by Ctrl-C: every file written so far is whole (each is "
                                                    "written atomically); rerun to write the rest")
