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


@pytest.mark.parametrize("memory_gib,mode", [(80.0, "ddp"), (0.0001, "fsdp2")])
def test_torchrun_on_gpus_replicates_what_fits_and_shards_the_rest(torchrun, monkeypatch, memory_gib, mode):
    monkeypatch.setattr(launch_mode, "device_memory", lambda cfg: int(memory_gib * GIB))
    mode_got, why = launch_mode.choose(config(), 2)
    assert mode_got == mode
    params, layers, hidden = launch_mode.model_shape(config())  # the architecture on the meta device
    assert (layers, hidden) == (2, 64) and params > 0
    need = 2 * params + 16 * params / layers  # BAdam: 2M + 16M/D
    assert f"{need / GIB:.1f} GiB of weights and states per GPU (2M + 16M/D" in why
    assert ("fits one GPU replicated" in why) == (mode == "ddp")


def test_methods_go_where_they_run(torchrun, monkeypatch):
    monkeypatch.setattr(launch_mode, "device_memory", lambda cfg: 80 * GIB)
    mode, why = launch_mode.choose(config("method.name=galore"), 2)  # sharded only
    assert mode == "fsdp2" and "does not run under ddp" in why
    with pytest.raises(ConfigError, match="method 'adafactor' runs neither under train.distributed=ddp"):
        launch_mode.choose(config("method.name=adafactor"), 2)


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
