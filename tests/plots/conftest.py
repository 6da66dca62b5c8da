"""A small results/ tree for the plots tests.

Three REAL short runs (Adam, LoRA, BAdam; 4 steps of a tiny random Llama on CPU through experiments.loop.train,
with real rank.json files from eval.rank) are made once per session. To exercise the paper-scale rows, copies of
them are RELABELLED (model name, lr, status) and evaluator outputs that cannot be produced in a unit test (MT-bench
judgments, math and SuperGLUE scores) are written by hand: every such file carries "fixture_note": FAKE. All of it
lives in pytest's tmp directory, never under results/.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.plots.synthetic import edit_summary

FAKE = "FAKE test fixture: {what}; not a measurement"


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from baselines.registry import get_method_class
    from eval import rank
    from experiments.config import build_method_options, config_from_dict, config_to_dict
    from experiments.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead; restored below
    root = tmp_path_factory.mktemp("real_runs")
    arch = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)

    def batches(epoch):
        gen = torch.Generator().manual_seed(epoch)
        for _ in range(4):
            ids = torch.randint(0, 64, (2, 8), generator=gen)
            yield {"input_ids": ids, "labels": ids}

    out = {}
    for name, options in (("adam", {}), ("lora", {"rank": 2}),
                          ("badam", {"switch_block_every": 1, "switch_mode": "ascending"})):
        cfg = config_from_dict({"model": {"source": "random:tiny-llama", "dtype": "fp32"},
                                "method": {"name": name, "lr": 1e-3, **options},
                                "train": {"batch_size": 2, "epochs": 1, "timing_warmup_steps": 1}}, stem="tiny")
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(arch)
        model.save_pretrained(root / "base")
        method = get_method_class(name)(build_method_options(cfg.method), lr=cfg.method.lr)
        run_dir = root / f"tiny-{name}"
        summary = train(model, method, batches, cfg.train, run_dir, progress=False,
                        meta={"run_name": run_dir.name, "model": cfg.model.source, "config": config_to_dict(cfg)},
                        save_model_dir=run_dir / "model" if name != "lora" else None)
        assert summary["status"] == "ok", summary["error"]
        if name != "lora":
            rank.run(str(root / "base"), str(run_dir / "model"), run_dir / "eval" / "rank.json", device="cpu")
            shutil.rmtree(run_dir / "model")
        out[name] = run_dir
    torch.set_num_threads(threads)
    return out


def _copy(src: Path, dest: Path, *, fake: str | None = None, **changes) -> Path:
    """Copy a run; `changes` edit summary.json (dotted keys for nested fields) and mark it FAKE."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("model"))
    edit_summary(dest, {**changes, **({"fixture_note": FAKE.format(what=fake)} if fake else {})}, sep="__")
    return dest


@pytest.fixture(scope="session")
def results_dir(real_runs, tmp_path_factory) -> Path:
    res = tmp_path_factory.mktemp("results")
    adam, lora, badam = real_runs["adam"], real_runs["lora"], real_runs["badam"]
    # Real runs, their own (other) scale.
    for group in ("paper_memory_tiny", "paper_time_tiny", "paper_rank_tiny", "ablation_bsgd_tiny"):
        for run in (adam, lora, badam):
            shutil.copytree(run, res / group / run.name)
    shutil.copytree(badam, res / "ablation_order_tiny" / badam.name)
    shutil.copytree(badam, res / "ablation_k_tiny" / badam.name)
    # Paper-scale rows: relabelled copies.
    big = "random:llama3-8b"
    _copy(badam, res / "paper_memory_llama3_8b" / "badam", fake="tiny run relabelled as Llama 3-8B", model=big)
    _copy(lora, res / "paper_memory_llama3_8b" / "lora8", fake="status set to oom", model=big, status="oom",
          method_info__options__rank=8)
    _copy(badam, res / "paper_time_llama3_8b" / "badam", fake="tiny run relabelled", model=big)
    _copy(lora, res / "paper_time_llama2_7b" / "lora", fake="tiny run relabelled as Llama 2-7B", model="random:llama2-7b")
    _copy(adam, res / "paper_backward_llama3_8b" / "adam", fake="tiny run relabelled", model=big)
    hub = "meta-llama/Meta-Llama-3-8B"
    for name, run, score in (("badam", badam, 6.5), ("lora", lora, 6.0)):
        dest = _copy(run, res / "paper_mtbench_llama3_8b" / name, fake="relabelled, lr set to 1e-6", model=hub,
                     method_info__lr=1e-6)
        (dest / "eval" / "rank.json").unlink(missing_ok=True)  # a tiny model's rank is not Llama 3-8B's
        _write_json(dest / "eval" / "mtbench" / "scores_fake-judge.json",
                    {"judge": "fake-judge", "fixture_note": FAKE.format(what="no judge ran"),
                     "models": {dest.name: {"turn1": score, "turn2": score, "overall": score}}})
    dest = _copy(badam, res / "paper_math_llama3_8b" / "badam", fake="relabelled", model=hub)
    datasets = {"gsm8k": 50.0, "aqua": 40.0, "mmlu_math": 45.0, "sat": 55.0, "math": 15.0, "numglue": 50.0}
    _write_json(dest / "eval" / "math.json", {
        "evaluator": "math", "fixture_note": FAKE.format(what="no generation ran"),
        "datasets": {k: {"accuracy_pct": v, "correct": 1, "total": 2} for k, v in datasets.items()},
        "average_accuracy_pct": sum(datasets.values()) / 6})
    # eval.superglue's layout: <out>/eval/superglue.json and one harness run per task in <out>/tasks/<task>/.
    out = res / "paper_superglue_roberta" / "roberta-large-badam"
    _copy(badam, out / "tasks" / "boolq", fake="tiny run standing in for a task run", model="roberta-large")
    _write_json(out / "eval" / "superglue.json", {
        "evaluator": "superglue", "units": "percent", "model": "roberta-large", "method": "badam",
        "fixture_note": FAKE.format(what="no classifier ran"),
        "tasks": {"boolq": {"task": "boolq", "status": "ok", "metrics": {"accuracy": 80.0, "score": 80.0}},
                  "rte": {"task": "rte", "status": "ok", "metrics": {"accuracy": 70.0, "score": 70.0}},
                  "wic": {"task": "wic", "status": "oom", "metrics": None}}})
    return res
