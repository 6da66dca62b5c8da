"""Tables and figures from a small results tree (see conftest.py), the paper-values file, and the analytic model."""
from __future__ import annotations

import copy
import csv
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from plots import figures, mapping
from plots.__main__ import main
from plots.paper import PaperValuesError, load_paper_values, paper_cell, records, validate
from plots.runs import discover_runs
from plots import tables_efficiency as eff

REPO = Path(__file__).resolve().parents[2]
TABLE_IDS = ("T1", "T2", "T3", "T4", "T5", "T6", "T11", "T12", "T13", "T14", "LR")
FIGURE_IDS = ("F2", "F3", "F4")


# --- paper_values.json ----------------------------------------------------------------------------------------

def test_paper_values_parse_and_match_schema():
    doc = load_paper_values()
    assert validate(doc) == []
    assert "paper" in doc["label"]
    assert paper_cell(doc, "T2", "total", method="badam").value == 23.5
    assert paper_cell(doc, "T2", "total", method="lora-rank100").display == "OOM"
    assert paper_cell(doc, "T5", "mt_bench", model="llama3-8b", lr=1e-6, method="badam", epoch=3).value == 6.67
    assert paper_cell(doc, "T6", "average", model="llama3-70b", method="adam") is None  # not run by the authors


def test_paper_values_are_internally_consistent():
    """Transcription check: the paper's own averages and sums agree with its per-column numbers (within the
    rounding of printed values: three epochs and their mean, each rounded to 0.01, differ by up to 0.01)."""
    doc = load_paper_values()
    groups: dict = {}
    for rec in records(doc, "T5"):
        if isinstance(rec["mt_bench"], (int, float)) and rec["method"] != "base":
            groups.setdefault((rec["model"], rec["lr"], rec["method"]), {})[rec["epoch"]] = rec["mt_bench"]
    assert len(groups) == 19  # 2 models x 2 lrs x 5 methods, less Llama 3-8B Adam at 1e-5
    for key, by_epoch in groups.items():
        assert statistics.fmean(by_epoch[e] for e in (1, 2, 3)) == pytest.approx(by_epoch["average"], abs=0.011), key
    for rec in records(doc, "T6"):
        six = [rec[f] for f in ("gsm8k", "aqua", "mmlu_math", "sat_math", "math", "numglue")]
        assert statistics.fmean(six) == pytest.approx(rec["average"], abs=0.06), rec
    for table in ("T2", "T12"):
        adam = next(r for r in records(doc, table) if r["method"] == "adam")
        parts = adam["parameters"] + adam["gradients"] + adam["optimizer_states"]
        assert parts == pytest.approx(adam["total"]["value"], abs=0.051)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["tables"]["T2"].pop("source"), "source"),
    (lambda d: d["tables"]["T2"]["records"][0].update(total="23.5 GB"), "number"),
    (lambda d: d["tables"]["T4"]["records"].append(dict(d["tables"]["T4"]["records"][0])), "duplicate"),
    (lambda d: d["tables"]["T3"]["records"][0].update(update={"value": None}), "display"),
    (lambda d: d["tables"]["T11"]["records"][0].update(boolq_acc=0.8), "unknown fields"),
    (lambda d: d.update(label="values"), "label"),
])
def test_schema_check_catches_breakage(tmp_path, breakage, message):
    doc = copy.deepcopy(load_paper_values())
    breakage(doc)
    assert any(message in problem for problem in validate(doc))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PaperValuesError, match="breaks its schema"):
        load_paper_values(path)


# --- analytic memory --------------------------------------------------------------------------------------------

def test_parameter_counts_from_config_numbers():
    configs = eff.model_configs()
    # Published sizes: 8,030,261,248 / 6,738,415,616 / 70,553,706,496 parameters.
    assert eff.decoder_parameters(configs["llama3-8b"]) == 8_030_261_248
    assert eff.decoder_parameters(configs["llama2-7b"]) == 6_738_415_616
    assert eff.decoder_parameters(configs["llama3-70b"]) == 70_553_706_496
    m = 8_030_261_248
    assert eff.analytic_memory_gb("adam", m, 32, 4096)[1] == pytest.approx(18 * m / 1e9)
    assert eff.analytic_memory_gb("badam", m, 32, 4096)[1] == pytest.approx(2 * m / 1e9 + 16 * m / 1e9 / 32)
    assert eff.analytic_memory_gb("lora-rank8", m, 32, 4096)[1] == pytest.approx(2 * m / 1e9 + 36 * 8 * m / 1e9 / 4096)
    with pytest.raises(ValueError, match="valid"):
        eff.analytic_memory_gb("adafactor", m, 32, 4096)


