"""benchmarks/ddp_scaling_plan.py: the ring volume, the bandwidth read from the reduce times, the straggler estimate,
the measured check row and the one-line refusal of inputs it cannot read (synthetic results, hand-computed figures);
the committed plan is what its command writes."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import ddp_scaling_plan as plan  # noqa: E402
from tests.distributed.bench_results import sharded_result, stepped_ddp_result  # noqa: E402

LAYER = 218_112_000  # one Llama 3-8B decoder layer: (8,030,261,248 - 2 x 128,256 x 4096 - 4096) / 32
FP32_BYTES = 4 * LAYER


def _run(single, ddp, **kw) -> dict:
    return stepped_ddp_result(single, ddp, **kw)


def test_ring_volume_and_layer_size():
    assert plan.ring_factor(2) == 1.0 and plan.ring_factor(8) == 1.75  # 2(N-1)/N
    result = _run([[100.0]] * 2, [[[100.0], [100.0]]] * 2)
    assert plan.layer_params(result) == LAYER
    assert plan.gradient_bytes(result) == FP32_BYTES
    assert plan.gradient_bytes({**result, "reduce_dtype": "bf16"}) == 2 * LAYER
    ms, nvlink, net = plan.allreduce_ms(FP32_BYTES, 2, 100.0, 50.0, 8)
    assert (nvlink, net) == (FP32_BYTES, 0.0) and ms == pytest.approx(FP32_BYTES / 100e9 * 1e3)
    ms, nvlink, net = plan.allreduce_ms(FP32_BYTES, 8, 100.0, 50.0, 8)
    assert (nvlink, net) == (1.75 * FP32_BYTES, 0.0)
    # 8 nodes x 8: reduce-scatter + all-gather in the node, each GPU's eighth across the 8 nodes through its NIC
    ms, nvlink, net = plan.allreduce_ms(FP32_BYTES, 64, 100.0, 50.0, 8)
    assert nvlink == 1.75 * FP32_BYTES and net == pytest.approx(1.75 * FP32_BYTES / 8)
    assert ms == pytest.approx((nvlink / 100e9 + net / 50e9) * 1e3)
    with pytest.raises(ValueError, match="whole nodes"):
        plan.allreduce_ms(FP32_BYTES, 12, 100.0, 50.0, 8)


def test_bandwidth_from_the_rank_that_arrived_last():
    """Rank 0: window 3 + tail 1 ms, rank 1: 5 + 1 ms; the shorter span (4 ms) carries 0.872 GB on 2 GPUs."""
    result = _run([[100.0, 100.0]] * 2, [[[104.0, 104.0], [104.0, 104.0]]] * 2, window_ms=[3.0, 5.0], tail_ms=1.0)
    assert plan.reduce_spans(result) == [(3.0, 1.0)] * 4
    assert plan.bus_bandwidth_bound(result) == pytest.approx(FP32_BYTES / 1e9 / 0.004)  # 218.1 GB/s


def test_straggler_is_zero_for_equal_steps_and_grows_with_n():
    equal = _run([[100.0, 120.0, 90.0]] * 3, [[[100.0, 120.0, 90.0]] * 2] * 3)  # blocks differ, rounds agree
    pool = plan.single_residuals(equal)
    assert pool == [0.0] * 9
    for n in (2, 8, 64):
        assert plan.expected_max_excess(pool, n) == pytest.approx(0.0, abs=1e-12)
        assert plan.straggler_ms(pool, n, 50, 0) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    # two values 0 and 10: max of 2 draws is 10 with probability 3/4, so E[max] - E = 7.5 - 5
    assert plan.expected_max_excess([0.0, 10.0], 2) == pytest.approx(2.5)
    assert plan.expected_max_excess([0.0, 10.0], 8) == pytest.approx(10.0 * (1 - 0.5 ** 8) - 5.0)
    noisy = _run([[100.0, 100.0], [110.0, 100.0], [100.0, 130.0]], [[[100.0, 100.0]] * 2] * 3)
    pool = plan.single_residuals(noisy)
    estimates = [plan.straggler_ms(pool, n, 100, 7) for n in (2, 8, 64)]
    assert 0 < estimates[0][0] < estimates[1][0] < estimates[2][0] <= max(pool) - sum(pool) / len(pool)
    assert estimates[0] == plan.straggler_ms(pool, 2, 100, 7)  # the seed fixes the interval
    # residuals: minus the step's mean over the 3 rounds, times sqrt(3 / 2); step 0: 100, 110, 100
    assert pool[:3] == pytest.approx([x * 1.5 ** 0.5 for x in (-10 / 3, 20 / 3, -10 / 3)])


def test_check_row_reads_the_measured_scaling(tmp_path, capsys):
    """Single steps all 100 ms (no noise: straggler 0); ddp steps 104 / 106 ms on the two ranks: measured 100 / 106.
    Exposed: the faster rank's backward excess, 104 / 2 - 100 / 2 = 2 ms; predicted 2-GPU step 102 ms."""
    run = _run([[100.0] * 4] * 2, [[[104.0] * 4, [106.0] * 4]] * 2, window_ms=3.0, tail_ms=1.0)
    path = tmp_path / "llama3-8b_badam_n2_ddp_fp32_vs1x2.json"
    path.write_text(json.dumps(run))
    out = tmp_path / "plan.md"
    assert plan.main([str(path), "--resamples", "20", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "NVLink bus bandwidth 218 GB/s: the tightest MEASURED lower bound" in text
    assert "| 2 | 0.872 GB NVLink | 4.00 | 2.00 | 0.0 [0.0-0.0] | 102.0 | 0.980 | 1.96x |" in text
    assert "| 8 | 1.527 GB NVLink | 7.00 | 5.00 | 0.0 [0.0-0.0] | 105.0 | 0.952 | 7.62x |" in text  # +3 ms exposed
    assert "| 64 | 1.527 GB NVLink + 0.191 GB network | 10.82 | 8.82 |" in text
    assert ("| check: 2 measured | 0.872 GB | span 4.00 | 2.00 | ddp - single 6.0 (noise cost 0.0) | 106.0 | "
            f"{100 / 106:.3f} (rounds {100 / 106:.3f}-{100 / 106:.3f}) | {200 / 106:.2f}x |") in text
    assert f"| N=2: {100 / 106:.3f} ({200 / 106:.2f}x) | 0.980 (1.96x) | 0.952 (7.62x) |" in text
    assert "python benchmarks/ddp_scaling_plan.py " + str(path) in text  # the command that wrote it
    # an assumed network bandwidth only moves the 64-GPU row
    assert plan.main([str(path), "--resamples", "20", "--internode-gbps", "200"]) == 0
    assert "| 64 | 1.527 GB NVLink + 0.191 GB network | 14.63 | 12.63 |" in capsys.readouterr().out
    assert plan.main([str(path), "--resamples", "20", "--by-folder"]) == 0  # machines (folders) apart
    assert f"### llama3-8b badam, batch 2 x 8 per GPU, fp32 all-reduce, eager layers, {tmp_path.name}\n" in \
        capsys.readouterr().out


@pytest.mark.parametrize("case, says", [
    ("fsdp2", "a fsdp2 result, not --mode ddp"),
    ("no_timing", "without reduce_window_ms / reduce_tail_ms"),
    ("one_round", "fewer than 2 single-GPU rounds"),
    ("lora", "method lora"),
    ("not_json", "unreadable"),
])
def test_bad_input_gives_one_line_naming_the_file(tmp_path, capsys, case, says):
    good = _run([[100.0]] * 2, [[[104.0], [104.0]]] * 2)
    for phase in good["per_rank"][1]["phases"]:
        del phase["steps"][0]["reduce_window_ms"]
    content = {"fsdp2": sharded_result(2, 100.0, "A"), "no_timing": good, "lora": {**good, "method": "lora"},
               "one_round": _run([[100.0]], [[[104.0], [104.0]]])}.get(case)
    path = tmp_path / f"{case}.json"
    path.write_text("{" if content is None else json.dumps(content))
    assert plan.main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line, = captured.err.splitlines()
    assert line.startswith(f"error: {path}: ") and says in line
    assert "expected a `benchmarks/multi_gpu.py --mode ddp --compare-single R` result" in line


def test_committed_plan_is_what_the_code_writes(capsys, monkeypatch):
    """results/bench/ddp_scaling_plan.md comes out again from the command in its header (run from the repository)."""
    committed = (REPO / "results" / "bench" / "ddp_scaling_plan.md").read_text()
    command = committed.split("```bash\n", 1)[1].split("\n```", 1)[0]
    argv = shlex.split(command)[2:]  # after "python benchmarks/ddp_scaling_plan.py"
    out = argv.index("--out")
    monkeypatch.chdir(REPO)
    assert plan.main(argv[:out] + argv[out + 2:]) == 0
    assert capsys.readouterr().out == committed.replace(f" --out {argv[out + 1]}", "")


def _write(path: Path, result: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return str(path)


def _two_gpu_input() -> dict:
    """Noisy single steps (a straggler cost above 0, so its interval is tested too); ddp 104 / 106 ms, window 3 + tail
    1 ms (bound 218 GB/s, all-reduce 4 ms on 2 GPUs, 6 ms on 4); exposed 104 / 2 - 100 / 2 = 2 ms."""
    single = [[100.0, 100.0, 100.0, 100.0], [104.0, 100.0, 96.0, 100.0], [100.0, 108.0, 100.0, 92.0]]
    return _run(single, [[[104.0] * 4, [106.0] * 4]] * 3, window_ms=3.0, tail_ms=1.0)


def _four_gpu_check(**extra) -> dict:
    """4 ranks; single 100 ms but one 110 ms step in round 2 (mean 101.25), ddp 104 ms but rank 3 at 110 (the slower
    rank: mean 110): efficiency 101.25 / 110; rounds 100 / 110 and 102.5 / 110. Exposed: rank 0-2's backward 51 against
    single 49 ms (the 110 ms step: 54) -> median 2 ms; straggler measured 110 - 101.25 - 2 = 6.75 ms."""
    single = [[100.0] * 4, [100.0, 100.0, 100.0, 110.0]]
    return _run(single, [[[104.0] * 4] * 3 + [[110.0] * 4]] * 2, window_ms=3.0, tail_ms=1.0, **extra)


def _checks_rows(text: str) -> list[str]:
    """The rows of the checks table, its header first (the |---| line left out)."""
    return [line for line in text.split("## Checks at other GPU counts\n", 1)[1].splitlines() if line.startswith("| ")]


def test_check_run_measured_and_predicted_as_the_plans_own_row(tmp_path, capsys):
    two = _write(tmp_path / "pair" / "llama3-8b_badam_n2_ddp_fp32_vs1x3.json", _two_gpu_input())
    four = _write(tmp_path / "quad" / "llama3-8b_badam_n4_ddp_fp32_vs1x2.json", _four_gpu_check())
    # 4 is not among --gpus: the check is predicted at its own N all the same
    assert plan.main([two, "--gpus", "2", "8", "--resamples", "50", "--check", four]) == 0
    text = capsys.readouterr().out
    args = plan.parse_args([two, "--gpus", "4", "--resamples", "50"])
    m = plan.measure([plan.load_result(two)])
    row, = plan.plan_rows(m, args, plan.bus_bandwidth_bound(plan.load_result(two)))
    est, low, high = row["straggler"]
    assert est > 0 and row["exposed_ms"] == pytest.approx(4.0)  # 2 ms exposed + (6 - 4) ms more all-reduce
    rest = m["single_ms"] + row["exposed_ms"]
    measured = 101.25 / 110
    own = plan.expected_max_excess(plan.single_residuals(_four_gpu_check()), 4)  # this machine's noise at N = 4
    header, line = _checks_rows(text)
    assert line == (
        f"| llama3-8b badam, batch 2 x 8 per GPU, fp32 all-reduce, eager layers | 4 | 1 | {row['efficiency']:.3f} "
        f"({4 * row['efficiency']:.2f}x) [{m['single_ms'] / (rest + high):.3f}-{m['single_ms'] / (rest + low):.3f}] | "
        f"{measured:.3f} ({4 * measured:.2f}x) (rounds {100 / 110:.3f}-{102.5 / 110:.3f}) | "
        f"{measured - row['efficiency']:+.3f} | 4.00 / 2.00 | {est:.1f} [{low:.1f}-{high:.1f}] / 6.8 | "
        f"101.2 / 110.0 ({m['single_ms']:.1f} / {row['step_ms']:.1f}) | 1.2 ({own:.1f}) |")
    assert header.startswith("| setting | N |")
    assert f"predicted from the 1 run(s) on 2 GPUs of \"llama3-8b badam, batch 2 x 8 per GPU" in text
    assert "Checks (--check; not used for fitting" in text and "quad/llama3-8b_badam_n4_ddp_fp32_vs1x2.json" in text
    # with 4 among --gpus the plan's own 4-GPU row says the same, and nothing above the checks moves
    assert plan.main([two, "--gpus", "2", "4", "8", "--resamples", "50", "--check", four]) == 0
    with_check = capsys.readouterr().out
    assert f"| {row['step_ms']:.1f} | {row['efficiency']:.3f} | {4 * row['efficiency']:.2f}x |" in with_check
    assert plan.main([two, "--gpus", "2", "4", "8", "--resamples", "50"]) == 0
    alone = capsys.readouterr().out
    tables = "Predicted efficiency (speed-up) per setting"
    assert with_check.split(tables)[1].split("## Checks")[0] == alone.split(tables)[1]
    # the figures behind the row, exactly: the prediction is plan_rows' row at N = 4
    entry, = plan.check_entries({four: plan.load_result(four)}, {plan.setting_key(plan.load_result(two)): ([two], m)},
                                args, plan.bus_bandwidth_bound(plan.load_result(two)))
    check = entry["check"]
    assert check["predicted"]["efficiency"] == row["efficiency"] and check["predicted"]["straggler"] == row["straggler"]
    assert check["efficiency"] == pytest.approx(measured) and check["straggler_ms"] == pytest.approx(6.75)
    assert check["exposed_ms"] == pytest.approx(2.0) and check["n"] == 4


def test_check_without_input_setting_is_reported_not_predicted(tmp_path, capsys):
    two = _write(tmp_path / "llama3-8b_badam_n2_ddp_fp32_vs1x3.json", _two_gpu_input())
    four = _write(tmp_path / "llama3-8b_badam_n4_b8_ddp_fp32_vs1x2.json", _four_gpu_check(batch_per_gpu=8))
    assert plan.main([two, "--resamples", "20", "--check", four]) == 0
    text = capsys.readouterr().out
    _, line = _checks_rows(text)
    measured = 101.25 / 110
    assert line.startswith("| llama3-8b badam, batch 8 x 8 per GPU, fp32 all-reduce, eager layers | 4 | 1 | not "
                           f"predicted: no input run of this setting (at any GPU count) | {measured:.3f} "
                           f"({4 * measured:.2f}x) ")
    assert "4 GPUs: " + four.split("/")[-2] + "/llama3-8b_badam_n4_b8_ddp_fp32_vs1x2.json; not predicted: no input " \
        "run of this setting (at any GPU count)" in text


def test_check_with_by_folder_is_set_against_each_input_machine(tmp_path, capsys):
    """The folder is not matched (a 4-GPU run is never on an input's machine): one row per input folder's plan."""
    inputs = [_write(tmp_path / name / "llama3-8b_badam_n2_ddp_fp32_vs1x3.json", _two_gpu_input()) for name in "ab"]
    four = _write(tmp_path / "c" / "llama3-8b_badam_n4_ddp_fp32_vs1x2.json", _four_gpu_check())
    assert plan.main(inputs + ["--resamples", "20", "--by-folder", "--check", four]) == 0
    text = capsys.readouterr().out
    assert len(_checks_rows(text)) == 3  # header, two rows
    assert all(f'of "llama3-8b badam, batch 2 x 8 per GPU, fp32 all-reduce, eager layers, {name}"' in text
               for name in "ab")


def test_a_file_both_fitted_and_checked_is_refused(tmp_path, capsys):
    two = _write(tmp_path / "llama3-8b_badam_n2_ddp_fp32_vs1x3.json", _two_gpu_input())
    (tmp_path / "sub").mkdir()
    same = str(tmp_path / "sub" / ".." / "llama3-8b_badam_n2_ddp_fp32_vs1x3.json")  # another spelling of the file
    assert plan.main([two, "--check", same]) == 2
    captured = capsys.readouterr()
    line, = captured.err.splitlines()
    assert captured.out == "" and line == f"error: {same}: given both as an input and with --check; a check run " \
        "must not be fitted"


@pytest.mark.parametrize("case, says", [("not_json", "unreadable"), ("fsdp2", "a fsdp2 result, not --mode ddp"),
                                        ("one_round", "fewer than 2 single-GPU rounds")])
def test_bad_check_file_gives_one_line_naming_it(tmp_path, capsys, case, says):
    two = _write(tmp_path / "llama3-8b_badam_n2_ddp_fp32_vs1x3.json", _two_gpu_input())
    content = {"fsdp2": sharded_result(4, 100.0, "A"), "one_round": _run([[100.0]], [[[104.0]] * 4])}.get(case)
    bad = tmp_path / f"{case}.json"
    bad.write_text("{" if content is None else json.dumps(content))
    assert plan.main([two, "--check", str(bad)]) == 2
    captured = capsys.readouterr()
    line, = captured.err.splitlines()
    assert captured.out == "" and line.startswith(f"error: {bad}: ") and says in line


def test_a_checkpointing_policy_makes_its_own_setting():
    """Runs with another checkpointing policy (block-graphed: CUDA graphs below the active block) are planned apart;
    the default and results from before the option are one setting."""
    base = _run([[100.0]] * 2, [[[100.0], [100.0]]] * 2)
    keys = {policy: plan.setting_key({**base, "checkpointing": policy})
            for policy in (None, "non-reentrant", "block-graphed")}
    assert keys[None] == keys["non-reentrant"] != keys["block-graphed"]
    assert "fp32 all-reduce, block-graphed checkpointing, eager layers" in plan.setting_label(keys["block-graphed"])


def test_steps_that_compiled_a_graph_are_left_out_everywhere(tmp_path, capsys):
    """A step in which Dynamo compiled (new_graphs > 0: 1,200 ms in round 1 alone, 1,250 on ddp rank 1, whose wait
    shows on rank 0 one step later) is a one-time cost, not noise: that step index and the next leave every phase of
    every rank, and the plan equals the plan of the run without them (the straggler pool and the means would
    otherwise rest on them)."""
    clean = _run([[100.0, 104.0, 96.0]] * 2, [[[104.0] * 3, [106.0] * 3]] * 2, window_ms=3.0, tail_ms=1.0)
    spiked = _run([[100.0, 104.0, 1200.0, 130.0, 96.0], [100.0, 104.0, 100.0, 100.0, 96.0]],
                  [[[104.0, 104.0, 104.0, 1250.0, 104.0], [106.0, 106.0, 1250.0, 106.0, 106.0]],
                   [[104.0] * 5, [106.0] * 5]], window_ms=3.0, tail_ms=1.0)
    spiked["per_rank"][0]["phases"][0]["steps"][2]["new_graphs"] = 1
    spiked["per_rank"][1]["phases"][0]["steps"][2]["new_graphs"] = 1
    paths = [_write(tmp_path / name / "llama3-8b_badam_n2_ddp_fp32_vs1x2.json", run)
             for name, run in (("clean", clean), ("spiked", spiked))]
    loaded = plan.load_result(paths[1])
    assert loaded["compile_steps_dropped"] == 2
    assert all(len(p["steps"]) == 3 for rank in loaded["per_rank"] for p in rank["phases"])
    tables = []
    for path in paths:
        assert plan.main([path, "--resamples", "20"]) == 0
        text = capsys.readouterr().out
        tables.append([line for line in text.splitlines() if line.startswith("| ")])
    assert tables[0] == tables[1]
    assert ("6 single-GPU step residuals; 2 step index(es) left out, a graph compiled in them or the step "
            "before.") in text
