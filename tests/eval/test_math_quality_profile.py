"""The quality profile's math part (issue 11, T6 analogue) in miniature: its main group (config, overrides, saved
weights) and its math evaluator entry (base model included, chat_question prompt, a per-dataset limit, length-capped
batches), run through run_all with a tiny random Llama, then the tables: T6's other-scale section has the base row and
the method's row, and its caption names the subset."""
from __future__ import annotations

import csv
import io
import json

import yaml

from experiments import run_all
from plots.__main__ import main as plots_main

TINY = ["model.source=random:tiny-llama", "model.gradient_checkpointing=false", "data.max_length=96",
        "data.max_samples=4", "data.eval_samples=2", "train.batch_size=2", "train.loss_chunk_tokens=0"]
LIMIT = {"gsm8k": 1, "math": 2, "aqua": 1, "numglue": 1, "sat": 1, "mmlu_math": 1}


def _profile(tmp_path, math_group: dict, options: dict):
    """The profile's math group and evaluator, shrunk: one method, a fixed lr instead of lr_from (the sweep machinery
    is tested in tests/experiments/test_suite.py), a tiny model."""
    final = {key: value for key, value in math_group.items() if key != "lr_from"}
    final.update(group="paper_math_tiny", methods=["badam"],
                 overrides=[*math_group["overrides"], *TINY, "train.epochs=1", "method.lr=1e-3"])
    path = tmp_path / "tiny-math.yaml"
    path.write_text(yaml.safe_dump({"description": "math part in miniature", "runs": [final],
                                    "evaluators": [{"name": "math", "groups": ["paper_math_tiny"],
                                                    "options": options}]}))
    return path


def test_math_group_and_evaluator_shape_end_to_end_with_the_tables(tmp_path):
    profile = run_all.load_profile("quality-gpu")
    math_group = next(e for e in profile["runs"] if e["group"] == "paper_math_qwen25_coder_05b")
    (spec,) = [e for e in profile["evaluators"] if e["name"] == "math"]
    assert spec["groups"] == ["paper_math_qwen25_coder_05b"] and spec["options"]["base"] is True
    # the profile's options, shrunk to seconds: the same keys, on the CPU, a few items and tokens
    options = {**spec["options"], "device": "cpu", "limit": LIMIT, "batch_size": 2, "max_batch_tokens": 300,
               "max_new_tokens": 3, "jobs_per_gpu": 1}
    out = tmp_path / "runs"
    assert run_all.main(["--profile", str(_profile(tmp_path, math_group, options)), "--output-dir", str(out),
                         "--no-plots", "--no-progress"]) == 0
    group = out / "paper_math_tiny"
    runs = sorted(p.name for p in group.iterdir() if p.is_dir())
    assert runs == ["qwen25_coder_05b_gsm8k-badam-s0", "qwen25_coder_05b_gsm8k-base"]
    for run in runs:
        results = json.loads((group / run / "eval" / "math.json").read_text())
        assert {name: entry["total"] for name, entry in results["datasets"].items()} == LIMIT
        assert results["settings"]["prompt_style"] == spec["options"]["prompt_style"] and results["limit"] == LIMIT
        assert results["generation"]["max_batch_tokens"] == 300 and results["tokens_per_s"] > 0
        assert len((group / run / "eval" / "math" / "gsm8k.jsonl").read_text().splitlines()) == 1
    base = json.loads((group / "qwen25_coder_05b_gsm8k-base" / "summary.json").read_text())
    assert base["method"] == "base" and base["model"] == "random:tiny-llama"

    tables = tmp_path / "tables"
    assert plots_main(["--results", str(out), "--out", str(tables), "--dpi", "20"]) == 0
    (t6,) = (tables / "tables").glob("T6_*.csv")
    rows = [r for r in csv.DictReader(io.StringIO(t6.read_text())) if "random:tiny-llama" in r["section"]]
    assert [r["method"] for r in rows] == ["base", "badam"]
    assert all(r["GSM8K"] != "no run" and r["Average"] != "—" for r in rows)
    assert rows[1]["lr"] != "—" and rows[0]["lr"] == "—"
    markdown = next((tables / "tables").glob("T6_*.md")).read_text()
    assert "Other scale: random:tiny-llama" in markdown and "math 2 items" in markdown
