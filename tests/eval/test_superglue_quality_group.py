"""The SuperGLUE part of the quality profile (group paper_superglue_mpnet): its plan, a tiny run of the group's own
config and evaluator entry through run_all, per-seed results, and T11's other-scale section with mean ± std; the
evaluator's child processes (jobs > 1) spread over the GPUs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from experiments.run_all import load_profile, plan_runs

GROUP = "paper_superglue_mpnet"


def _superglue_part(profile: dict) -> tuple[dict, dict]:
    entry = next(e for e in profile["runs"] if e["group"] == GROUP)
    evaluator = next(e for e in profile["evaluators"] if e["name"] == "superglue")
    return entry, evaluator


def test_the_group_plans_three_methods_times_three_seeds_and_leaves_the_gemma_part_alone(tmp_path):
    profile = load_profile("quality-gpu")
    planned = plan_runs(profile, output_root=tmp_path, only_groups=[GROUP])
    assert sorted(p.cfg.run_name for p in planned) == sorted(
        f"mpnet_superglue-{m}-s{s}" for m in ("adam", "lora", "badam") for s in (0, 1, 2))
    by_name = {p.cfg.run_name: p.cfg for p in planned}
    badam, lora = by_name["mpnet_superglue-badam-s1"], by_name["mpnet_superglue-lora-s2"]
    assert badam.seed == 1 and badam.model.source == "mpnet" and badam.model.dtype == "fp32"
    assert badam.method.options == {"switch_block_every": 16, "switch_mode": "ascending"} and badam.method.lr == 1e-5
    assert lora.method.lr == 1e-4 and lora.method.options["rank"] == 8
    # 768 steps at K = 16 over MPNet's 12 layers: 4 full ascending passes; a checkpoint every 96 steps
    assert badam.train.max_steps == 768 and 768 % (16 * 12) == 0 and badam.train.eval_every == 96
    _, evaluator = _superglue_part(profile)
    assert evaluator["groups"] == [GROUP] and evaluator["options"]["jobs"] == 9
    assert set(evaluator["options"]["tasks"].split(",")) == {"boolq", "copa", "wsc", "rte", "multirc", "wic"}
    # the Gemma part's evaluators do not read this group, and its runs are not SuperGLUE (the SuperGLUE lr sweep and
    # its seeds: tests/eval/test_superglue_lr_sweep.py)
    assert all(GROUP not in (e.get("groups") or []) for e in profile["evaluators"] if e["name"] != "superglue")
    others = plan_runs(profile, output_root=tmp_path, only_groups=sorted(
        {e["group"] for e in profile["runs"] if "superglue" not in e["group"]}))
    assert all(p.cfg is None or p.cfg.data.format != "superglue" for p in others)


def test_the_config_gives_each_method_its_lr_through_the_superglue_cli_too():
    """`python -m eval.superglue --config quality/mpnet_superglue.yaml method.name=lora` trains LoRA at the lr of the
    config's lora subsection, as run_all's resolved config does (the file's common lr is not forced over it)."""
    from eval.superglue.cli import base_config_dict, build_parser, task_config

    def resolved(*argv):
        base, explicit = base_config_dict(build_parser().parse_intermixed_args(
            ["--config", "quality/mpnet_superglue.yaml", *argv]))
        return task_config(base, "rte", explicit)

    for method, lr in (("lora", 1e-4), ("badam", 1e-5), ("adam", 1e-5)):
        cfg = resolved(f"method.name={method}")
        assert cfg.method.lr == lr and cfg.train.max_steps == 768, method
    assert resolved("method.name=badam").method.options["switch_block_every"] == 16   # not the CLI default's 100
    assert resolved("--lr", "3e-5", "method.name=lora").method.lr == 3e-5             # a flag still wins


def test_a_tiny_run_of_the_group_gives_per_seed_results_and_t11_shows_mean_and_std(tmp_path, capsys):
    """The group's entry and evaluator entry of profiles/quality-gpu.yaml, shrunk (tiny random encoder, 2 tasks, a few
    examples, 2 steps; one evaluator process), through run_all and then python -m plots."""
    from experiments import run_all
    from plots.__main__ import main as plots_main

    entry, evaluator = _superglue_part(load_profile("quality-gpu"))
    options = {**evaluator["options"], "tasks": "rte,copa", "max_train": 8, "max_eval": 4, "max_length": 32,
               "batch_size": 4, "max_steps": 2, "eval_every": 1, "jobs": 1}
    profile = tmp_path / "superglue.yaml"
    profile.write_text(yaml.safe_dump({"description": "the SuperGLUE part of quality-gpu, shrunk",
                                       "runs": [{k: v for k, v in entry.items()}],
                                       "evaluators": [{**evaluator, "options": options}]}))
    out = tmp_path / "results"
    assert run_all.main(["--profile", str(profile), "--output-dir", str(out), "--methods", "badam", "--seeds", "0,1",
                         "--no-plots", "--no-progress", "--set", "model.source=random:tiny-bert",
                         "--set", "model.dtype=fp32", "--set", "train.device=cpu"]) == 0
    assert "evaluator superglue: 2 run(s)" in capsys.readouterr().out
    for seed in (0, 1):
        results = json.loads((out / GROUP / f"mpnet_superglue-badam-s{seed}" / "eval" / "superglue.json").read_text())
        assert results["settings"]["seed"] == seed and results["settings"]["method"]["switch_block_every"] == 16
        assert {t: e["status"] for t, e in results["tasks"].items()} == {"rte": "ok", "copa": "ok"}
        assert all(e["train"]["steps"] == 2 for e in results["tasks"].values())
    assert plots_main(["--results", str(out), "--out", str(tmp_path / "tables")]) == 0
    t11 = (tmp_path / "tables" / "tables" / "T11_superglue.md").read_text()
    section = t11.split("### Other scale: random:tiny-bert", 1)[1]
    badam_row = next(line for line in section.splitlines() if line.startswith("| badam"))
    assert "| 0, 1 |" in badam_row and badam_row.count("±") == 2   # RTE and COPA: mean ± std over the two seeds


def test_evaluator_children_are_pinned_round_robin_to_the_gpus(tmp_path):
    from eval.common import run_in_children

    script = "import os, sys; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ['BADAM_SHARED_DEVICE_RUNS']); " \
             "sys.exit(int(sys.argv[1]))"
    commands = [([sys.executable, "-c", script, str(code)], tmp_path / f"child{i}.log")
                for i, code in enumerate((0, 0, 3, 0, 0))]
    assert run_in_children(commands, jobs=4, gpus=["0", "1"]) == [0, 0, 3, 0, 0]
    pinned = [Path(log).read_text().split() for _, log in commands]
    assert [gpu for gpu, _ in pinned[:4]] == ["0", "1", "0", "1"] and pinned[4][0] in ("0", "1")
    assert {runs for _, runs in pinned} == {"2"}   # 4 jobs on 2 GPUs: 2 per GPU, their step times are not measurements
    assert run_in_children(commands[:1], jobs=3, gpus=[]) == [0]   # no GPU: the parent's devices


def visit_changed_share(dtype_name: str, lr: float, k: int, weight_std: float) -> float:
    """The smallest share, over a layer's tensors, of elements that one BAdam visit (K Adam steps at `lr`, noisy
    gradients, as on a real task) leaves changed after the switch, with weights stored in `dtype_name`. BAdam drops
    the leaving block's fp32 masters at every switch (as badam 1.4 does), so a visit keeps only the change the stored
    weights can represent."""
    import torch
    from torch import nn

    from badam import BlockOptimizer
    from experiments.models import DTYPES

    torch.manual_seed(0)
    model = nn.ModuleDict({"layers": nn.ModuleList([nn.Linear(64, 64) for _ in range(2)])})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, weight_std)
    model.to(DTYPES[dtype_name])
    first = [p.detach().float().clone() for p in model["layers"][0].parameters()]
    optimizer = BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0),
                               list(model.named_parameters()), switch_block_every=k, switch_mode="ascending",
                               verbose=0, full_precision_ok=True)   # fp32 storage is one of the cases compared
    for _ in range(k):  # one visit of block 0
        for p in model["layers"][0].parameters():
            p.grad = (torch.randn_like(p, dtype=torch.float32) + 0.5).to(p.dtype)
        optimizer.step()
        optimizer.zero_grad()
    assert optimizer.current_block == 1  # the switch happened: block 0's masters are gone
    return min((p.detach().float() != w).float().mean().item() for p, w in zip(model["layers"][0].parameters(), first))


