"""benchmarks/badam_vs_official.py on CPU: its workers measure what they claim (tiny Llama, in-process), the earlier
badam/ loads beside ours, and the summary states each ratio against its target."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import badam_bench_worker as bench_worker  # noqa: E402
import badam_vs_official as bench  # noqa: E402


def run_worker(tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    args = bench.parse_args(["--tiny", "--out", str(tmp_path), "--worker", name, "--worker-result", str(out),
                             "--steady-steps", "2", "--accum-steps", "1", "--ratio-steps", "1", "--seq-len", "8",
                             *extra])
    bench_worker.worker(args)
    return json.loads(out.read_text())


def test_block_worker_holds_bf16_gradients_and_fp32_sums_as_designed(tmp_path):
    result = run_worker(tmp_path, "ours")
    assert set(result["phases"]) == {"k1_epoch", "k100_steady", "k100_accum2"}
    hidden, inter, kv = 64, 128, 32  # TINY: q, o 64x64; k, v 32x64; gate, up, down 64x128; two norms of 64
    layer = 2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * inter + 2 * hidden
    steady, accum = result["phases"]["k100_steady"]["memory"], result["phases"]["k100_accum2"]["memory"]
    assert steady["held_after_backward_bytes"] == (4 + 8 + 2) * layer  # master, moments, bf16 p.grad
    assert accum["held_after_backward_bytes"] == (4 + 8 + 2 + 4) * layer  # + the fp32 sum of two micro-batches
    assert result["phases"]["k1_epoch"]["switch_ms"]["count"] == 4 + 2  # a switch after every step


def test_ratio_worker_and_summary(tmp_path):
    ours = run_worker(tmp_path, "ours_ratio")
    memory = ours["phases"]["ratio_steady"]["memory"]
    assert 0 < memory["held_after_step_bytes"] < memory["held_after_backward_bytes"]  # gradients gone after step
    theirs = {"optimizer": "official_ratio", "phases": {"ratio_steady": json.loads(json.dumps(
        ours["phases"]["ratio_steady"]))}}
    theirs["phases"]["ratio_steady"]["memory"]["optimizer_bytes"] *= 2
    meta = {"date": "d", "device": "cpu", "torch": "t", "transformers": "x", "command": "c", "model": "m",
            "batch_size": 2, "seq_len": 8, "before_rev": "r", "update_ratio": 0.1}
    table = bench.markdown({"ours_ratio": ours, "official_ratio": theirs, "official": {"error": "worker exited"}},
                           meta)
    assert "| ratio_steady | n/a | 0.500 |" in table and "memory: yes" in table
    assert "| k1_epoch | official | error: worker exited |" in table


def test_before_loads_an_earlier_badam_beside_ours(tmp_path):
    shutil.copytree(REPO / "badam", tmp_path / "badam", ignore=shutil.ignore_patterns("__pycache__"))
    module = bench_worker.load_badam_at(str(tmp_path), module_name="badam_before_test")
    import badam

    assert module.BlockOptimizer is not badam.BlockOptimizer and module.__name__ == "badam_before_test"
    with pytest.raises(RuntimeError, match="no badam/__init__.py"):
        bench_worker.load_badam_at(str(tmp_path / "badam"), module_name="badam_before_missing")


def test_bad_arguments_name_the_valid_choices(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", "x", "--optimizers", "ours,theirs"])
    assert "valid choices are ours, before, official, ours_nockpt, ours_ratio, official_ratio" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", "x", "--phases", "k2_epoch"])
    assert "valid choices are k1_epoch, k100_steady, k100_accum2, ratio_steady" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", "x", "--repeats", "0"])


def _with_step(result, phase, step_ms):
    copy = json.loads(json.dumps(result))
    copy["phases"][phase]["median_ms"]["step"] = step_ms
    return copy


def test_repeats_give_paired_bands_and_a_target_is_met_only_by_the_whole_band(tmp_path):
    ours = run_worker(tmp_path, "ours", "--phases", "k100_steady")
    assert set(ours["phases"]) == {"k100_steady"}
    compute = ours["phases"]["k100_steady"]["compute"]
    assert compute["model_flops_per_step"] > 0 and compute["mfu"] is None  # no bf16 peak for a CPU
    official = {**ours, "optimizer": "official"}
    meta = {"date": "d", "device": "cpu", "torch": "t", "transformers": "x", "command": "c", "model": "m",
            "batch_size": 2, "seq_len": 8, "before_rev": "r", "update_ratio": 0.1, "repeats": 3,
            "phases": ["k100_steady"]}
    results = {"ours": [_with_step(ours, "k100_steady", v) for v in (100.0, 90.0, 95.0)],
               "official": [_with_step(official, "k100_steady", v) for v in (98.0, 100.0, 100.0)]}
    table = bench.markdown(results, meta)
    # ours / 1.4 per repeat: 1.020, 0.900, 0.950: the band holds 1, so neither faster nor slower
    assert "| k100_steady | n/a | n/a | 1.000 | ≈ 1 (0.900-1.020) |" in table
    assert "time vs 1.4: undecided (band straddles the target)" in table
    results["ours"] = [_with_step(ours, "k100_steady", v) for v in (80.0, 85.0, 88.0)]
    assert "time vs 1.4: yes" in bench.markdown(results, meta)
    assert "| k100_steady | ours | 3 |" in bench.markdown(results, meta)


def test_ours_without_checkpointing_and_the_profile_diff(tmp_path):
    profiles = tmp_path / "profiles"
    for name in ("ours", "ours_nockpt"):
        result = run_worker(tmp_path, name, "--phases", "k100_steady", "--profile-dir", str(profiles))
        assert result["activation_checkpointing"] == (name == "ours")
    diffs = bench.profile_diffs(profiles)
    assert "| phase | ours host ms | ours_nockpt host ms |" in diffs and "| backward |" in diffs
    assert (profiles / "profile_diff_ours_vs_ours_nockpt_K100_micro1.md").is_file()
    doc = json.loads((profiles / "profile_ours_K100_micro1.json").read_text())
    assert set(doc["phases"]) == {"forward", "backward", "update"} and doc["phases"]["backward"]["calls"] == 3


def test_a_session_keeps_finished_repeats_reruns_an_incomplete_one_whole_and_stops_at_its_deadline(tmp_path,
                                                                                                     monkeypatch):
    measured = run_worker(tmp_path, "ours", "--phases", "k100_steady")
    calls = []

    def fake_worker(name, args, out, env, *, repeat=1, profile=True):  # what run_worker leaves behind, without a run
        calls.append((name, repeat))
        result = {**measured, "optimizer": name, "settings": bench.settings_of(args)}
        (out / f"{name}_rep{repeat}.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    out = tmp_path / "bench"
    argv = ["--tiny", "--out", str(out), "--optimizers", "ours,official", "--phases", "k100_steady", "--repeats", "2"]
    assert bench.main([*argv, "--launch-deadline", "1e-9"]) == 3  # repeat 1 always runs; repeat 2 would not fit
    assert calls == [("ours", 1), ("official", 1)]
    assert json.loads((out / "meta.json").read_text())["repeats"] == 1
    calls.clear()
    assert bench.main(argv) == 0 and calls == [("ours", 2), ("official", 2)]  # repeat 1 kept
    assert "| k100_steady | ours | 2 |" in (out / "summary.md").read_text()
    (out / "official_rep2.json").unlink()  # a repeat left incomplete runs again whole: pairs come from one session
    calls.clear()
    assert bench.main(argv) == 0 and calls == [("ours", 2), ("official", 2)]
    calls.clear()
    assert bench.main([*argv, "--fresh"]) == 0 and len(calls) == 4


def test_finished_repeats_of_other_settings_or_a_missing_official_stop_before_any_worker(tmp_path, monkeypatch, capsys):
    """A later call with other --phases / --seq-len kept the finished repeats as if they were of its settings (the
    summary showed the old phase, meta.json the new settings); without badam 1.4 every repeat's official worker
    failed with a traceback of its own. Both are now one line, exit 2, nothing run or replaced."""
    monkeypatch.setattr(bench, "run_worker", lambda *a, **k: pytest.fail("a worker was started"))
    out = tmp_path / "bench"
    out.mkdir()
    argv = ["--tiny", "--out", str(out), "--optimizers", "ours", "--phases", "k100_steady", "--repeats", "2"]
    kept = {"optimizer": "ours", "model": "tiny-llama", "batch_size": 2, "seq_len": 32, "phases": {"k100_steady": {}}}
    (out / "ours_rep1.json").write_text(json.dumps({**kept, "settings": bench.settings_of(bench.parse_args(argv))}))
    (out / "ours_rep2.json").write_text(json.dumps(kept))   # written before results recorded their settings
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra, difference in [(["--phases", "k1_epoch"], "phases ['k100_steady'] there, ['k1_epoch'] now"),
                              (["--seq-len", "64"], "seq_len 32 there, 64 now"),
                              (["--steady-steps", "9"], "steady_steps 4 there, 9 now")]:
        assert bench.main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a finished repeat of other settings (" in err[0] and difference in err[0]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert bench.main([*argv, "--optimizers", "ours,official", "--official-path", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith(f"error: official badam 1.4 not found under {tmp_path / 'none'} "
                                              "(needed by official): pass --official-path")


def test_timed_steps_start_from_a_collected_frozen_heap_and_record_the_collector(tmp_path, monkeypatch):
    """Every worker's timed loop starts from the same state (bench v3's forward gap: 1.4's constructor collected the
    heap, ours did not); --no-settle keeps the former behaviour; the collector's work inside the timed forwards is
    recorded."""
    import gc

    frozen_during_forward = []
    real_build = bench_worker.build_model

    def build_with_probe(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: frozen_during_forward.append(gc.get_freeze_count()))
        return model

    monkeypatch.setattr(bench_worker, "build_model", build_with_probe)
    phase = run_worker(tmp_path, "ours", "--phases", "k100_steady")["phases"]["k100_steady"]
    baseline_forwards = 2  # activation_baseline, before any phase
    assert frozen_during_forward[:baseline_forwards] == [0, 0]
    timed = frozen_during_forward[baseline_forwards:]
    assert len(timed) == 3 + 2 and min(timed) > 0  # warm-up + measured steps ran with the heap frozen
    assert gc.get_freeze_count() == 0  # unfrozen when the phase ends
    assert phase["settled"] is True and len(phase["forward_ms_per_step"]) == 2
    assert set(phase["gc"]["collections"]) == {"gen0", "gen1", "gen2"} and phase["gc"]["ms"] >= 0.0

    frozen_during_forward.clear()
    phase = run_worker(tmp_path, "official", "--phases", "k100_steady", "--no-settle")["phases"]["k100_steady"]
    assert phase["settled"] is False and frozen_during_forward == [0] * 7


def test_gc_watch_counts_collections_and_the_part_inside_a_timed_span():
    import gc

    with bench_worker.GcWatch() as watch:
        gc.collect()  # outside any span
        watch.open_span()
        gc.collect()
        inside = watch.close_span()
    assert watch.collections[2] == 2 and inside > 0.0 and watch.total_ms > inside
    gc.collect()  # after __exit__: not counted
    assert watch.collections[2] == 2
    summary = watch.summary([inside, 0.0])
    assert summary["in_forward_ms"] == inside == summary["in_forward_ms_max"]


def test_results_from_before_settling_count_as_unsettled(tmp_path):
    args = bench.parse_args(["--tiny", "--out", str(tmp_path)])
    old = {k: v for k, v in bench.settings_of(args).items() if k != "settle"}
    assert bench._differences({"settings": old}, args) == ["settle False there, True now"]
    args = bench.parse_args(["--tiny", "--out", str(tmp_path), "--no-settle"])
    assert bench._differences({"settings": old}, args) == []
