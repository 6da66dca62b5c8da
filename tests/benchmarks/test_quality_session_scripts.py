"""scripts/gpu/quality_session.sh parses; restore_runs.py puts committed runs into a fresh output directory and leaves
out exactly the runs whose weights an evaluator still needs; evaluate_when_done.py waits for the evaluated runs."""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _session_phase(tmp_path: Path, phase: str):
    """A function running quality_session.sh PHASE in tmp_path (its .gpu/ folder) with the cache there."""
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "BADAM_BENCH_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    script = REPO / "scripts" / "gpu" / "quality_session.sh"
    return lambda: subprocess.run(["bash", str(script), phase], capture_output=True, text=True, cwd=tmp_path, env=env)


def _assert_bad_pieces_are_named(run_phase, piece: Path, folder: str, source: Path, count: int, target: str,
                                 cache: Path) -> None:
    """A damaged piece (right size, wrong bytes) and then a missing one are named by the phase's join; with every
    piece back the join reports the digest of the bytes joined in order (the source's: not the model, refused) and
    nothing reaches the cache."""
    import hashlib

    good = piece.read_bytes()
    piece.write_bytes(bytes(len(good)))
    done = run_phase()
    assert done.returncode == 1 and f"{folder} pieces damaged (sha256): {piece.parent.name}" in done.stderr
    piece.unlink()
    done = run_phase()
    assert done.returncode == 1 and f"{folder} pieces missing: {piece.parent.name}" in done.stderr
    piece.write_bytes(good)
    done = run_phase()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert done.returncode == 1 and f"{target}: sha256 mismatch ({digest}) from {count} pieces" in done.stderr
    assert not any((cache / "models").iterdir())


PROFILE = {"runs": [{"config": "x.yaml", "group": "sweep_m", "methods": ["adam", "badam"]},
                    {"config": "x.yaml", "group": "paper_m", "methods": ["adam", "badam", "lomo"]}],
           "evaluators": [{"name": "rank", "groups": ["paper_m"], "methods": ["adam", "badam"]},
                          {"name": "mtbench", "groups": ["paper_m"], "methods": ["adam", "badam"]}]}


