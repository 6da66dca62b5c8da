"""eval.math as the quality profile runs it: a limit per dataset (MATH's stratified subset), batches capped by prompt
tokens, the base model's own run directory, runs already evaluated or without weights, several models at once over
GPUs (eval/runs.py), and the results check that scripts/gpu/restore_runs.py relies on."""
from __future__ import annotations

import json
import sys

import pytest

import eval.math as math_eval
import eval.math.runner as runner
from eval.__main__ import main as eval_main
from eval.generation import BatchOutput
from eval.math import build_prompt, evaluate_math, evaluate_runs, load_items, results_complete, select_subset
from eval.math.__main__ import main as math_main
from eval.math.runner import batches_by_length
from eval.runs import BASE_METHOD, base_model_source, run_on_gpus
from experiments.models import load_model
from experiments.templates import math_conversation
from tests.eval.math_stubs import NoModel, tokenizer_stub

TINY = "random:tiny-llama"
FAST = {"limit": {"gsm8k": 2, "sat": 1}, "datasets": "gsm8k,sat", "batch_size": 2, "max_new_tokens": 2,
        "prompt_style": "chat_question"}


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY, dtype="fp32", device="cpu")


def test_batches_are_capped_by_rows_and_by_padded_prompt_tokens():
    lengths = [900, 500, 120, 110, 100, 90, 80]                  # sorted longest first, as the runner sorts them
    assert [list(b) for b in batches_by_length(lengths, 4)] == [[0, 1, 2, 3], [4, 5, 6]]
    # 1,000 tokens a batch: the 900-token prompt alone, then two of 500, then up to 4 rows
    assert [list(b) for b in batches_by_length(lengths, 4, 1000)] == [[0], [1, 2], [3, 4, 5, 6]]
    assert [list(b) for b in batches_by_length([5000, 10], 4, 1000)] == [[0], [1]]   # never an empty batch


def test_chat_question_prompt_is_the_question_alone_as_in_math_fine_tuning(tiny):
    _model, tokenizer = tiny

    gsm8k, aqua = load_items("gsm8k")[0], load_items("aqua")[0]
    prompt = build_prompt(gsm8k, "chat_question", tokenizer)
    trained = tokenizer.apply_chat_template([{"role": "user", "content": math_conversation(
        {"question": gsm8k.question, "answer": "x #### 1"})[1][0][0]}], tokenize=False, add_generation_prompt=True)
    assert prompt == trained and "The answer is" not in prompt
    assert build_prompt(aqua, "chat_question", tokenizer) == build_prompt(aqua, "chat", tokenizer)  # letter request


def test_limit_per_dataset_takes_an_evenly_spread_subset(monkeypatch, tmp_path):
    seen = []

    def oracle(model, tok, encoded, options):
        seen.append(len(encoded))
        return ["The answer is 1."] * len(encoded), BatchOutput([[1]] * len(encoded), [1] * len(encoded), 0.01)

    monkeypatch.setattr(runner, "generate_encoded", oracle)
    results = evaluate_math(NoModel(), tokenizer_stub(), out_dir=tmp_path, model_name="oracle",
                            datasets=["math", "sat"], limit={"math": 50}, batch_size=64, max_batch_tokens=1000)
    assert results["datasets"]["math"]["total"] == 50 and results["datasets"]["sat"]["total"] == 220
    assert results["limit"] == {"math": 50} and results["generation"]["max_batch_tokens"] == 1000
    indexes = [json.loads(line)["index"] for line in (tmp_path / "math" / "math.jsonl").read_text().splitlines()]
    assert indexes == [item.index for item in select_subset(load_items("math"), 50)] == list(range(0, 5000, 100))
    subjects = {json.loads(line)["subject"] for line in (tmp_path / "math" / "math.jsonl").read_text().splitlines()}
    assert len(subjects) == 7                                    # every MATH subject is in the subset
    assert sum(seen) == 270 and max(seen) <= 64
    assert results_complete(tmp_path, datasets=["math", "sat"], limit={"math": 50})
    assert not results_complete(tmp_path, datasets=["math", "sat"])                 # all 5,000 were asked for
    assert not results_complete(tmp_path, datasets=["math", "sat"], limit={"math": 50}, prompt_style="chat_question")
    with pytest.raises(ValueError, match="limit names dataset.s. not evaluated: gsm8k; evaluated: math"):
        evaluate_math(NoModel(), tokenizer_stub(), out_dir=tmp_path, model_name="o", datasets=["math"],
                      limit={"gsm8k": 5})