def test_backward_scheme_of_a_run():
    from plots.runs import Run

    def run(method, **options):
        return Run(Path("r"), "paper_backward_x", {"method": method, "method_info": {
            "options": options, "last_describe": {"num_blocks": 32}}})
    assert mapping.backward_scheme(run("adam")) == "all"
    assert mapping.backward_scheme(run("badam", switch_mode="fixed", start_block=0)) == "input"
    assert mapping.backward_scheme(run("badam", switch_mode="fixed", start_block=31)) == "output"
    assert mapping.backward_scheme(run("badam", switch_mode="random")) is None


def test_model_mapping():
    assert mapping.canonical_model("meta-llama/Meta-Llama-3-8B") == ("llama3-8b", False)
    assert mapping.canonical_model("random:llama2-7b") == ("llama2-7b", True)
    assert mapping.canonical_model("meta-llama/Meta-Llama-3-8B-Instruct") == (None, False)
    assert mapping.canonical_model("smollm2-135m-instruct") == (None, False)


# --- the whole CLI on the fixture tree --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(results_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables_figures")
    assert main(["--results", str(results_dir), "--out", str(out), "--dpi", "40"]) == 0  # low dpi: test speed
    return out


def _csv(built: Path, stem_prefix: str) -> list[dict]:
    (path,) = (built / "tables").glob(f"{stem_prefix}_*.csv")
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_every_table_and_figure_is_written(built):
    for key in TABLE_IDS:
        for suffix in (".csv", ".md", ".tex"):
            (path,) = (built / "tables").glob(f"{key}_*{suffix}")
            assert path.stat().st_size > 100
        tex = next((built / "tables").glob(f"{key}_*.tex")).read_text()
        assert tex.count("\\begin{table}") == tex.count("\\end{table}") >= 1
        unescaped = tex.replace("\\{", "").replace("\\}", "")
        assert unescaped.count("{") == unescaped.count("}"), f"{key}.tex has unbalanced braces"
        rows = _csv(built, key)
        assert rows, key
        assert all(value.strip() for row in rows for value in row.values()), f"{key} has a blank cell"
    for key in FIGURE_IDS:
        for suffix in (".png", ".pdf"):
            (path,) = (built / "figures").glob(f"{key}_*{suffix}")
            assert path.stat().st_size > 5000
    index = (built / "index.md").read_text()
    assert "paper_memory_llama3_8b" in index and "Figure 2 (right)" in index


def test_paper_rows_compare_and_missing_runs_say_no_run(built):
    rows = {r["method"]: r for r in _csv(built, "T2") if r["section"].startswith("Paper scale")}
    assert list(rows) == ["adam", "lomo", "lora-rank100", "lora-rank8", "badam"]
    assert rows["adam"]["total"] == "no run" and rows["adam"]["total (paper)"] == "144.8+"
    assert rows["lora-rank8"]["total"] == "OOM" and float(rows["lora-rank8"]["total (paper)"]) == 22.3
    badam = rows["badam"]
    params = float(badam["parameters"])
    assert params > 0 and float(badam["parameters ratio"]) == pytest.approx(params / 16.1)
    assert all(r["total"] == "no run" for r in _csv(built, "T12") if r["section"].startswith("Paper"))
    t5 = {(r["lr"], r["method"]): r for r in _csv(built, "T5") if "Llama 3-8B" in r["section"]}
    assert float(t5[("1e-06", "badam")]["epoch 1"]) == 6.5
    assert float(t5[("1e-06", "badam")]["epoch 1 ratio"]) == pytest.approx(6.5 / 6.65)
    assert t5[("1e-06", "badam")]["average"] == "—"  # epochs 2 and 3 have no run: no average
    assert t5[("1e-05", "adam")]["epoch 1 (paper)"] == "–"  # omitted by the authors
    t6 = {r["method"]: r for r in _csv(built, "T6") if "Llama 3-8B" in r["section"]}
    assert float(t6["badam"]["SAT-Math"]) == 55.0 and float(t6["badam"]["Average"]) == pytest.approx(42.5)
    assert t6["lora"]["GSM8K"] == "no run"
    t11 = {r["method"]: r for r in _csv(built, "T11") if r["section"].startswith("Paper")}
    assert float(t11["badam"]["BoolQ"]) == pytest.approx(0.80) and t11["badam"]["COPA"] == "no run"
    assert t11["badam"]["WiC"] == "OOM" and float(t11["badam"]["RTE ratio"]) == pytest.approx(0.70 / 0.76)
    assert t11["adam"]["BoolQ"] == "no run" and float(t11["adam"]["BoolQ (paper)"]) == 0.86
    t3 = {r["method"]: r for r in _csv(built, "T3") if r["section"].startswith("Paper")}
    assert t3["lora-rank8"]["forward (h)"] == "no run" and float(t3["lora-rank8"]["forward (h) (paper)"]) == 0.83
    t13 = {r["method"]: r for r in _csv(built, "T13") if r["section"].startswith("Paper")}
    # the paper's unranked row points at ours by rank (fp32 adapters: not the paper's setting, a labelled variant)
    assert t13["lora"]["forward (h)"] == "see lora-rank2 (fp32 adapters)"
    assert float(t13["lora"]["forward (h) (paper)"]) == 2.48
    assert float(t13["lora-rank2 (fp32 adapters)"]["forward (h)"]) > 0
    t4 = {r["scheme"]: r for r in _csv(built, "T4") if r["section"].startswith("Paper")}
    assert float(t4["all"]["backward (s)"]) > 0 and t4["input"]["backward (s)"] == "no run"


