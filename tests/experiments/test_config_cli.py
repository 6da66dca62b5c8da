"""Configs and the `python -m experiments.run` CLI: typing, overrides, validation messages, every shipped YAML."""
from __future__ import annotations

import pytest
import yaml

from baselines.registry import method_names
from experiments import run as run_cli
from experiments.config import (CONFIG_DIR, ConfigError, config_from_dict, config_to_dict, list_configs, load_config,
                                load_yaml, parse_override)


def test_yaml_strings_become_the_declared_types():
    cfg = config_from_dict({"method": {"name": "adam", "lr": "1e-5", "betas": "0.9,0.95"},
                            "train": {"max_steps": "5", "max_grad_norm": "null", "track_memory": "false",
                                      "epochs": 2}})
    assert cfg.method.lr == 1e-5 and isinstance(cfg.method.lr, float)
    assert cfg.method.options["betas"] == (0.9, 0.95)
    assert cfg.train.max_steps == 5 and cfg.train.max_grad_norm is None and cfg.train.track_memory is False
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert parse_override("train.max_steps=5") == ("train.max_steps", 5)
    assert parse_override("method.lr=1e-5") == ("method.lr", "1e-5")  # YAML 1.1 reads it as a string ...
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict({"train": {"batch_size": "two"}})
    with pytest.raises(ConfigError, match="expected true or false"):
        config_from_dict({"data": {"packing": "maybe"}})


def test_unknown_keys_are_rejected_with_the_valid_list():
    with pytest.raises(ConfigError, match="valid top-level keys: run_name, seed"):
        config_from_dict({"trian": {}})
    with pytest.raises(ConfigError, match=r"train\.bogus; valid keys in train: batch_size, grad_accum"):
        config_from_dict({"train": {"bogus": 1}})
    with pytest.raises(ConfigError, match=r"method\.rank for method 'adam'; valid keys: lr, weight_decay, betas, eps"):
        config_from_dict({"method": {"name": "adam", "rank": 8}})
    with pytest.raises(ConfigError, match=r"method\.badam\.switch_every for method 'badam'; valid keys: .*"
                                          r"switch_block_every"):
        config_from_dict({"method": {"name": "badam", "badam": {"switch_every": 2}}})
    with pytest.raises(ConfigError, match="unknown method 'adamw'; valid methods: " + ", ".join(method_names())):
        config_from_dict({"method": {"name": "adamw"}})
    with pytest.raises(ConfigError, match="switch_mode 'sideways' is not valid"):
        config_from_dict({"method": {"name": "badam", "switch_mode": "sideways"}})
    with pytest.raises(ConfigError, match="valid values: cosine, linear, constant"):
        config_from_dict({"train": {"lr_schedule": "step"}})


def test_an_empty_config_file_is_refused_not_run_with_every_default(tmp_path):
    (tmp_path / "mine.yaml").write_text("# my settings, not saved yet\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: the config is empty; valid: a mapping of sections"):
        load_config(tmp_path / "mine.yaml")


def test_fp16_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="fp16 is not supported.*use bf16"):
        config_from_dict({"model": {"dtype": "fp16"}})


def test_per_method_sections_and_command_line_precedence():
    base = {"method": {"name": "badam", "lr": "1e-6", "lora": {"lr": "1e-4", "rank": 16},
                       "badam": {"switch_block_every": 50}}}
    badam = config_from_dict(base)
    assert badam.method.lr == 1e-6 and badam.method.options == {"switch_block_every": 50}
    from experiments.config import apply_overrides
    lora = config_from_dict(apply_overrides(base, ["method.name=lora"]))
    assert lora.method.lr == 1e-4 and lora.method.options == {"rank": 16}  # its subsection beats the common lr
    forced = config_from_dict(apply_overrides(base, ["method.name=lora", "method.lr=3e-4", "method.rank=8"]),
                              forced_method_keys={"lr", "rank"})
    assert forced.method.lr == 3e-4 and forced.method.options == {"rank": 8}  # the command line beats both


def test_load_config_with_overrides_and_inheritance():
    cfg = load_config("small/smollm2_alpaca.yaml", ["method.name=lora", "method.rank=8", "train.max_steps=5"])
    assert cfg.method.name == "lora" and cfg.method.options["rank"] == 8 and cfg.train.max_steps == 5
    assert cfg.run_name == "smollm2_alpaca-lora"
    child = load_config("paper/llama2_7b_alpaca")
    parent = load_config("paper/llama3_8b_alpaca.yaml")
    assert child.method.lr == 1e-5 and parent.method.lr == 1e-6
    assert child.train == parent.train and child.model.source != parent.model.source
    with pytest.raises(ConfigError, match="available configs: "):
        load_config("nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("small/smollm2_alpaca.yaml", ["method.name=galore"])
    data = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))
    assert config_from_dict(data) == cfg


@pytest.mark.parametrize("name", list_configs())
def test_every_shipped_config_validates_for_each_method_it_configures(name):
    raw = load_yaml(CONFIG_DIR / name)
    assert raw.get("description"), f"{name}: a config says what it is for"
    configured = [m for m in (raw.get("method") or {}) if m in method_names()]
    for method in [raw["method"]["name"], *configured]:
        cfg = load_config(name, [f"method.name={method}"])
        assert cfg.method.name == method


