"""train.distributed=auto (experiments/launch_mode.py): one process gets the plain path, torchrun gets ddp when the
model fits one GPU replicated and fsdp2 when it does not or the method only runs sharded; the run records the mode."""
from __future__ import annotations

import pytest
import yaml

from experiments import launch_mode
from experiments import run as run_cli
from experiments.config import ConfigError, load_config
from experiments.run import check_launch

CONFIG = "small/smollm2_alpaca.yaml"
GIB = 2 ** 30


def config(*overrides: str):
    return load_config(CONFIG, ["model.source=random:tiny-llama", *overrides])


@pytest.fixture
def torchrun(monkeypatch):
    """The environment of rank 0 of two processes started by torchrun."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)


def test_the_default_is_auto_and_one_process_gets_the_plain_path(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = config()
    assert cfg.train.distributed == "auto"
    assert launch_mode.resolve_distributed(cfg).train.distributed == "none"
    assert capsys.readouterr().out == ""  # nothing to announce on one process
    assert launch_mode.resolve_distributed(config("train.distributed=fsdp2")).train.distributed == "fsdp2"


def test_torchrun_on_the_cpu_gets_ddp_and_says_why(torchrun, capsys):
    cfg = launch_mode.resolve_distributed(config("train.device=cpu"))
    assert cfg.train.distributed == "ddp"
    assert capsys.readouterr().out == ("train.distributed=auto -> ddp: 2 processes on the CPU (gloo); method badam "
                                       "runs replicated (set train.distributed to choose)\n")


def memory_between_layouts(*overrides: str) -> float:
    """GiB of a GPU whose FIT_SHARE holds tiny-llama under BAdam with its frozen blocks sharded over 2 GPUs, but not
    replicated."""
    shape = launch_mode.model_shape(config(*overrides))
    replicated = 2 * shape.params + 16 * shape.params / shape.layers  # 2M + 16M/D
    block = shape.layer_stack / shape.layers
    sharded = 2 * (shape.layer_stack / 2 + shape.params - shape.layer_stack + block) + 16 * block
    assert sharded < replicated
    return (replicated + sharded) / 2 / launch_mode.FIT_SHARE / GIB


@pytest.mark.parametrize("layout", ["replicated", "frozen sharded", "fsdp2"])
def test_torchrun_on_gpus_replicates_what_fits_then_shards_frozen_blocks_then_everything(torchrun, monkeypatch,
                                                                                         layout):
    memory_gib = {"replicated": 80.0, "frozen sharded": memory_between_layouts(), "fsdp2": 0.0001}[layout]
    monkeypatch.setattr(launch_mode, "device_memory", lambda cfg: int(memory_gib * GIB))
    choice = launch_mode.choose(config(), 2)
    assert (choice.mode, choice.shard_frozen) == {"replicated": ("ddp", False), "frozen sharded": ("ddp", True),
                                                  "fsdp2": ("fsdp2", False)}[layout]
    shape = launch_mode.model_shape(config())  # the architecture on the meta device
    assert (shape.layers, shape.hidden) == (2, 64) and 0 < shape.layer_stack < shape.params
    need = 2 * shape.params + 16 * shape.params / shape.layers  # BAdam: 2M + 16M/D
    assert f"{need / GIB:.1f} GiB of weights and states per GPU (2M + 16M/D" in choice.why
    assert ("fits one GPU replicated" in choice.why) == (layout == "replicated")
    assert ("with its frozen blocks sharded over 2 GPUs it needs" in choice.why) == (layout == "frozen sharded")


def test_auto_records_the_frozen_sharding_it_chose_and_says_so(torchrun, monkeypatch, capsys):
    memory_gib = memory_between_layouts()
    monkeypatch.setattr(launch_mode, "device_memory", lambda cfg: int(memory_gib * GIB))
    cfg = launch_mode.resolve_distributed(config())
    assert (cfg.train.distributed, cfg.train.ddp_shard_frozen) == ("ddp", True)
    assert capsys.readouterr().out.startswith("train.distributed=auto -> ddp with the frozen blocks sharded "
                                              "(train.ddp_shard_frozen=true): the model does not fit one GPU")
    # a method whose options cannot shard (the overlapped update) goes to FSDP2 instead; LoRA has no frozen blocks
    choice = launch_mode.choose(config("method.overlap_update=true"), 2)
    assert (choice.mode, choice.shard_frozen) == ("fsdp2", False)
    # asked for explicitly, auto gives it whatever the memory, or says in one line why it cannot
    choice = launch_mode.choose(config("train.ddp_shard_frozen=true"), 2)
    assert (choice.mode, choice.shard_frozen) == ("ddp", True)
    with pytest.raises(ConfigError, match="train.ddp_shard_frozen=true, but method 'lora' cannot shard its frozen "
                                          "blocks under ddp: only block-coordinate methods"):
        launch_mode.choose(config("method.name=lora", "train.ddp_shard_frozen=true"), 2)


def test_the_harness_refuses_frozen_sharding_with_the_overlapped_update_in_one_line():
    from baselines.errors import MethodUnsupportedError
    from experiments.ddp import DataParallel
    from experiments.run import build_run_method

    method = build_run_method(config("method.overlap_update=true"))
    with pytest.raises(MethodUnsupportedError, match="train.ddp_shard_frozen with method badam: overlap_update "
                                                     "writes the updated weights"):
        DataParallel(None, method, None, shard_frozen=True)


def test_frozen_sharded_bytes_split_the_layer_stack_only():
    from experiments.memory_model import frozen_sharded_bytes

    # 1,000 parameters, 800 in 8 layers, 2 GPUs: 2 (400 + 200 + 100) + 16 x 100
    estimate = frozen_sharded_bytes(1000, 800, 100, 2)
    assert estimate.bytes == 3000 and estimate.formula == "2(P_layers/N + P_rest + P_block) + 16P_block"
    assert frozen_sharded_bytes(1000, 800, 100, 1, trained_extra=12).bytes == 2 * 1100 + 1200
    with pytest.raises(ValueError, match="devices must be >= 1"):
        frozen_sharded_bytes(1000, 800, 100, 0)


def test_replicated_bytes_follow_the_memory_model():
    assert launch_mode.replicated_bytes("adam", {}, 1000, 10, 100, 2) == (18_000, "18M")
    assert launch_mode.replicated_bytes("lora", {"rank": 8}, 1000, 10, 100, 2)[1] == "2M + 36rM/m (r=8, m=100)"
    assert launch_mode.replicated_bytes("sgd", {}, 1000, 10, 100, 2) == (14_000, "2M + 12M")
    assert launch_mode.replicated_bytes("bsgd", {}, 1000, 10, 100, 4) == (5_200, "2M + 12M/D")
    assert launch_mode.replicated_bytes("muon", {}, 1000, 10, 100, 4) == (4000, "the weights alone (no formula for "
                                                                           "this method)")


def test_a_gpu_index_with_several_processes_is_one_error(torchrun, monkeypatch):
    monkeypatch.setattr(launch_mode, "device_memory", lambda cfg: 80 * GIB)
    with pytest.raises(ConfigError, match=r"train.device='cuda:1' with 2 processes: each process takes cuda:LOCAL"):
        launch_mode.resolve_distributed(config("train.device=cuda:1"))


def test_an_explicit_none_under_torchrun_is_still_refused(torchrun):
    with pytest.raises(ConfigError, match="started as 2 processes .torchrun. but train.distributed=none"):
        check_launch(launch_mode.resolve_distributed(config("train.distributed=none")))


def test_the_run_records_the_mode_it_got(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = run_cli.main(["--config", CONFIG, "model.source=random:tiny-llama", "train.max_steps=1",
                         "data.max_samples=2", "data.eval_samples=0", "train.grad_accum=1", "data.max_length=16",
                         "train.device=cpu",
                         f"output.dir={tmp_path}", "run_name=auto", "--no-progress"])
    assert code == 0
    recorded = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert recorded["train"]["distributed"] == "none"


def test_torchrun_without_a_mode_trains_data_parallel(tmp_path):
    """End to end: two gloo processes started by torchrun, no train.distributed given."""
    import json
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "experiments.run",
           "--config", CONFIG, "model.source=random:tiny-llama", "train.max_steps=2", "data.max_samples=8",
           "data.eval_samples=0", "data.max_length=16", "train.grad_accum=1", "train.device=cpu",
           f"output.dir={tmp_path}", "run_name=auto", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("train.distributed=auto -> ddp") == 1  # rank 0 says it once
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["distributed"]["mode"] == "ddp" and summary["distributed"]["world_size"] == 2
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["train"]["distributed"] == "ddp"


def test_auto_matches_the_mode_a_run_recorded(monkeypatch):
    """run_all / time_protocol keep finished runs whose settings match; a resume checks the same: auto in the new
    config (or in an older config.yaml, which lacks the key) stands for none on one process, ddp or fsdp2 under
    torchrun; explicit modes must be equal."""
    from experiments.checkpoint import config_differences
    from experiments.config import changed_settings, config_to_dict
    from experiments.distributed_modes import same_mode

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recorded = config_to_dict(config("train.distributed=none"))
    assert changed_settings(recorded, config()) == []
    assert changed_settings(recorded, config("train.distributed=ddp")) == ["train.distributed: 'none' -> 'ddp'"]
    assert config_differences(config_to_dict(config()), recorded) == []
    assert not same_mode("auto", "ddp") and same_mode("none", "auto")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert same_mode("ddp", "auto") and same_mode("auto", "fsdp2") and not same_mode("none", "auto")
    assert changed_settings(recorded, config()) == ["train.distributed: 'none' -> 'auto'"]
    # auto may have sharded the frozen blocks of a model too large to replicate: that record matches auto too
    sharded = config_to_dict(config("train.distributed=ddp", "train.ddp_shard_frozen=true"))
    assert changed_settings(sharded, config()) == []
    assert changed_settings(sharded, config("train.distributed=ddp")) == ["train.ddp_shard_frozen: True -> False"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert changed_settings(sharded, config()) == ["train.ddp_shard_frozen: True -> False",
                                                   "train.distributed: 'ddp' -> 'auto'"]


def test_sharding_the_frozen_blocks_needs_ddp():
    """train.ddp_shard_frozen is ddp's: refused at load time for an explicit none / fsdp2, and by the loop when auto
    did not become ddp (here: one process)."""
    from baselines.errors import MethodUnsupportedError
    from experiments import ddp

    for mode in ("none", "fsdp2"):
        with pytest.raises(ConfigError, match=f"ddp_shard_frozen needs train.distributed=ddp or auto, not {mode}"):
            config(f"train.distributed={mode}", "train.ddp_shard_frozen=true")
    cfg = config("train.ddp_shard_frozen=true")
    with pytest.raises(MethodUnsupportedError, match="needs train.distributed=ddp under torchrun; this run is one "
                                                     "process"):
        ddp.data_parallel_for(None, None, None, cfg.train)
    assert ddp.data_parallel_for(None, None, None, config().train) is None
