"""experiments/layer_compile.py and benchmarks/multi_gpu.py --compile-layers: BAdam's block switches reuse three
Dynamo graphs for the whole model (no recompilation per layer or per step), the compiled layers give the eager
losses, and the flag reaches the result's name and JSON.

The tests compile with backend "aot_eager": the same Dynamo capture and guards as inductor (the graphs and recompiles
counted here), without inductor's C++ code generation (about 50 s for the three graphs on this 2-core CPU box)."""
from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import multi_gpu  # noqa: E402
from tests.distributed.bench_results import replicated_result, sharded_result, spread_of  # noqa: E402

LAYERS = 3  # more layers than graphs: a guard on the layer (its index, its parameters' identity) would show


def _tiny_llama(monkeypatch, layers: int):
    from experiments import model_configs
    from experiments.models import load_model

    spec = model_configs.RANDOM_MODELS["tiny-llama"]
    monkeypatch.setitem(model_configs.RANDOM_MODELS, "tiny-llama",
                        dataclasses.replace(spec, config={**spec.config, "num_hidden_layers": layers}))
    model, _ = load_model("random:tiny-llama", dtype="fp32", gradient_checkpointing=True, tokenizer=False, seed=0)
    return model


def _train(model, steps: int, compile_backend: str | None):
    """BAdam, one block per layer, a switch every step (the most switches); losses of `steps` steps."""
    from baselines.registry import get_method_class
    from experiments.layer_compile import compile_decoder_layers

    cls = get_method_class("badam")
    method = cls(cls.Options(switch_block_every=1, switch_mode="ascending", start_block=0, seed=0), lr=1e-3,
                 weight_decay=0.0)
    model = method.prepare_model(model)
    compiled = compile_decoder_layers(model, compile_backend) if compile_backend else None
    method.build_optimizer(model)
    model.train()
    model.config.use_cache = False
    gen = torch.Generator().manual_seed(1)
    losses, blocks = [], []
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=gen)
        blocks.append(method.describe()["active_block"])
        loss = model(input_ids=ids, labels=ids).loss
        method.backward(loss)
        method.clip_and_norm(1.0)
        method.step()
        method.zero_grad()
        losses.append(float(loss.detach()))
    return losses, blocks, compiled


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # restored afterwards by Dynamo's own patch (monkeypatch's undo would delete the config entry)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False):
        yield
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def test_block_switches_reuse_three_graphs_and_keep_the_eager_losses(monkeypatch, fresh_dynamo):
    steps = LAYERS + 2  # a block-epoch (every layer active once), then two more switches from the first block again
    eager, blocks, _ = _train(_tiny_llama(monkeypatch, LAYERS), steps, None)
    losses, compiled_blocks, compiled = _train(_tiny_llama(monkeypatch, LAYERS), steps, "aot_eager")
    assert blocks == compiled_blocks and sorted(set(blocks)) == list(range(LAYERS))
    stats = compiled.stats()
    # below the active block / the active layer / above it: three graphs for all layers, i.e. two recompiles
    assert (stats["graphs"], stats["recompiles"], stats["graph_breaks"]) == (3, 2, 0), stats
    assert stats["layers"] == LAYERS and stats["backend"] == "aot_eager" and stats["compile_s"] > 0
    assert losses == eager  # aot_eager runs the captured graphs with eager kernels: the same fp32 numbers


def test_a_model_without_decoder_layers_is_refused():
    from experiments.layer_compile import compile_decoder_layers

    with pytest.raises(ValueError, match="no decoder layers at model.model.layers"):
        compile_decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown compile backend 'tvm'; choose one of inductor, aot_eager, eager"):
        compile_decoder_layers(torch.nn.Linear(2, 2), "tvm")


def test_the_flag_is_parsed_and_named():
    plain = multi_gpu.parse_args(["--out", "x"])
    assert plain.compile_layers is None
    compiled = multi_gpu.parse_args(["--out", "x", "--compile-layers", "--tag", "r1"])
    assert compiled.compile_layers == "inductor"
    assert multi_gpu.result_stem(compiled, 2) == "llama3-8b_badam_n2_compiled_r1"
    ddp = multi_gpu.parse_args(["--out", "x", "--mode", "ddp", "--compare-single", "3", "--compile-layers",
                                "aot_eager", "--cpu-affinity", "split"])
    assert multi_gpu.result_stem(ddp, 2) == "llama3-8b_badam_n2_ddp_fp32_vs1x3_pinned_compiled-aot_eager"
    with pytest.raises(SystemExit):
        multi_gpu.parse_args(["--out", "x", "--compile-layers", "tvm"])