def test_badams_updates_survive_a_block_switch_with_the_configs_weight_dtype_lr_and_k():
    """With bf16 storage, lr 1e-5 and K = 16, an Adam visit moves most elements of an MPNet-like layer (|w| ~ 0.04,
    bf16 half-ulp ~ 1.2e-4) by far less than half a bf16 ulp, and the switch rounds that progress away: the GPU run of
    2026-11-26 trained BAdam at chance on SuperGLUE this way (PROVENANCE_gpu_2026-11-26.md). The config must store
    weights in a dtype in which one visit's update survives."""
    from eval.superglue.cli import base_config_dict, build_parser, task_config

    base, explicit = base_config_dict(build_parser().parse_intermixed_args(
        ["--config", "quality/mpnet_superglue.yaml", "method.name=badam"]))
    cfg = task_config(base, "copa", explicit)
    lr, k = cfg.method.lr, cfg.method.options["switch_block_every"]
    kept = visit_changed_share(cfg.model.dtype, lr, k, weight_std=0.05)  # MPNet's layers: median |w| 0.035-0.040
    assert kept > 0.9, (f"one BAdam visit (K={k}, lr={lr:g}, {cfg.model.dtype} weights) changed only "
                        f"{kept:.0%} of a layer's elements: the rest of its update was rounded away")
    assert visit_changed_share("bf16", lr, k, weight_std=0.05) < 0.9  # the check can fail: bf16 storage loses it


def test_the_math_configs_badam_visits_survive_the_switch_at_the_lowest_lr_of_its_sweep():
    """The same for the math part (Qwen2.5-Coder-0.5B: median |w| 0.029, K = 4), at the lowest BAdam lr its sweep
    tries: at 3e-5 a bf16-stored visit moves a weight by at most 1.2e-4, about half a bf16 ulp."""
    from experiments.config import load_config
    from experiments.run_all import load_profile

    cfg = load_config("quality/qwen25_coder_05b_gsm8k.yaml")
    (sweep,) = [e for e in load_profile("quality-gpu")["runs"] if e["group"] == "lr_sweep_qwen25_coder_05b"]
    lr, k = min(map(float, sweep["lrs"]["badam"])), cfg.method.options["switch_block_every"]
    assert visit_changed_share(cfg.model.dtype, lr, k, weight_std=0.043) > 0.9
    assert visit_changed_share("bf16", lr, k, weight_std=0.043) < 0.9