def test_cli_limit_per_dataset_and_its_errors(tmp_path, capsys):
    assert math_main(["--model", TINY, "--datasets", "gsm8k,sat", "--limit", "sat=1,gsm8k=2", "--batch-size", "2",
                      "--max-new-tokens", "2", "--max-batch-tokens", "400", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "math.json").read_text())
    assert {n: d["total"] for n, d in saved["datasets"].items()} == {"gsm8k": 2, "sat": 1}
    capsys.readouterr()
    for bad, message in ((["--limit", "math=0"], "limit must be a positive number"),
                         (["--limit", "aqua=3"], "limit names dataset(s) not evaluated: aqua"),
                         (["--limit", "sat=x"], "--limit"), (["--max-batch-tokens", "0"], "--max-batch-tokens")):
        assert math_main(["--model", TINY, "--datasets", "sat", "--out", str(tmp_path), *bad]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error


def _run(group, name, method, model_source, save_from=None):
    run = group / name
    run.mkdir(parents=True)
    summary = {"status": "ok", "run_name": name, "method": method, "model": model_source,
               "config": {"model": {"source": model_source}}}
    (run / "summary.json").write_text(json.dumps(summary))
    if save_from is not None:
        model, tokenizer = save_from
        model.save_pretrained(run / "model")
        tokenizer.save_pretrained(run / "model")
    return run


def test_runs_and_the_base_model_then_nothing_twice(tiny, tmp_path, monkeypatch):
    group = tmp_path / "paper_math_tiny"
    trained = _run(group, "m-adam-s0", "adam", TINY, save_from=tiny)
    restored = _run(group, "m-badam-s0", "badam", TINY)                # weights stayed on another machine
    note = evaluate_runs([trained, restored], base=True, **FAST)
    base = group / f"m-{BASE_METHOD}"
    assert base_model_source(base) == TINY and base_model_source(trained) is None
    summary = json.loads((base / "summary.json").read_text())
    assert summary["method"] == "base" and summary["status"] == "ok" and "math" in summary["note"]
    for run in (trained, base):
        assert results_complete(run / "eval", **FAST)
    assert "m-adam-s0: " in note and "m-base: " in note and "no saved model, not evaluated: m-badam-s0" in note

    # again: every result is complete, so no model is loaded (a restored run would have none to load)
    monkeypatch.setattr(math_eval, "evaluate_source", lambda *a, **k: pytest.fail("evaluated again"))
    note = evaluate_runs([trained, restored], base=True, **FAST)
    assert "already evaluated: m-adam-s0, m-base" in note


def test_several_models_go_to_child_processes_spread_over_the_gpus(tiny, tmp_path, monkeypatch):
    group = tmp_path / "paper_math_tiny"
    runs = [_run(group, f"m-{m}-s0", m, TINY, save_from=tiny) for m in ("adam", "lora")]
    calls = []

    def fake_run_on_gpus(commands, gpus, *, per_gpu):
        calls.append((gpus, per_gpu))
        monkeypatch.setattr(math_eval, "default_device", lambda: "cpu")   # the children here have no GPU
        for command in commands:   # what each child runs, here in this process on the CPU
            assert command[:4] == [sys.executable, "-m", "eval", "math"]
        return [eval_main(command[3:]) for command in commands]

    monkeypatch.setattr(math_eval, "default_device", lambda: "cuda")
    monkeypatch.setattr(math_eval, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(math_eval, "run_on_gpus", fake_run_on_gpus)
    note = evaluate_runs(runs, base=True, jobs_per_gpu=3, **FAST, device="auto")
    assert calls == [(["0", "1"], 3)]
    assert all(f"{name}: " in note for name in ("m-adam-s0", "m-lora-s0", "m-base"))
    with pytest.raises(ValueError, match="jobs_per_gpu must be a positive integer"):
        evaluate_runs(runs, jobs_per_gpu=0, **FAST)


def test_run_on_gpus_pins_each_child_and_bounds_them_per_gpu(tmp_path):
    script = ("import os, sys, time; start = time.time(); time.sleep(0.4); open(sys.argv[1], 'w').write("
              "f\"{os.environ['CUDA_VISIBLE_DEVICES']} {os.environ['BADAM_SHARED_DEVICE_RUNS']} {start} {time.time()}\"); "
              "sys.exit(int(sys.argv[2]))")
    commands = [[sys.executable, "-c", script, str(tmp_path / f"c{i}"), "3" if i == 4 else "0"] for i in range(5)]
    assert run_on_gpus(commands, ["0", "7"], per_gpu=2, poll_s=0.02) == [0, 0, 0, 0, 3]
    seen = [(tmp_path / f"c{i}").read_text().split() for i in range(5)]
    assert {shared for _, shared, _, _ in seen} == {"2"} and {gpu for gpu, *_ in seen} == {"0", "7"}
    for gpu in ("0", "7"):   # never more than two children at once on a GPU
        spans = [(float(a), float(b)) for g, _, a, b in seen if g == gpu]
        assert all(sum(a <= t < b for a, b in spans) <= 2 for t, _ in spans)
    with pytest.raises(ValueError, match="at least one GPU"):
        run_on_gpus(commands, [])