def test_shipped_configs_cite_their_sources():
    for name in list_configs():
        if name.startswith("paper/") or name.startswith("memory/"):
            text = (CONFIG_DIR / name).read_text()
            assert "2404.02827" in text or "inherit:" in text, name
            assert text.lstrip().startswith("#"), f"{name}: starts with a comment naming its sources"


def test_a_mistyped_flag_is_one_line_naming_the_valid_flags(capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli.main(["--config", "small/smollm2_alpaca.yaml", "--overwite"])
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unrecognized arguments: --overwite; valid flags: " in err[0] and "--overwrite" in err[0]


def test_cli_rejects_unknown_method_and_key(capsys):
    assert run_cli.main(["--config", "small/smollm2_alpaca.yaml", "method.name=adamw"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'adamw'" in err and "valid methods: " in err and "adalomo, adam, " in err
    assert run_cli.main(["--config", "small/smollm2_alpaca.yaml", "train.stepz=3"]) == 2
    assert "valid keys in train" in capsys.readouterr().err
    assert run_cli.main(["--config", "small/smollm2_alpaca.yaml", "train.max_steps"]) == 2
    assert "section.key=value" in capsys.readouterr().err


def test_cli_list_and_print_config(capsys):
    assert run_cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in method_names():
        assert f"  {name} " in out
    for name in list_configs():
        assert name in out
    assert "cpu" in out and "paper" in out
    assert run_cli.main(["--config", "small/smollm2_alpaca.yaml", "method.name=sgd", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"]["name"] == "sgd" and printed["method"]["lr"] == 1e-3


def test_cli_trains_and_writes_a_run_directory(tmp_path, capsys):
    """One real CLI run on a tiny random Llama with the shared Alpaca sample and the SmolLM2 tokenizer."""
    args = ["--config", "small/smollm2_alpaca.yaml", "model.source=random:tiny-llama", "method.name=adam",
            "train.max_steps=2", "train.grad_accum=1", "data.max_samples=6", "data.eval_samples=2",
            "data.max_length=48", f"output.dir={tmp_path}", "--no-progress"]
    assert run_cli.main(args) == 0
    run_dir = tmp_path / "smollm2_alpaca-adam"
    from experiments.results import read_metrics, read_summary
    summary = read_summary(run_dir)
    assert summary["status"] == "ok" and summary["steps"] == 2 and summary["final_eval_loss"] is not None
    assert summary["data_stats"]["records"] == 6 and summary["data_stats"]["eval_examples"] == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["name"] == "adam"
    assert len(read_metrics(run_dir)) == 2
    # the same name again: a suffix, never an overwrite
    assert run_cli.main(args) == 0 and (tmp_path / "smollm2_alpaca-adam-2" / "summary.json").exists()
    assert run_cli.main([*args, "--refuse-existing"]) == 2


def test_process_defaults_apply_before_torch_and_never_override_the_user():
    import os
    import subprocess
    import sys

    code = "import experiments.run, os; print(os.environ['PYTORCH_CUDA_ALLOC_CONF'], os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["expandable_segments:True", "PASSIVE"]
    env["PYTORCH_CUDA_ALLOC_CONF"] = "max_split_size_mb:128"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "max_split_size_mb:128"


def test_fsdp_forward_prefetch_must_not_be_negative():
    from experiments.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="fsdp_forward_prefetch"):
        load_config("small/smollm2_alpaca.yaml", ["train.fsdp_forward_prefetch=-1"])


def test_every_default_data_source_is_a_shared_dataset():
    """A config that names no data.source (an empty YAML file, or a minimal one) trains on the default: it must exist,
    not be sent to the hub as an unknown dataset name."""
    from experiments.config import DataConfig
    from experiments.data import DATASET_ALIASES, load_records

    assert DataConfig().source in DATASET_ALIASES
    assert len(load_records(DataConfig().source, max_samples=2)) == 2


def test_checkpointing_policy_is_checked_and_reaches_the_model():
    from experiments.config import ConfigError, load_config
    from experiments.run import load_run_model

    with pytest.raises(ConfigError, match="model.checkpointing_policy='graphs' is not valid; valid values: block, "
                                          "block-graphed, block-reentrant, block-reentrant-graphed, non-reentrant"):
        load_config("small/smollm2_alpaca.yaml", ["model.checkpointing_policy=graphs"])
    with pytest.raises(ConfigError, match="model.checkpointing_policy=block chooses how layers checkpoint; set "
                                          "model.gradient_checkpointing=true with it"):
        load_config("small/smollm2_alpaca.yaml", ["model.checkpointing_policy=block",
                                                  "model.gradient_checkpointing=false"])
    cfg = load_config("small/smollm2_alpaca.yaml", ["model.source=random:tiny-llama", "model.tokenizer=tok512",
                                                    "model.gradient_checkpointing=true",
                                                    "model.checkpointing_policy=block-graphed"])
    model, _ = load_run_model(cfg, "cpu")
    function = model.model.layers[0]._gradient_checkpointing_func
    assert function.func.__name__ == "block_checkpoint" and function.keywords["graphs"] is not None
