"""benchmarks/profiling.py reads profile records honestly: a range's device-side span (a user annotation) is never a
kernel, a phase's host time comes from its host-side record, and the backward's device time is derived or taken from
its host time window instead of printed as 0.00; profile_summaries.py writes the committed summaries again."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import profile_step  # noqa: E402
import profile_summaries  # noqa: E402
import profiling  # noqa: E402


def rec(name, *, kernel, calls=1, self_device=0.0, device_total=None, self_cpu=0.0, cpu_total=None, **extra):
    """One record as profiling.records writes it, in milliseconds for readability (stored in microseconds)."""
    return {"name": name, "calls": calls, "kernel": kernel, "self_device_us": self_device * 1e3,
            "device_total_us": (self_device if device_total is None else device_total) * 1e3,
            "self_cpu_us": self_cpu * 1e3, "cpu_total_us": (self_cpu if cpu_total is None else cpu_total) * 1e3,
            **extra}


def old_profile(*, update_host=5.5, mm=60.0) -> dict:
    """A one-step CUDA profile as written before the fix: kernel=True on every device-side record, the ranges' spans
    included (the shape of results/bench/badam_vs_official_v3/profiles/*.json)."""
    return {"steps": 1, "device": "cuda", "records": [
        rec("phase:forward", kernel=False, device_total=40.0, self_cpu=30.0, cpu_total=90.0),
        rec("phase:forward", kernel=True, self_device=95.0),  # the range's span on the GPU: idle gaps included
        rec("phase:backward", kernel=False, device_total=0.005, self_cpu=110.0, cpu_total=110.0),
        rec("phase:backward", kernel=True, self_device=0.008),
        rec("phase:update", kernel=False, device_total=5.0, self_cpu=0.3, cpu_total=update_host),
        rec("Optimizer.step#AdamW.step", kernel=False, device_total=5.0, self_cpu=2.0, cpu_total=update_host),
        rec("Optimizer.step#AdamW.step", kernel=True, self_device=7.5),
        rec("aten::mm", kernel=False, calls=4, self_device=mm, self_cpu=3.0),
        rec("nvjet_sm90_gemm", kernel=True, calls=4, self_device=mm),
        rec("Memcpy DtoD (Device -> Device)", kernel=True, calls=2, self_device=1.0),
        rec("Memset (Device)", kernel=True, calls=3, self_device=0.5),
        rec("cudaLaunchKernel", kernel=False, calls=9, self_cpu=4.0)]}


def test_old_records_kernel_total_leaves_out_the_ranges_spans():
    doc = old_profile()
    # the kernels, memcpy and memset: 60 + 1 + 0.5; the old sum added 95 + 0.008 + 7.5 of range spans
    assert profiling.kernel_ms_per_step(doc["records"], 1) == pytest.approx(61.5)
    assert profiling.kernels_per_step(doc["records"], 1) == 9


def test_old_records_phases_take_host_records_and_derive_the_backward():
    phases = profiling.summarise(old_profile())["phases"]
    assert phases["forward"]["cpu_ms_per_step"] == pytest.approx(90.0)  # the old reading took the span's 0.0
    assert phases["forward"]["device_ms_per_step"] == pytest.approx(40.0)  # not the 95 ms span
    assert phases["forward"]["device_source"] == "range"
    assert phases["backward"]["cpu_ms_per_step"] == pytest.approx(110.0)
    assert phases["backward"]["device_ms_per_step"] == pytest.approx(61.5 - 40.0 - 5.0)
    assert phases["backward"]["device_source"] == "derived"
    assert phases["update"]["device_ms_per_step"] == pytest.approx(5.0)


def test_new_records_use_their_annotation_field_and_windows():
    recs = [
        rec("phase:forward", kernel=False, device_total=40.0, cpu_total=90.0, annotation=True, on_device=False),
        rec("phase:forward", kernel=False, self_device=95.0, annotation=True, on_device=True),
        rec("phase:backward", kernel=False, cpu_total=110.0, annotation=True, on_device=False),
        rec("weird_kernel_named_like_nothing", kernel=True, self_device=70.0, annotation=False, on_device=True)]
    doc = {"steps": 2, "device": "cuda", "records": recs, profiling.WINDOW_FIELD: {"forward": 80e3, "backward": 60e3}}
    summary = profiling.summarise(doc)
    assert summary["kernel_ms_per_step"] == pytest.approx(35.0)
    assert summary["phases"]["backward"] == {"cpu_ms_per_step": pytest.approx(55.0), "device_ms_per_step": 30.0,
                                             "device_source": "window", "calls": 1}
    assert summary["phases"]["forward"]["device_source"] == "window"


def event(name, start, end, *, kernels=(), annotation=False, device="DeviceType.CPU"):
    """A stand-in for torch's FunctionEvent with what phase_windows reads."""
    return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation, is_async=False,
                           time_range=SimpleNamespace(start=start, end=end),
                           kernels=[SimpleNamespace(name=k, duration=d) for k, d in kernels])


def test_phase_windows_take_every_thread_s_ops_inside_the_range():
    events = [
        event("phase:forward", 0, 100, annotation=True),
        event("aten::mm", 10, 20, kernels=[("gemm", 30.0)]),
        event("phase:backward", 110, 300, annotation=True),  # main thread waits; autograd's thread runs:
        event("autograd::engine::evaluate_function: MmBackward0", 150, 160, kernels=[("gemm", 50.0)]),
        event("aten::mul", 200, 210, kernels=[("mul", 10.0), ("phase:backward", 190.0)]),  # a span is no kernel
        event("phase:backward", 120, 290, annotation=True, device="DeviceType.CUDA"),  # the span on the GPU
        event("aten::randint", 305, 306, kernels=[("rand", 2.0)]),  # outside every range
        event("phase:update", 310, 320, annotation=True),
        event("aten::_foreach_add_", 312, 315, kernels=[("foreach", 5.0)])]
    assert profiling.phase_windows(events) == {"forward": 30.0, "backward": 60.0, "update": 5.0}


def test_diff_of_old_profiles_shows_sources_and_no_spans():
    text = profiling.diff(old_profile(), old_profile(update_host=15.2, mm=59.0), label_a="ours", label_b="official")
    assert "| backward | 110.00 | 110.00 | 16.50 (derived) | 15.50 (derived) |" in text
    assert "| forward | 90.00 | 90.00 | 40.00 | 40.00 |" in text
    assert "| update | 5.50 | 15.20 | 5.00 | 5.00 |" in text
    assert "| all kernels (9 vs 9 launches) | - | - | 61.50 | 60.50 |" in text
    assert "phase:" not in text and "Optimizer.step#AdamW.step | 7.50" not in text
    assert "| aten::mm | 60.00 | 59.00 | +1.00 | 4 | 4 |" in text


def test_where_time_goes_of_an_old_lomo_profile():
    doc = old_profile()
    doc["records"] += [rec("phase:lomo norm pass", kernel=False, cpu_total=50.0),
                       rec("phase:lomo hook", kernel=False, calls=22, device_total=3.0, cpu_total=20.0)]
    facts = {"timing_ms": {"forward": 60.0, "backward": 80.0, "update": 5.0, "step": 145.0}, "compute": None,
             "lomo_scan_ms": 0.5, "parameters": 21, "run_name": "profile-lomo", "model": "random:tiny-llama",
             "device_name": "NVIDIA H200"}
    text = profile_step.where_time_goes("lomo", doc, facts)
    assert "| lomo norm pass | 50.0 | n/a (autograd thread) | 1 |" in text
    assert "| backward | 110.0 | 16.50 (derived) | 1 |" in text
    assert "61.5 ms per step in all" in text and "idle about 83.5 ms (58 %)" in text
    # an older profile's step was a median over mostly profiled steps: said so, never "not profiled"
    assert "under the profiler" in text and "not profiled" not in text
    assert "every one of the 21 parameters" in text and "launch 3.00 ms of device work" in text


def test_a_real_cpu_profile_flags_its_ranges_and_records_windows(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(16, 16)
    profiler = profiling.start("cpu")
    for _ in range(2):
        with profiling.phase("forward"):
            loss = model(torch.randn(4, 16)).square().mean()
        with profiling.phase("backward"):
            loss.backward()
    profiler.__exit__(None, None, None)
    doc = profiling.write(profiler, tmp_path, "p", steps=2, device_type="cpu")
    ranges = [r for r in doc["records"] if r["name"].startswith(profiling.PHASE_PREFIX)]
    assert ranges and all(r["annotation"] and not r["kernel"] for r in ranges)
    assert set(doc[profiling.WINDOW_FIELD]) == {"forward", "backward"}
    assert doc["phases"]["backward"]["calls"] == 2 and doc["phases"]["backward"]["cpu_ms_per_step"] > 0
    assert json.loads((tmp_path / "p.json").read_text())["kernel_ms_per_step"] == 0.0


def _old_bench_folder(root: Path) -> Path:
    folder = root / "bench"
    (folder / "profiles").mkdir(parents=True)
    for name, host in (("ours", 5.5), ("official", 15.2), ("ours_nockpt", 5.0)):
        (folder / "profiles" / f"profile_{name}_K100_micro1.json").write_text(
            json.dumps({**old_profile(update_host=host), "phases": {"backward": {"device_ms_per_step": 0.0}},
                        "kernel_ms_per_step": 164.0}, indent=1))
    (folder / "summary.md").write_text("# table\n\nkept line\n\n## Where the steady-state steps differ (torch.profiler, "
                                       "the last 3 steps of each K=100 phase of the last repeat)\n\nold 202.43\n")
    return folder


def test_profile_summaries_rewrites_a_bench_folder_from_its_records(tmp_path):
    folder = _old_bench_folder(tmp_path)
    records_before = json.loads((folder / "profiles" / "profile_ours_K100_micro1.json").read_text())["records"]
    assert profile_summaries.main([str(folder)]) == 0
    summary = (folder / "summary.md").read_text()
    assert summary.startswith("# table\n\nkept line\n") and "old 202.43" not in summary
    assert summary.count("## Where the steady-state steps differ") == 1 and "16.50 (derived)" in summary
    assert (folder / "profiles" / "profile_diff_ours_vs_official_K100_micro1.md").is_file()
    doc = json.loads((folder / "profiles" / "profile_ours_K100_micro1.json").read_text())
    assert doc["records"] == records_before and doc["kernel_ms_per_step"] == pytest.approx(61.5)
    assert doc["phases"]["backward"]["device_source"] == "derived"
    again = summary
    assert profile_summaries.main([str(folder)]) == 0 and (folder / "summary.md").read_text() == again


def test_profile_summaries_rewrites_a_profile_step_folder_and_keeps_the_run_facts(tmp_path):
    folder = tmp_path / "lomo"
    folder.mkdir()
    (folder / "profile_lomo.json").write_text(json.dumps(old_profile(), indent=1))
    (folder / "where_time_goes_lomo.json").write_text(json.dumps(
        {"phases": {}, "steps": 1, "timing_ms": {"step": 145.0}, "compute": {"device_name": "NVIDIA H200"},
         "lomo_scan_ms": 0.5}))
    (folder / "where_time_goes_lomo.md").write_text(
        "# x\n\n- run: profile-lomo, model random:llama3-8b, device NVIDIA H200\n\nevery one of the 291 parameters\n")
    assert profile_summaries.main([str(folder)]) == 0
    facts = json.loads((folder / "where_time_goes_lomo.json").read_text())
    assert facts["model"] == "random:llama3-8b" and facts["parameters"] == 291 and facts["run_name"] == "profile-lomo"
    assert facts["phases"]["backward"]["device_source"] == "derived"
    text = (folder / "where_time_goes_lomo.md").read_text()
    assert "- run: profile-lomo, model random:llama3-8b, device NVIDIA H200" in text and "(derived)" in text


def test_profile_summaries_refuses_an_unknown_folder_and_writes_nothing(tmp_path, capsys):
    folder = _old_bench_folder(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert profile_summaries.main([str(folder), str(tmp_path / "nothing")]) == 2
    assert "nothing written" in capsys.readouterr().err
    assert (folder / "summary.md").read_text() == (copy / "summary.md").read_text()
    assert not (folder / "profiles" / "profile_diff_ours_vs_official_K100_micro1.md").exists()


COMMITTED = sorted([*REPO.glob("results/bench/badam_vs_official_v*/profiles/profile_*_K100_micro1.json"),
                    *REPO.glob("results/bench/profiles_issue17/*/profile_*.json")])


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(REPO / "results" / "bench")))
def test_committed_profiles_kernel_totals_match_torch_s_own_table(path):
    """torch's table (.txt, written from the same profile) ends with 'Self CUDA time total', which leaves the ranges'
    spans out (is_user_annotation); the records' kernel total over the profiled steps must equal it."""
    doc = json.loads(path.read_text())
    line = next(x for x in path.with_suffix(".txt").read_text().splitlines() if x.startswith("Self CUDA time total"))
    torch_ms = float(line.split(":")[1].strip().removesuffix("ms"))
    ours_ms = profiling.kernel_ms_per_step(doc["records"], doc["steps"]) * doc["steps"]
    assert ours_ms == pytest.approx(torch_ms, abs=2e-3)
