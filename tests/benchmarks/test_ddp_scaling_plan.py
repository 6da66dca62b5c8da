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