def test_other_scale_runs_have_their_own_section(built):
    sections = {r["section"] for r in _csv(built, "T2")}
    other = [s for s in sections if s.startswith("Other scale: random:tiny-llama")]
    assert len(other) == 1
    rows = {r["method"]: r for r in _csv(built, "T2") if r["section"] == other[0]}
    assert set(rows) == {"adam", "lora-rank2", "badam"}
    assert all(r.get("total (paper)", "—") == "—" for r in rows.values())  # never compared with the paper
    t3 = {r["method"]: r for r in _csv(built, "T3") if r["section"] == other[0]}
    assert int(t3["adam"]["steps/epoch"]) == 26001  # ceil(52002 / (2 x 1))
    assert set(t3) == {"adam", "lora-rank2 (fp32 adapters)", "badam"}  # time rows carry the LoRA rank and setting
    markdown = next((built / "tables").glob("T2_*.md")).read_text()
    assert "### Other scale: random:tiny-llama" in markdown and "| badam |" in markdown


def test_figures_show_data_or_no_run(results_dir, tmp_path):
    doc = load_paper_values()
    runs = discover_runs(results_dir)
    fig = figures.figure_f2(runs)
    loss_ax, time_ax, eval_ax, cvar_ax, mean_rank_ax, *per_type_axes = fig.axes
    assert {line.get_label() for line in loss_ax.get_lines()} == {"BAdam", "LoRA"}  # one lr each: no lr suffix
    assert {line.get_label() for line in time_ax.get_lines()} == {"BAdam", "LoRA"}
    assert [t.get_text() for t in eval_ax.texts] == ["no run"]  # the tiny runs measured no held-out loss
    assert {line.get_label().split(":")[0] for line in cvar_ax.get_lines()} >= {"Adam", "BAdam"}
    assert {p.get_label() for p in mean_rank_ax.containers} >= {"Adam", "BAdam"}
    q_panel = next(ax for ax in per_type_axes if ax.get_title().startswith("q_proj"))
    assert {line.get_label() for line in q_panel.get_lines()} == {"Adam", "BAdam"}
    fig3 = figures.figure_f3(doc, runs)
    # every method of the ablation group is drawn, LoRA too (the figure is not limited to the paper's four)
    assert {line.get_label() for line in fig3.axes[0].get_lines()} == {"Adam", "BAdam", "LoRA"}
    assert len(fig3.axes[3].patches) == 0  # tiny-model runs without MT-bench: no bars, and no paper bars beside them
    assert sum(t.get_text() == "no run" for t in fig3.axes[3].texts) == 5  # Adam, BAdam, SGD, BSGD, LoRA
    assert len(figures.figure_f3(doc, []).axes[3].patches) == 4  # paper scale (no run yet): paper bars shown
    for fig in (figures.figure_f2([]), figures.figure_f3(doc, []), figures.figure_f4([])):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts and all("no " in t for t in texts)
        assert "No run of" in fig.texts[-1].get_text()  # the claim line says nothing could be checked


def test_bad_input_gives_one_clear_error(tmp_path, capsys):
    assert main(["--results", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--results", str(tmp_path), "--model-config", "smollm2"]) == 2
    assert "NAME=path/to/config.json" in capsys.readouterr().err
    (tmp_path / "g" / "r").mkdir(parents=True)
    (tmp_path / "g" / "r" / "summary.json").write_text("{not json")
    # a bad result is skipped and named (tests/plots/test_bad_results.py); --strict makes that a failure
    assert main(["--results", str(tmp_path), "--out", str(tmp_path / "o"), "--dpi", "20", "--strict"]) == 1
    assert "summary.json is not valid JSON" in capsys.readouterr().err


def test_empty_results_render_and_plots_never_imports_torch(tmp_path):
    # Every plots module is imported and every builder runs (on an empty tree: cheap, same code paths).
    out = tmp_path / "o"
    code = ("import sys; from plots.__main__ import main; "
            f"rc = main(['--results', {str(tmp_path)!r}, '--out', {str(out)!r}, '--dpi', '40']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'plots imported torch'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((out / "figures").glob("*.png"))) == len(FIGURE_IDS)
    rows = _csv(out, "T6")
    assert {r["method"] for r in rows} == {"base", "adam", "lomo", "lora", "galore", "badam"}
    assert all(r["GSM8K"] == "no run" for r in rows)