def _run(root: Path, group: str, name: str, method: str, *, status: str = "ok", save_model: bool = False) -> Path:
    run = root / group / name
    run.mkdir(parents=True)
    summary = {"status": status, "method": method, "config": {"output": {"save_model": save_model}}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _answers(count: int) -> str:
    return "".join(json.dumps({"question_id": i, "choices": [{"turns": ["a", "b"]}]}) + "\n" for i in range(count))


def test_restore_keeps_finished_runs_and_retrains_those_an_evaluator_needs(tmp_path):
    restore_runs = _script("restore_runs")
    results, out = tmp_path / "results", tmp_path / "out"
    _run(results, "sweep_m", "x-adam-lr1e-05", "adam")
    _run(results, "sweep_m", "x-badam-lr1e-05", "badam", status="error")
    (results / "sweep_m" / "lr_selection.json").write_text("{}")
    done = _run(results, "paper_m", "x-adam-s0", "adam", save_model=True)      # both evaluator outputs committed
    (done / "eval" / "mtbench" / "model_answer").mkdir(parents=True)
    (done / "eval" / "rank.json").write_text("{}")
    (done / "eval" / "mtbench" / "model_answer" / "x.jsonl").write_text(_answers(80))
    partial = _run(results, "paper_m", "x-badam-s0", "badam", save_model=True)  # 60 of 80 answers
    (partial / "eval" / "mtbench" / "model_answer").mkdir(parents=True)
    (partial / "eval" / "rank.json").write_text("{}")
    (partial / "eval" / "mtbench" / "model_answer" / "x.jsonl").write_text(_answers(60))
    _run(results, "paper_m", "x-lomo-s0", "lomo", save_model=True)               # no evaluator reads lomo
    _run(results, "paper_m", "x-badam-s1", "badam")                              # weights not kept: nothing to redo
    _run(results, "other_group", "x-adam-s0", "adam")                            # not a group of the profile
    kept = _run(out, "paper_m", "x-adam-s1", "adam")                             # already there: left as it is
    restored, retrain = restore_runs.restore(PROFILE, results, out, question_ids=set(range(80)))
    assert sorted(restored) == ["paper_m/x-adam-s0", "paper_m/x-badam-s1", "paper_m/x-lomo-s0",
                                "sweep_m/x-adam-lr1e-05"]
    assert retrain == ["paper_m/x-badam-s0"]
    assert (out / "sweep_m" / "lr_selection.json").is_file() and not (out / "other_group").exists()
    assert not (out / "sweep_m" / "x-badam-lr1e-05").exists() and (kept / "summary.json").is_file()
    assert len((out / "paper_m" / "x-adam-s0" / "eval" / "mtbench" / "model_answer" / "x.jsonl")
               .read_text().splitlines()) == 80


def test_restore_retrains_a_run_whose_math_results_are_incomplete(tmp_path):
    restore_runs = _script("restore_runs")
    profile = {"runs": [{"config": "x.yaml", "group": "paper_math_m", "methods": ["adam", "badam"]}],
               "evaluators": [{"name": "math", "groups": ["paper_math_m"],
                               "options": {"base": True, "datasets": "sat", "limit": {"sat": 2}, "jobs_per_gpu": 3}}]}
    results, out = tmp_path / "results", tmp_path / "out"
    for method, total in (("adam", 2), ("badam", 1)):
        run = _run(results, "paper_math_m", f"x-{method}-s0", method, save_model=True)
        (run / "eval").mkdir()
        (run / "eval" / "math.json").write_text(json.dumps({
            "settings": {"prompt_style": "alpaca", "max_new_tokens": 512}, "datasets": {"sat": {"total": total}}}))
    _run(results, "paper_math_m", "x-base", "base")
    restored, retrain = restore_runs.restore(profile, results, out, question_ids=set())
    assert sorted(restored) == ["paper_math_m/x-adam-s0", "paper_math_m/x-base"]
    assert retrain == ["paper_math_m/x-badam-s0"]


def test_restore_keeps_math_runs_unchecked_when_the_math_data_is_not_here(tmp_path, monkeypatch, capsys):
    # the Gemma session carries no math data: restoring the whole profile stopped with MathDataError (2026-11-26)
    restore_runs = _script("restore_runs")
    def no_data(*_args, **_kwargs):
        raise restore_runs.MathDataError("math dataset 'gsm8k': data file not found: /nowhere/gsm8k.jsonl.gz")
    monkeypatch.setattr(restore_runs, "math_results_complete", no_data)
    profile = {"runs": [{"config": "x.yaml", "group": "paper_math_m", "methods": ["adam"]}],
               "evaluators": [{"name": "math", "groups": ["paper_math_m"], "options": {"datasets": "gsm8k"}}]}
    results, out = tmp_path / "results", tmp_path / "out"
    run = _run(results, "paper_math_m", "x-adam-s0", "adam", save_model=True)
    (run / "eval").mkdir()
    (run / "eval" / "math.json").write_text(json.dumps({"datasets": {"gsm8k": {"total": 3}}}))
    restored, retrain = restore_runs.restore(profile, results, out, question_ids=set())
    assert restored == ["paper_math_m/x-adam-s0"] and retrain == []
    assert "math results kept unchecked" in capsys.readouterr().err


def test_restore_takes_group_patterns_and_reads_no_mtbench_data_for_other_groups(tmp_path, monkeypatch):
    # math-start restores '*_m' only: the MT-bench questions (read for paper_m's evaluator) are not carried there
    restore_runs = _script("restore_runs")
    profile = {"runs": PROFILE["runs"] + [{"config": "y.yaml", "group": "paper_math_m", "methods": ["adam"]}],
               "evaluators": PROFILE["evaluators"]}
    monkeypatch.setattr(restore_runs, "load_questions", lambda: pytest.fail("MT-bench questions read"))
    results, out = tmp_path / "results", tmp_path / "out"
    _run(results, "paper_math_m", "y-adam-s0", "adam")
    _run(results, "paper_m", "x-adam-s0", "adam")
    restored, _ = restore_runs.restore(profile, results, out, groups=["*_math_m"])
    assert restored == ["paper_math_m/y-adam-s0"] and not (out / "paper_m").exists()


def test_restore_selects_the_groups_run_all_selects_and_refuses_a_pattern_it_would_refuse(tmp_path, capsys):
    """restore_runs and run_all share experiments.suite.select_groups: a name that is no group of the profile (here a
    folder of results/ that an older profile had) restores nothing and is refused, as run_all refuses it, instead of
    being copied into the output directory (restore_runs' own fnmatch.filter fell back on the literal name)."""
    from experiments import run_all
    from experiments.config import ConfigError

    restore_runs = _script("restore_runs")
    results, out = tmp_path / "results", tmp_path / "out"
    _run(results, "paper_m", "x-adam-s0", "adam")
    _run(results, "retired_m", "x-adam-s0", "adam")                              # in results/, not in the profile
    profile = {**PROFILE, "name": "p"}
    with pytest.raises(ConfigError, match=r"unknown group\(s\) retired_m; groups of profile p: paper_m, sweep_m"):
        run_all.plan_runs(profile, output_root=out, only_groups=["paper_*", "retired_m"])
    with pytest.raises(ConfigError, match=r"unknown group\(s\) retired_m; groups of profile p: paper_m, sweep_m"):
        restore_runs.restore(profile, results, out, question_ids=set(), groups=["paper_*", "retired_m"])
    assert not out.exists()
    restored, _ = restore_runs.restore(profile, results, out, question_ids=set(), groups=["paper_*", "*_m"])
    assert restored == ["paper_m/x-adam-s0"]      # patterns select the same groups as run_all's, each once
    profile_file = tmp_path / "p.yaml"
    profile_file.write_text(json.dumps({"runs": [{"config": "small/smollm2_alpaca.yaml", "group": "paper_m",
                                                  "methods": ["adam"]}]}))
    assert restore_runs.main(["--profile", str(profile_file), "--results", str(results), "--output-dir",
                              str(tmp_path / "out2"), "--groups", "retired_m"]) == 2
    assert capsys.readouterr().err.strip() == "error: --groups names unknown group(s) retired_m; groups of profile p: " \
                                              "paper_m"
    assert not (tmp_path / "out2").exists()


def test_quality_session_parses_and_refuses_an_unknown_phase(tmp_path):
    script = REPO / "scripts" / "gpu" / "quality_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(script), "train"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "unknown phase train" in done.stderr
    prepare = REPO / "scripts" / "gpu" / "prepare_carry.sh"
    assert subprocess.run(["bash", "-n", str(prepare)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(prepare), "--with-judge", "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "valid: --with-optional, --with-judge, --with-mpnet, --with-math" in done.stderr  # .gpu untouched


def test_evaluators_wait_for_the_runs_that_keep_weights_for_them(tmp_path):
    from experiments.run_all import load_profile

    evaluate_when_done = _script("evaluate_when_done")
    profile = load_profile("quality-gpu")
    gemma = [f"gemma3_270m_alpaca-{m}-s0" for m in ("adam", "badam", "lisa", "lora")]
    math = [f"qwen25_coder_05b_gsm8k-{m}-s0" for m in ("adam", "badam", "galore", "lomo", "lora")]
    awaited = evaluate_when_done.awaited_runs(profile, tmp_path)
    assert sorted(item.run_dir.name for item in awaited) == gemma + math
    # a session that trains one model's part waits for that part only (the groups as run_all's --groups)
    assert sorted(i.run_dir.name for i in evaluate_when_done.awaited_runs(profile, tmp_path, ["*_gemma3_270m"])) == gemma
    assert sorted(i.run_dir.name for i in evaluate_when_done.awaited_runs(
        profile, tmp_path, ["paper_math_qwen25_coder_05b"])) == math
    assert evaluate_when_done.awaited_runs(profile, tmp_path, ["lr_sweep_*"]) == []   # no evaluator reads a sweep
    assert evaluate_when_done.main(["--profile", "quality-gpu", "--output-dir", str(tmp_path), "--poll", "0.01",
                                    "--timeout", "0.05", "--groups", "*_gemma3_270m"]) == 3   # gives up, trains nothing
    assert not any(tmp_path.iterdir())


def test_judge_phase_names_missing_pieces_and_refuses_a_wrong_join(tmp_path):
    import os
    import sys

    script = REPO / "scripts" / "gpu" / "quality_session.sh"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BADAM_BENCH_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    judge = tmp_path / ".gpu" / "judge"
    for name in ("j01", "j02"):
        (judge / name).mkdir(parents=True)
    (judge / "j01" / "manifest.txt").write_text("j01/judge.part01 5\nj02/judge.part02 3\nj03/judge.part03 3\n")
    (judge / "j01" / "judge.part01").write_bytes(b"GGUF1")
    (judge / "j02" / "judge.part02").write_bytes(b"22")                     # cut short on the way
    done = subprocess.run(["bash", str(script), "judge"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "judge pieces missing: j02 j03" in done.stderr and "incomplete: 1 of 3 pieces here" in done.stderr
    (judge / "j02" / "judge.part02").write_bytes(b"222")
    (judge / "j03").mkdir()
    (judge / "j03" / "judge.part03").write_bytes(b"333")
    done = subprocess.run(["bash", str(script), "judge"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 1 and "qwen2.5-coder-1.5b-instruct.gguf: sha256 mismatch" in done.stderr
    assert "from 3 pieces" in done.stderr and not any((tmp_path / "cache" / "models").iterdir())


def test_restore_brings_superglue_run_directories_with_the_tasks_they_finished(tmp_path):
    """A SuperGLUE run directory has no summary.json (its tasks are runs of their own under tasks/): it comes back
    with its eval/superglue.json, so that the evaluator skips the tasks done in an earlier session."""
    restore_runs = _script("restore_runs")
    results, out = tmp_path / "results", tmp_path / "out"
    profile = {"runs": [{"config": "x.yaml", "group": "paper_superglue_m", "methods": ["adam", "badam"]}]}
    for name in ("m-adam-s0", "m-badam-s0"):
        (results / "paper_superglue_m" / name / "eval").mkdir(parents=True)
        (results / "paper_superglue_m" / name / "eval" / "superglue.json").write_text('{"tasks": {}}')
    (out / "paper_superglue_m" / "m-badam-s0").mkdir(parents=True)              # already there: left as it is
    profile["evaluators"] = [{"name": "mtbench", "groups": ["paper_m"]}]
    restored, retrain = restore_runs.restore(profile, results, out, groups=["paper_superglue_m"])  # no MT-bench data
    assert restored == ["paper_superglue_m/m-adam-s0"] and retrain == []
    assert (out / "paper_superglue_m" / "m-adam-s0" / "eval" / "superglue.json").is_file()
    assert not (out / "paper_superglue_m" / "m-badam-s0" / "eval").exists()


def test_math_pieces_rejoin_byte_for_byte_and_a_bad_piece_is_named(tmp_path):
    import os

    carry_gguf = _script("carry_gguf")
    source = tmp_path / "model.gguf"
    source.write_bytes(os.urandom(10_000))
    pieces = tmp_path / ".gpu" / "math"
    lines = carry_gguf.cut(source, pieces, "m", 3000, 4000)
    assert [line.split()[:2] for line in lines] == [["m01/math.part01", "3000"], ["m02/math.part02", "4000"],
                                                    ["m03/math.part03", "3000"]]
    assert (pieces / "m01" / "manifest.txt").read_text().splitlines() == lines
    assert b"".join((pieces / line.split()[0]).read_bytes() for line in lines) == source.read_bytes()
    try:
        carry_gguf.cut(source, pieces, "m", 3000, 4000)
        raise AssertionError("cut wrote into an existing folder")
    except FileExistsError:
        pass

    math_start = _session_phase(tmp_path, "math-start")
    third = pieces / "m03" / "math.part03"
    good = third.read_bytes()
    third.unlink()
    done = math_start()
    assert done.returncode == 1 and "math GGUF incomplete: 2 of 3 pieces here" in done.stderr
    third.write_bytes(good)
    _assert_bad_pieces_are_named(math_start, pieces / "m02" / "math.part02", "math", source, 3,
                                 "qwen2.5-coder-0.5b-instruct.gguf", tmp_path / "cache")


def test_gemma_pieces_are_cut_by_carry_gguf_and_joined_in_order_with_each_sha256(tmp_path):
    """prepare_carry.sh cuts the Gemma GGUF with carry_gguf.py (as the judge and math models): .gpu/parts/pNN/
    gemma.partNN with a manifest in p01. quality_session.sh's join_gguf joins them in manifest order (p10 after p09),
    names a missing or damaged piece, and refuses pieces of the older cutter (p1/gemma.part1, no manifest)."""
    import os
    import shutil
    import sys

    source = tmp_path / "gemma.gguf"
    source.write_bytes(os.urandom(10_500))
    pieces = tmp_path / ".gpu" / "parts"
    cut = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "carry_gguf.py"), str(source), "--out",
                          str(pieces), "--prefix", "p", "--name", "gemma", "--first-mib", "1", "--rest-mib", "1"],
                         capture_output=True, text=True)
    assert cut.returncode == 0, cut.stderr
    assert (pieces / "p01" / "gemma.part01").read_bytes() == source.read_bytes()   # as prepare_carry.sh calls it
    shutil.rmtree(pieces)
    lines = _script("carry_gguf").cut(source, pieces, "p", 500, 1000, name="gemma")   # the same cut, small pieces
    assert len(lines) == 11 and lines[9].split()[:2] == ["p10/gemma.part10", "1000"]
    assert (pieces / "p01" / "manifest.txt").read_text().splitlines() == lines

    attention = _session_phase(tmp_path, "attention")   # the first thing the phase does is join_gguf
    _assert_bad_pieces_are_named(attention, pieces / "p10" / "gemma.part10", "parts", source, 11,
                                 "gemma-3-270m-q4_k_m.gguf", tmp_path / "cache")
    shutil.rmtree(pieces)
    (pieces / "p1").mkdir(parents=True)
    (pieces / "p1" / "gemma.part1").write_bytes(source.read_bytes())
    done = attention()
    assert done.returncode == 1 and "cut by an older prepare_carry.sh" in done.stderr


class _RecordingPool:
    """Stands in for eval.runs.GpuPool: records the commands, each 'finishes' at once with exit code 0."""

    def __init__(self):
        self.commands, self.codes = [], []

    def submit(self, command):
        self.commands.append(command)
        self.codes.append(0)
        return len(self.codes) - 1

    def poll(self):
        return True


def test_each_run_goes_to_its_evaluator_when_final_and_the_base_model_at_once(tmp_path):
    from experiments.run_all import load_profile

    evaluate_when_done = _script("evaluate_when_done")
    profile = load_profile("quality-gpu")
    wanted = evaluate_when_done.awaited_runs(profile, tmp_path, ["*_qwen25_coder_05b"])
    assert len(wanted) == 5
    pool = _RecordingPool()
    # nothing final: the base model is handed over at once, then the wait times out
    assert evaluate_when_done.evaluate_each(profile, wanted, tmp_path, pool, poll=0.01, timeout=0.05) == 3
    base = tmp_path / "paper_math_qwen25_coder_05b" / "qwen25_coder_05b_gsm8k-base"
    assert json.loads((base / "summary.json").read_text())["model"] == "qwen2.5-coder-0.5b-instruct"
    assert [c[3:5] for c in pool.commands] == [["math", str(base)]]
    options = json.loads(pool.commands[0][-1])
    assert "base" not in options and "jobs_per_gpu" not in options and options["limit"] == {"math": 1000}
    chosen = _settle_sweep(profile, tmp_path, wanted)
    for item in wanted:
        _final(item, chosen[item.method])
    pool = _RecordingPool()
    assert evaluate_when_done.evaluate_each(profile, wanted, tmp_path, pool, poll=0.01, timeout=5) == 0
    assert sorted(c[4] for c in pool.commands) == sorted([str(base)] + [str(i.run_dir) for i in wanted])


def _final(item, lr: float, loss: float = 1.0) -> None:
    item.run_dir.mkdir(parents=True, exist_ok=True)
    (item.run_dir / "summary.json").write_text(json.dumps({"status": "ok", "method": item.method,
                                                            "final_eval_loss": loss,
                                                            "config": {"method": {"lr": lr}}}))


def _settle_sweep(profile: dict, root: Path, wanted: list, *, edge_method: str | None = None):
    """Final runs at every lr of the sweep the `wanted` runs take their lr from, the best loss at the grid's second
    lr (inside: no extension due), or for `edge_method` at its lowest lr (an extension due, not yet run); returns
    {method: the lr its sweep chooses}."""
    from experiments.run_all import plan_runs

    sweep = {item.lr_from for item in wanted}
    assert len(sweep) == 1
    chosen, runs = {}, [p for p in plan_runs(profile, output_root=root) if p.group in sweep]
    for item in runs:
        lrs = sorted(p.cfg.method.lr for p in runs if p.method == item.method)
        best = lrs[0] if item.method == edge_method else lrs[1]
        _final(item, item.cfg.method.lr, loss=1.0 if item.cfg.method.lr == best else 2.0)
        chosen[item.method] = best
    return chosen


def test_a_run_restored_at_an_lr_its_sweep_no_longer_chooses_is_not_evaluated(tmp_path):
    """A follow-up run restored from an earlier session at another lr (its sweep's choice moved) is not final: run_all
    moves it aside and trains it again, and evaluating it first scored the superseded run; nor is one whose sweep
    still has an extension to run at the edge of its grid."""
    from experiments.run_all import load_profile, plan_runs

    evaluate_when_done = _script("evaluate_when_done")
    profile = load_profile("quality-gpu")
    wanted = evaluate_when_done.awaited_runs(profile, tmp_path, ["*_qwen25_coder_05b"])
    plan = plan_runs(profile, output_root=tmp_path)
    for item in wanted:          # restored runs, all final, none yet with a sweep to compare with
        _final(item, 1e-3)
    assert evaluate_when_done.final_runs(wanted, plan, tmp_path) == []
    chosen = _settle_sweep(profile, tmp_path, wanted, edge_method="lora")
    stale, *others = [i for i in wanted if i.method != "lora"]
    for item in others:
        _final(item, chosen[item.method])
    lora = next(i for i in wanted if i.method == "lora")
    _final(lora, chosen["lora"])                         # at the choice, but an extension past the edge is due
    names = lambda runs: sorted(i.run_dir.name for i in runs)  # noqa: E731
    assert chosen[stale.method] != 1e-3
    assert names(evaluate_when_done.final_runs(wanted, plan, tmp_path)) == names(others)
    _final(stale, chosen[stale.method])                  # trained again at the chosen lr
    assert names(evaluate_when_done.final_runs(wanted, plan, tmp_path)) == names([stale, *others])


def _session_env(tmp_path: Path) -> dict:
    """The environment of a quality_session.sh call on this machine: the repository importable, a fake nvidia-smi
    (the phases print the GPUs' state), $OUT under tmp_path."""
    import os
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'name, memory.used'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return {**os.environ, "PYTHONPATH": str(REPO), "BADAM_BENCH_CACHE": str(tmp_path / "cache"),
            "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}


def test_superglue_sweep_phases_refuse_without_the_model_and_pack_both_groups_when_done(tmp_path):
    import tarfile

    from tests.plots.synthetic import write_superglue

    script = REPO / "scripts" / "gpu" / "quality_session.sh"
    env = _session_env(tmp_path)
    done = subprocess.run(["bash", str(script), "superglue-sweep"], capture_output=True, text=True, cwd=tmp_path,
                          env=env)
    assert done.returncode == 1 and "mpnet copy incomplete: 0 of ?" in done.stderr   # nothing started without it
    assert not (tmp_path / "runs").exists()
    # as the background run_all leaves it: the sweep scored, the seeds' run directory half done, the log, DONE
    out_root = tmp_path / "runs" / "quality-gpu"
    write_superglue(out_root, "lr_sweep_superglue_mpnet", "mpnet_superglue-badam-lr3e-05-s0", method="badam", lr=3e-5,
                    seed=0, test={"copa": 61.5, "rte": "oom"})
    seed_run = out_root / "paper_superglue_mpnet_sweptlr" / "mpnet_superglue-badam-s1"
    (seed_run / "tasks" / "copa").mkdir(parents=True)
    (seed_run / "tasks" / "copa" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (out_root / "superglue_sweep.log").write_text("run_all output\n")
    (out_root / "superglue_sweep.exit").write_text("0\n")
    (out_root / "SUPERGLUE_SWEEP_DONE").touch()
    done = subprocess.run(["bash", str(script), "superglue-sweep-wait", "30"], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "lr_sweep_superglue_mpnet/mpnet_superglue-badam-lr3e-05-s0: copa 61.5, rte oom" in done.stdout
    assert "paper_superglue_mpnet_sweptlr/mpnet_superglue-badam-s1: no task done; copa running, 2 steps" in done.stdout
    assert "superglue_sweep done, run_all exit code 0" in done.stdout
    with tarfile.open(tmp_path / "out" / "quality-superglue-sweep.tgz") as packed:
        names = packed.getnames()
    assert "quality-gpu/superglue_sweep.log" in names
    assert "quality-gpu/lr_sweep_superglue_mpnet/mpnet_superglue-badam-lr3e-05-s0/eval/superglue.json" in names
    assert "quality-gpu/paper_superglue_mpnet_sweptlr/mpnet_superglue-badam-s1/tasks/copa/metrics.jsonl" in names
    assert not any("paper_superglue_mpnet/" in n for n in names)          # the paper-lr group has its own phase


def test_validate_judge_phase_needs_the_reference_answers_then_validates_and_packs(tmp_path):
    """validate-judge refuses before joining anything while the reference answers are not carried; with them, and
    the judgments a first (GPU) call left, a second call judges nothing (no model is loaded, none is here), writes the
    validation and packs the folder for results/. The join and conversion are judge_phase's, tested above; here they
    are stood in for, through the script's own functions (sourced)."""
    import shutil
    import tarfile

    from eval.mtbench.data import default_data_dir, load_judge_prompts, load_questions
    from eval.mtbench.judge import make_single_judges, pick_judge

    env = _session_env(tmp_path)
    script = REPO / "scripts" / "gpu" / "quality_session.sh"
    mt_bench = tmp_path / ".gpu" / "shared" / "data" / "mt_bench"
    mt_bench.mkdir(parents=True)
    for name in ("question.jsonl", "judge_prompts.jsonl", "reference_answer"):
        (shutil.copytree if name == "reference_answer" else shutil.copy)(default_data_dir() / name, mt_bench / name)
    done = subprocess.run(["bash", str(script), "validate-judge"], capture_output=True, text=True, cwd=tmp_path,
                          env=env)
    assert done.returncode == 1 and "reference answers missing in" in done.stderr
    assert "gpt-4.jsonl gpt-3.5-turbo.jsonl vicuna-7b-v1.3.jsonl alpaca-13b.jsonl llama-13b.jsonl" in done.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()   # nothing joined or judged

    shutil.copytree(default_data_dir() / "model_answer", mt_bench / "model_answer")
    judge = "qwen2.5-coder-1.5b-instruct"
    out = tmp_path / "runs" / "mtbench_judge_validation" / judge
    judges = make_single_judges(judge, load_judge_prompts())
    rating = {"gpt-4": 9, "gpt-3.5-turbo": 8, "vicuna-7b-v1.3": 6, "alpaca-13b": 4, "llama-13b": 3}
    records = [{"question_id": q["question_id"], "model": model, "judge": list(pick_judge(judges, q["category"],
                                                                                          turn).key),
                "user_prompt": "...", "judgment": f"[[{score}]]", "score": score, "turn": turn, "tstamp": 0.0}
               for model, score in rating.items() for q in load_questions() for turn in (1, 2)]
    (out / "model_judgment").mkdir(parents=True)
    (out / "model_judgment" / f"{judge}_single.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    phase = (f"source '{script}' validate-judge\n"
             "judge_ready() { echo 'stand-in: the judge is joined and converted'; }\n"
             "validate_judge_phase 300\n")
    done = subprocess.run(["bash", "-c", phase], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "judge exit code: 0" in done.stdout and "judging stopped" not in done.stdout
    assert (f"**Verdict: {judge} orders the 5 reference models as GPT-4 did: yes (Kendall tau=1.00, Spearman "
            "rho=1.00, 10 of 10 pairs in GPT-4's order).**") in done.stdout
    with tarfile.open(tmp_path / "out" / "judge-validation.tgz") as packed:
        names = set(packed.getnames())
    folder = f"mtbench_judge_validation/{judge}"
    assert {f"{folder}/judge_validation.json", f"{folder}/judge_validation.md", f"{folder}/scores_{judge}.json",
            f"{folder}/model_judgment/{judge}_single.jsonl"} <= names

