"""One bad result never stops the others: `python -m plots` skips or partly leaves out each broken file, names it with
the reason (stderr and index.md), and writes every table and figure from the rest. Statuses show as markers."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from plots.__main__ import main


def _rows(out: Path, key: str) -> list[dict]:
    (path,) = (out / "tables").glob(f"{key}_*.csv")
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _edit_summary(run: Path, **changes) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del summary[key]
    (run / "summary.json").write_text(json.dumps(summary))


def test_bad_files_are_named_and_skipped_and_the_rest_is_built(results_dir, tmp_path, capsys):
    res = tmp_path / "results"
    shutil.copytree(results_dir, res)
    good = res / "paper_memory_tiny"
    broken = {}
    # runs that are skipped as a whole
    for name, text in (("half", '{"status": "ok", "method": "ad'), ("array", "[1, 2]"), ("binary", "\udcff")):
        shutil.copytree(good / "tiny-adam", res / "broken" / name)
        (res / "broken" / name / "summary.json").write_text(text, errors="surrogateescape")
        broken[name] = "summary.json " + ("is not valid JSON" if name == "half" else
                                          "holds a JSON list" if name == "array" else "cannot be read")
    for name, change, reason in (("no-status", {"status": None}, "has no 'status'"),
                                 ("odd-status", {"status": "finished"}, "unknown status 'finished'"),
                                 ("no-method", {"method": None, "config": {}}, "names no method")):
        shutil.copytree(good / "tiny-adam", res / "broken" / name)
        _edit_summary(res / "broken" / name, **change)
        broken[name] = reason
    # runs that are used, with a part left out
    mtbench_badam = res / "paper_mtbench_llama3_8b" / "badam"
    lines = (mtbench_badam / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:15]  # a torn line in the middle: corruption, not an interrupted write
    (mtbench_badam / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    math_badam = res / "paper_math_llama3_8b" / "badam"
    (math_badam / "eval" / "math.json").write_text(json.dumps({"datasets": ["gsm8k"]}))
    scores = mtbench_badam / "eval" / "mtbench" / "scores_fake-judge.json"
    scores.write_text(json.dumps({"judge": "j", "models": {"a": {"overall": 1}, "b": {"overall": 2}}}))
    (res / "paper_rank_tiny" / "tiny-adam" / "eval" / "rank.json").write_text('{"matrices": [')
    (res / "paper_mtbench_llama3_8b" / "lr_selection.json").write_text('{"adam": {"chosen_lr": "high"}}')
    # a status that is a result, not a failure: shown as its marker
    _edit_summary(res / "paper_memory_llama3_8b" / "badam", status="diverged")

    out = tmp_path / "out"
    assert main(["--results", str(res), "--out", str(out), "--dpi", "20"]) == 0
    err = capsys.readouterr().err
    for name, reason in broken.items():
        line = next((x for x in err.splitlines() if f"broken/{name} skipped" in x), None)
        assert line is not None and reason in line, (name, err)
    assert f"{mtbench_badam}: metrics.jsonl (its curves) left out: line 2 is not valid JSON" in err
    assert f"{math_badam}: eval/math.json left out: expected a 'datasets' mapping" in err
    assert "scores_fake-judge.json left out: expected a 'models' mapping with this run's one model" in err
    assert "eval/rank.json left out: the file is not valid JSON" in err
    assert "lr_selection.json left out: the file is not a learning-rate choice" in err
    index = (out / "index.md").read_text()
    assert "## Skipped or left out (and why)" in index and "broken/half skipped" in index
    # every table and figure is still there, built from the good runs
    assert len(list((out / "tables").glob("*.csv"))) == 11 and len(list((out / "figures").glob("*.png"))) == 3
    t2 = {r["method"]: r for r in _rows(out, "T2") if r["section"].startswith("Paper scale")}
    assert t2["badam"]["total"] == "diverged" and t2["lora-rank8"]["total"] == "OOM"
    t6 = {r["method"]: r for r in _rows(out, "T6") if "Llama 3-8B" in r["section"]}
    assert t6["badam"]["GSM8K"] == "no run"  # its math.json was left out, not read as zeros
    other = [r for r in _rows(out, "T2") if r["section"].startswith("Other scale")]
    assert {r["method"] for r in other} == {"adam", "lora-rank2", "badam"}  # the broken copies are not rows

    assert main(["--results", str(res), "--out", str(out), "--dpi", "20", "--strict"]) == 1


def test_fields_of_the_wrong_type_are_named_not_a_failed_figure_or_a_report_traceback(results_dir, tmp_path, capsys):
    """Hand-edited or foreign files: a summary field of the wrong JSON type skips its run, a step record's loss that is
    not a number leaves out that run's curves (F2 is still drawn), and plots.report (run_all's last step) skips a
    summary.json that holds no object instead of stopping with a traceback."""
    from plots.report import main as report_main

    res = tmp_path / "results"
    shutil.copytree(results_dir, res)
    good = res / "paper_memory_tiny" / "tiny-adam"
    for name, change, reason in (("memory-str", {"memory": "lots"}, "has memory = 'lots', expected an object"),
                                 ("loss-str", {"final_eval_loss": "abc"}, "has final_eval_loss = 'abc', expected a "
                                                                          "number or null"),
                                 ("split-str", {"memory": {"split_bytes": {"gradients": "1 GB"}}},
                                  "has memory.split_bytes.gradients = '1 GB', expected a number")):
        shutil.copytree(good, res / "odd" / name)
        _edit_summary(res / "odd" / name, **change)
    shutil.copytree(good, res / "odd" / "array")
    (res / "odd" / "array" / "summary.json").write_text("[1, 2]")
    curves = res / "paper_mtbench_llama3_8b" / "badam" / "metrics.jsonl"
    lines = curves.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "loss": "abc"})
    curves.write_text("\n".join(lines) + "\n")

    out = tmp_path / "out"
    assert main(["--results", str(res), "--out", str(out), "--dpi", "20"]) == 0
    err = capsys.readouterr().err
    assert "odd/memory-str skipped: summary.json has memory = 'lots', expected an object or null" in err
    assert "odd/loss-str skipped: summary.json has final_eval_loss = 'abc', expected a number or null" in err
    assert "odd/split-str skipped: summary.json has memory.split_bytes.gradients = '1 GB'" in err
    assert f"{curves.parent}: metrics.jsonl (its curves) left out: line 1 has loss = 'abc', expected a number" in err
    assert " failed: " not in err and len(list((out / "figures").glob("*.png"))) == 3

    assert report_main([str(res), "--out", str(tmp_path / "report_out")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "odd/array skipped: summary.json holds a JSON list" in captured.err
    assert "result(s) skipped or left out (listed in the report)" in captured.out
    report = (res / "report.md").read_text()
    assert "odd/array skipped" in report
    assert "](../report_out/figures/" in report  # --out outside the results folder: links relative to report.md