def test_the_summary_marks_compiled_runs_and_pairs_like_with_like(tmp_path):
    import json

    def ddp(tokens, compile_layers):
        return replicated_result(1, spread_of(tokens), tag="r1", compile_layers=compile_layers,
                                 single_tokens_per_s=spread_of(tokens))

    def fsdp(tokens, groups, compile_layers):
        return sharded_result(1, tokens, groups, tag="r1", compile_layers=compile_layers)

    stats = {"backend": "inductor", "layers": 2, "graphs": 3, "graph_breaks": 0, "recompiles": 2, "compile_s": 1.0}
    runs = {"m_badam_n1_ddp_fp32_vs1x1_r1": ddp(100.0, None),
            "m_badam_n1_ddp_fp32_vs1x1_compiled_r1": ddp(125.0, stats),
            "m_badam_n1_r1": fsdp(80.0, "A [r1]", None),
            "m_badam_n1_compiled_r1": fsdp(110.0, "A, layers compiled [r1]", stats)}
    for name, r in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    table = multi_gpu.summary_markdown(tmp_path)
    assert "| fp32, layers compiled, r1 | 1 | 125 [125-125] |" in table and "| fp32, r1 | 1 | 100 [100-100] |" in table
    assert "| m | badam | A | 1 | 2 x 8 | 1 | 0.800 [0.800-0.800] |" in table  # eager FSDP2 / eager plain
    assert "| m | badam | A, layers compiled | 1 | 2 x 8 | 1 | 0.880 [0.880-0.880] |" in table  # compiled / compiled


def test_fsdp2_layers_compile_with_their_hooks_outside_and_keep_the_eager_numbers(fsdp2_run):
    """2 gloo processes, FSDP2's default layout, checkpointing, BAdam across a block switch: the layers compiled
    (aot_eager) after sharding give the eager run's losses and weights bit for bit, with three graphs
    (tests/distributed/workers.py)."""
    got, eager = fsdp2_run["compiled_layers"]["aot_eager"], fsdp2_run["compiled_layers"]["eager"]
    assert got["losses"] == eager["losses"] and len(got["losses"]) == 4
    assert got["weights"].keys() == eager["weights"].keys()
    assert all(torch.equal(got["weights"][k], eager["weights"][k]) for k in eager["weights"])
    assert (got["stats"]["graphs"], got["stats"]["recompiles"], got["stats"]["graph_breaks"]) == (3, 2, 0)


class _CallCheckpointingLayer(torch.nn.Module):
    """transformers' GradientCheckpointingLayer as it was before 5.2x (e.g. 5.17, the GPU machine's): it checkpoints
    around the module's whole __call__."""
    gradient_checkpointing = False

    def __call__(self, *args, **kwargs):
        if self.gradient_checkpointing and self.training:
            return self._gradient_checkpointing_func(functools.partial(super().__call__, **kwargs), *args)
        return super().__call__(*args, **kwargs)


_CallCheckpointingLayer.__name__ = "GradientCheckpointingLayer"


class _OlderLayer(_CallCheckpointingLayer):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, hidden, scale=1.0):
        return torch.tanh(self.linear(hidden)) * scale


@pytest.mark.parametrize("older", [True, False])
def test_compiled_layers_are_checkpointed_once_under_either_transformers_form(monkeypatch, older):
    from experiments.layer_compile import checkpoints_in_call, compile_decoder_layers
    from torch.utils.checkpoint import checkpoint

    calls = []

    def counting(function, *args, **kwargs):
        calls.append(function)
        return checkpoint(function, *args, use_reentrant=False, **kwargs)

    if older:
        model = torch.nn.Module()
        model.model = torch.nn.Module()
        model.model.layers = torch.nn.ModuleList([_OlderLayer() for _ in range(LAYERS)])
        for layer in model.model.layers:
            layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, counting

        def run(x):
            for layer in model.model.layers:
                x = layer(x, scale=2.0)
            return x.sum()
    else:
        model = _tiny_llama(monkeypatch, LAYERS)
        for layer in model.model.layers:
            layer._gradient_checkpointing_func = counting

        def run(ids):
            return model(input_ids=ids, labels=ids).loss
    assert checkpoints_in_call(type(model.model.layers[0])) is older
    inputs = torch.randn(2, 4, requires_grad=True) if older else torch.randint(0, 64, (2, 8))
    model.train()
    eager = run(inputs)
    eager.backward()
    assert len(calls) == LAYERS
    compile_decoder_layers(model, "eager")
    compiled = run(inputs)
    compiled.backward()
    assert len(calls) == 2 * LAYERS and torch.equal(eager, compiled)  # one checkpoint per layer call, as eager
