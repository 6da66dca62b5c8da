"""train.compile_layers (experiments/layer_compile_run.py): the harness compiles every decoder layer (backend
"aot_eager": Dynamo's capture and guards without a C compiler) and trains the eager numbers bit for bit, records what
it compiled and leaves the steps that compiled out of the timing medians; refusals are one line."""
from __future__ import annotations

import statistics

import pytest
import torch
import torch._dynamo
from transformers import LlamaConfig, LlamaForCausalLM

from badam.hf import enable_block_checkpointing

from experiments import run as run_cli
from experiments.config import ConfigError, TrainConfig, load_config
from experiments.loop import train
from experiments.results import read_metrics

from tests.experiments.test_loop import fixed_batch, make_method

CONFIG = "small/smollm2_alpaca.yaml"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """compile_decoder_layers sets fail_on_recompile_limit_hit for the process: restored after each test (Dynamo's
    own patch: monkeypatch's undo deletes a config entry)."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False):
        yield
    torch._dynamo.reset()


def llama(layers: int = 3) -> LlamaForCausalLM:
    """fp32 (aot_eager then gives the eager numbers exactly), checkpointing on as experiments.models sets it."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128))
    enable_block_checkpointing(model)
    return model


METHODS = {"badam": {"switch_block_every": 2, "switch_mode": "ascending", "start_block": 0}, "adam": {},
           "lora": {}}


def run(tmp_path, name: str, compile_layers: str, **train_settings) -> tuple[dict, list[dict]]:
    batches = [fixed_batch(length=16, seed=s) for s in range(6)]
    cfg = TrainConfig(max_steps=6, lr_schedule="constant", compile_layers=compile_layers, **train_settings)
    summary = train(llama(), make_method(name, **METHODS[name]), lambda epoch: batches, cfg, tmp_path, seed=0,
                    progress=False)
    assert summary["status"] == "ok", summary["error"]
    return summary, read_metrics(tmp_path)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_compiled_layers_train_the_eager_losses_and_record_what_was_compiled(tmp_path, name):
    eager, eager_records = run(tmp_path / "eager", name, "none")
    summary, records = run(tmp_path / "compiled", name, "aot_eager")
    assert [r["loss"] for r in records] == [r["loss"] for r in eager_records]
    stats = summary["compile_layers"]
    assert stats["backend"] == "aot_eager" and stats["layers"] == 3 and stats["graph_breaks"] == 0
    assert stats["graphs"] == sum(r["compiled_graphs"] for r in records) > 0
    assert "compile_layers" not in eager and "compiled_graphs" not in eager_records[0]
    assert "compiling_steps_excluded" not in eager["timing_ms"]
    if name == "badam":
        # steps 1 (the active layer, those above it) and 3 (the first switch: the layer below the active one) compile;
        # the switch at step 5 reuses the three graphs
        assert [r["compiled_graphs"] for r in records] == [2, 0, 1, 0, 0, 0]
        assert [r["active_block"] for r in records] == [0, 1, 1, 2, 2, 0]  # the block of the next step
        timed = [records[i]["t_step_ms"] for i in (3, 4, 5)]  # past the 2 warm-up steps, step 3 left out
        assert summary["timing_ms"]["step"] == statistics.median(timed)
        assert summary["timing_ms"]["compiling_steps_excluded"] == 1
    else:
        assert [r["compiled_graphs"] for r in records] == [1, 0, 0, 0, 0, 0]  # trainable everywhere: one graph
        assert summary["timing_ms"]["compiling_steps_excluded"] == 0


def test_checkpoints_of_compiled_layers_keep_their_keys_and_resume_exactly(tmp_path):
    _, whole = run(tmp_path / "whole", "badam", "aot_eager")
    run(tmp_path / "cut", "badam", "aot_eager", save_every=2, stop_after_steps=3)
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 3 and list(saved["model"]) == list(llama().state_dict())  # no key of the compiled forward
    summary, resumed = run(tmp_path / "cut", "badam", "aot_eager", save_every=2, resume_from=str(tmp_path / "cut"))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole] and len(resumed) == 6
    assert summary["compile_layers"]["graphs"] > 0


def test_a_bad_backend_is_one_config_error_naming_the_choices():
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIG, ["train.compile_layers=tvm"])
    assert str(caught.value) == ("train.compile_layers='tvm' is not valid; valid values: none, inductor, aot_eager, "
                                 "eager")
    assert load_config(CONFIG, ["train.compile_layers=eager"]).train.compile_layers == "eager"


