"""train.compile_layers in the training loop: every decoder layer's forward compiled (experiments/layer_compile.py).

Where: experiments.loop.train compiles once the method has prepared the model (LoRA adapters) and it is sharded
(fsdp2) or replicated (ddp), before the method builds its optimizer and ddp attaches its gradient averaging: the order
of `benchmarks/multi_gpu.py --compile-layers`, so FSDP2's hooks stay outside the compiled region. A method that
cannot train with compiled layers says so in its class (Method.compile_layers_problem) and is refused with one
ConfigError line, as is a model without decoder layers at model.model.layers.

Compile time and step times: Dynamo compiles a layer's graph (forward, then backward) in the first step in which a
layer meets a new combination of requires_grad (its parameters', its input's). For BAdam that is the first step
(the active layer, the layers above it, those below when the first block is not the lowest) and the first block
switch (the layers below the active one): with switch_block_every=K in ascending order, step K + 1, past the
timing_warmup_steps that summarize_metrics leaves out anyway. BAdam's later block switches reuse those three graphs;
evaluation (no_grad, eval mode) compiles its own, outside the timed step. So every step records `compiled_graphs`
(the graphs compiled during it) and experiments.results.timed_records leaves the steps that compiled out of the
timing medians and the compute block; summary.json's `compile_layers` says what was compiled (stats()).
"""
from __future__ import annotations

import torch
from torch import nn

from experiments.config import ConfigError, check_compile_layers
from experiments.layer_compile import CompiledLayers, compile_method_layers, compiled_graphs


class LayerCompilation:
    """One run's compiled layers (`compiled` None: train.compile_layers=none, and nothing is recorded)."""

    def __init__(self, compiled: CompiledLayers | None = None):
        self.compiled = compiled

    def graphs(self) -> int:
        """Graphs compiled so far (0 when nothing is compiled); a step's record takes the difference."""
        return compiled_graphs() if self.compiled is not None else 0

    def step_record(self, graphs_before: int) -> dict:
        """metrics.jsonl's compiled_graphs for a step that began when graphs() gave graphs_before."""
        return {} if self.compiled is None else {"compiled_graphs": self.graphs() - graphs_before}

    def summary(self) -> dict:
        """summary.json's compile_layers block: backend, layers, graphs, graph_breaks, recompiles, compile_s."""
        return {} if self.compiled is None else {"compile_layers": self.compiled.stats()}


def compile_for_training(model: nn.Module, method, backend: str) -> LayerCompilation:
    """Compile model's decoder layers with `backend` (train.compile_layers; "none": nothing); ConfigError for a method
    or model that cannot take it."""
    if backend == "none":
        return LayerCompilation()
    check_compile_layers(backend, type(method), method.options)  # also for train() called without a RunConfig
    # Dynamo's caches and counters are per process: a fresh start, so that an earlier run in this process (run_all
    # trains one after another) counts neither towards this run's recompile limit nor in its stats
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch._dynamo.utils.compilation_time_metrics.clear()
    try:
        return LayerCompilation(compile_method_layers(model, backend, method))
    except ValueError as exc:
        raise ConfigError(f"train.compile_layers={backend}: {exc}; set train.compile_layers=none for this "
                          "model") from None
