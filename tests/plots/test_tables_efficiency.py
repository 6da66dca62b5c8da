"""The time tables (T3 / T4) under the benchmark protocol: repeats give medians and ratio bands, a band that holds 1
reads "≈ 1", MFU comes from summary.json's compute block, variants of the paper's settings are labelled rows.

The results tree is written by hand (summary.json files marked FAKE): it checks the tables' arithmetic, it is not a
measurement."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from plots import tables_efficiency as eff
from plots.paper import load_paper_values
from plots.runs import discover_runs

FAKE = "FAKE test fixture: table arithmetic only; not a measurement"


def write_run(root: Path, group: str, name: str, method: str, step_ms: float, *, backward_ms: float | None = None,
              options: dict | None = None, describe: dict | None = None, fused: bool = False, mfu: float = 0.2,
              device: str = "NVIDIA H100 80GB HBM3", status: str = "ok", date: str = "2026-12-01T10:00:00"):
    backward = backward_ms if backward_ms is not None else step_ms / 2
    summary = {
        "fixture_note": FAKE, "status": status, "run_name": name, "method": method, "model": "random:llama3-8b",
        "timing_ms": {"forward": step_ms / 4, "backward": backward, "update": 0.0 if fused else step_ms / 4,
                      "step": step_ms},
        "compute": {"mfu": mfu, "model_tflops_per_s": mfu * 989.4, "model_flops_per_step": 35.6e12},
        "method_info": {"options": options or {}, "fused_backward": fused, "last_describe": describe or {}},
        "config": {"method": {"name": method, **(options or {})}, "model": {"source": "random:llama3-8b"},
                   "train": {"batch_size": 2, "grad_accum": 1, "max_grad_norm": 1.0}},
        "environment": {"device_name": device, "date": date},
    }
    folder = root / group / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    paper_lora = {"rank": 8, "adapter_dtype": "bf16", "dropout": 0.1}
    for rep, (badam, official, lomo, lora, fp32) in enumerate(
            [(100.0, 98.0, 300.0, 200.0, 260.0), (110.0, 115.0, 330.0, 225.0, 280.0),
             (105.0, 104.0, 320.0, 210.0, 270.0)], start=1):
        date = f"2026-12-01T10:0{rep}:00"
        write_run(root, "paper_time_llama3_8b", f"llama3_8b-badam-rep{rep}", "badam", badam, date=date)
        write_run(root, "paper_time_llama3_8b", f"llama3_8b-badam_official-rep{rep}", "badam_official", official,
                  date=date)
        write_run(root, "paper_time_llama3_8b", f"llama3_8b-lomo-rep{rep}", "lomo", lomo, fused=True,
                  describe={"norm_pass": False}, date=date)
        write_run(root, "paper_time_llama3_8b", f"llama3_8b_lora_r8-lora-rep{rep}", "lora", lora,
                  options=paper_lora, date=date)
        write_run(root, "paper_time_llama3_8b", f"llama3_8b_lora_r8_fp32-lora-rep{rep}", "lora", fp32,
                  options={**paper_lora, "adapter_dtype": "fp32"}, date=date)
    # an older single badam run in the memory-and-time group: the repeats win for the badam row
    write_run(root, "paper_memtime_llama3_8b", "llama3_8b-badam", "badam", 500.0, date="2026-11-01T10:00:00")
    write_run(root, "paper_memtime_llama3_8b", "llama3_8b-lomo", "lomo", 1400.0, fused=True,
              describe={"norm_pass": True}, date="2026-11-01T10:00:00")
    write_run(root, "paper_memtime_llama3_8b", "llama3_8b-adam", "adam", 600.0, device="NVIDIA H200")
    write_run(root, "paper_backward_llama3_8b", "llama3_8b_all-adam_bf16-rep1", "adam_bf16", 300.0,
              backward_ms=640.0)
    write_run(root, "paper_backward_llama3_8b", "llama3_8b_all-adam_bf16-rep2", "adam_bf16", 300.0,
              backward_ms=600.0)
    return root


def rows(table):
    frame = table.sections[0].frame
    return {r[frame.columns[0]]: r for r in frame.to_dict("records")}


def test_time_table_reads_repeats_with_bands_and_labels_variants(results):
    t3 = rows(eff.build_time(load_paper_values(), discover_runs(results), "llama3-8b"))
    badam = t3["badam"]
    assert badam["repeats"] == 3 and badam["step / badam"] == 1.0
    assert badam["forward (h)"] == pytest.approx(105.0 / 4 * 26001 / 3.6e6)  # median of the repeats, not the 500 ms run
    # ours / paper for each repeat, band over repeats: forward 25, 27.5, 26.25 ms x 26001 steps vs the paper's 0.71 h
    per_repeat = sorted(ms / 4 * 26001 / 3.6e6 / 0.71 for ms in (100.0, 110.0, 105.0))
    assert badam["forward (h) ratio"] == f"{per_repeat[1]:.2f} ({per_repeat[0]:.2f}-{per_repeat[2]:.2f})"
    # paired per repeat: 98/100, 115/110, 104/105 holds 1
    assert t3["badam_official"]["step / badam"] == "≈ 1 (0.98-1.05)"
    assert t3["lomo"]["step / badam"] == "3.00 (3.00-3.05)"  # 300/100, 330/110, 320/105
    assert t3["lomo"]["update (s)"] == "—"
    assert t3["lomo"]["step / badam (paper)"] == pytest.approx((0.78 + 3.70) * 3600 / ((0.71 + 1.74) * 3600 + 142))
    assert t3["lomo (norm pass)"]["repeats"] == 1  # the single older run with its gradient-norm pass: a variant
    assert t3["lora-rank8"]["MFU %"] == pytest.approx(20.0) and t3["lora-rank8"]["repeats"] == 3
    assert t3["lora-rank8"]["model TFLOP/step"] == pytest.approx(35.6)
    assert t3["lora-rank8 (fp32 adapters)"]["forward (h) (paper)"] == "not in paper"
    assert t3["adam"]["step / badam"] == "other device (NVIDIA H200)"  # never a ratio across devices


def test_backward_table_bands_against_the_paper(results):
    t4 = rows(eff.build_backward(load_paper_values(), discover_runs(results), "llama3-8b"))
    assert t4["all"]["repeats"] == 2 and t4["all"]["backward (s)"] == pytest.approx(0.62)
    assert t4["all"]["backward (s) ratio"] == "≈ 1 (0.94-1.00)"  # 0.60 / 0.64 and 0.64 / 0.64
    assert t4["input"]["backward (s)"] == "no run" and t4["input"]["backward (s) (paper)"] == 0.33


def test_repeats_by_row_prefers_the_group_with_most_repeats(results):
    runs = discover_runs(results)
    selected = eff.repeats_by_row(runs, eff.time_row_label)
    assert sorted(selected["badam"]) == [1, 2, 3] and sorted(selected["lomo (norm pass)"]) == [0]
    assert eff.time_row_label(next(r for r in runs if r.name == "llama3_8b_lora_r8_fp32-lora-rep1")) == \
        "lora-rank8 (fp32 adapters)"