@pytest.mark.parametrize("overrides,named", [
    (["method.name=blockllm"], "method 'blockllm': each reselection gives the layers new sets of trainable tensors"),
    (["method.name=badam", "method.partition=matrix"], "method 'badam': partition=matrix makes each of a layer's"),
])
def test_methods_that_cannot_train_compiled_layers_are_refused(tmp_path, overrides, named):
    """Their trainable tensors change within layers: a Dynamo graph for each set, until the recompile limit (the
    classes' compile_layers_problem). Refused by the config, and by train() for a caller without a config."""
    with pytest.raises(ConfigError, match=f"train.compile_layers=aot_eager is not offered for {named}"):
        load_config(CONFIG, [*overrides, "train.compile_layers=aot_eager"])
    load_config(CONFIG, overrides)  # without compiling they run
    name, options = overrides[0].split("=")[1], dict(o.removeprefix("method.").split("=") for o in overrides[1:])
    summary = train(llama(), make_method(name, **options), lambda epoch: [fixed_batch()],
                    TrainConfig(max_steps=1, compile_layers="aot_eager"), tmp_path, progress=False)
    assert summary["status"] == "error" and summary["steps"] == 0 and "recompile limit" in summary["error"]
    assert load_config(CONFIG, ["method.name=badam", "method.partition=attn_mlp", "train.compile_layers=aot_eager"])


def test_lora_compiles_under_inductor_with_eager_bf16_roundings(tmp_path, monkeypatch):
    """LoRA under inductor's defaults trained 10-20x faster at its first step than eager and fp32 on an H100 (bf16);
    with emulate_precision_casts it agreed with eager (the probe in results/bench/compile_layers_h100x1). So LoRA is
    offered under inductor and its layers are compiled with that setting, which summary.json records; BAdam keeps
    inductor's defaults. torch.compile is replaced by a recorder (inductor would need a C compiler here)."""
    seen = []

    def recording_compile(fn, backend, options=None):
        seen.append((backend, options))
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    assert load_config(CONFIG, ["method.name=lora", "train.compile_layers=inductor"]).train.compile_layers == "inductor"
    summary, _ = run(tmp_path / "lora", "lora", "inductor")
    assert seen == [("inductor", {"emulate_precision_casts": True})]
    assert summary["compile_layers"]["inductor_options"] == {"emulate_precision_casts": True}
    seen.clear()
    summary, _ = run(tmp_path / "badam", "badam", "inductor")
    assert seen == [("inductor", None)] and summary["compile_layers"]["inductor_options"] == {}
    seen.clear()
    run(tmp_path / "lora_aot", "lora", "aot_eager")  # no code generated: no inductor settings passed
    assert seen == [("aot_eager", None)]


def test_a_refused_compile_runs_with_a_warning_only_when_asked(monkeypatch):
    """BADAM_ALLOW_REFUSED_COMPILE=1 (to investigate a refusal on a GPU) turns the refusal into a warning."""
    overrides = ["method.name=badam", "method.partition=matrix", "train.compile_layers=aot_eager"]
    monkeypatch.setenv("BADAM_ALLOW_REFUSED_COMPILE", "1")
    with pytest.warns(UserWarning, match="runs although refused"):
        assert load_config(CONFIG, overrides).method.name == "badam"
    monkeypatch.setenv("BADAM_ALLOW_REFUSED_COMPILE", "0")
    with pytest.raises(ConfigError, match="is not offered for method 'badam'"):
        load_config(CONFIG, overrides)


def test_a_model_without_decoder_layers_is_one_error_line(tmp_path, capsys):
    code = run_cli.main(["--config", CONFIG, "model.source=random:tiny-gpt2", "method.name=adam",
                         "train.compile_layers=aot_eager", "train.max_steps=1", "data.max_samples=2",
                         "data.eval_samples=0", "data.max_length=16", f"output.dir={tmp_path}", "--no-progress"])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "train.compile_layers" in line]
    assert len(err) == 1 and ("ConfigError: train.compile_layers=aot_eager: GPT2LMHeadModel has no decoder layers at "
                              "model.model.layers") in err[0], err


def test_the_method_list_says_which_methods_cannot_compile(monkeypatch):
    """`python -m baselines list` (and experiments.run --list): a refusal with every backend, or with inductor only."""
    from baselines.lora import LoRA
    from baselines.registry import describe_methods

    flags = {line.split()[0]: line[line.index("[") + 1:line.index("]")] for line in describe_methods()}
    assert "no compiled layers" in flags["blockllm"]
    assert "compiled" not in flags["lora"] and "inductor" not in flags["lora"]  # compiled with eager's bf16 roundings
    assert "compiled" not in flags["badam"] and "inductor" not in flags["badam"]  # partition=layers by default
    # a method that refuses inductor only (none does now) is flagged so
    monkeypatch.setattr(LoRA, "compile_layers_problem", classmethod(lambda cls, options, backend:
                                                                      "why" if backend == "inductor" else None))
    flags = {line.split()[0]: line[line.index("[") + 1:line.index("]")] for line in describe_methods()}
    assert "no inductor" in flags["lora"] and "no compiled layers" not in flags["lora"]
