"""Regional compilation: every decoder layer's forward compiled with torch.compile, everything else eager.

Why: at batch 2 x 728 per GPU an 8B BAdam step is launch-bound on the host (issue 18; benchmarks/README.md "Multi-GPU
measurements"): the Python thread needs as long to issue a layer's kernels as the GPU needs to run them. A compiled
layer issues fewer, fused kernels.

How (activation checkpointing outside, compilation inside; torchtune's "compile each layer" layout): the layer's
original forward, the function under transformers' checkpointing wrapper (GradientCheckpointingLayer wraps the class's
`forward`; FSDP2's FSDP<Layer> subclass wraps it once more), is compiled ONCE and shared by all layers of that class;
each layer gets an instance-level forward that, like transformers' wrapper, runs it inside the layer's checkpoint
function when the layer checkpoints and trains, and directly otherwise. Module hooks (FSDP2's all-gather and reshard)
stay in `__call__`, outside the compiled region.

Graphs (measured on a tiny Llama, CPU, see tests/distributed/test_layer_compile.py): Dynamo guards on the layer's
parameters' and input's `requires_grad`, not on the layer object, so BAdam's block switches give three graphs for the
whole model, compiled in the first two steps of a block-epoch and reused afterwards: layers below the active block
(nothing requires grad), the active layer (its parameters do), layers above it (their input does; a fourth graph
with badam.hf's checkpointing policy "block-reentrant": their forward under no_grad, their recompute with grad).
Compiling `nn.Module.compile()` instead (checkpoint inside the compiled region) fails for the forward-only layers
below the active block in torch 2.13 ("Activation checkpoint rematerialization ... does not support RNG ops").
`torch._dynamo.config.fail_on_recompile_limit_hit` is set so a model that would need more graphs than the recompile
limit fails loudly rather than silently running eager.
"""
from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field

import torch
from torch import nn

BACKENDS = ("inductor", "aot_eager", "eager")  # inductor: the fused kernels; the others check Dynamo's guards


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """model.model.layers of a transformers causal LM (Llama, Qwen, Mistral, Gemma, ...), also inside peft's wrapper
    (LoRA: the base model's layers, which hold the adapters); ValueError otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{type(base).__name__} has no decoder layers at model.model.layers; compiling layers "
                         "(--compile-layers, train.compile_layers) needs those (transformers decoder-only models)")
    return layers


def original_forward(layer_class: type):
    """The class's forward without transformers' checkpointing wrapper(s) (functools.wraps keeps the wrapped function
    in __wrapped__); other decorators of the forward are kept."""
    forward = layer_class.forward
    while getattr(getattr(forward, "__code__", None), "co_name", None) == "forward_with_checkpointing":
        forward = forward.__wrapped__
    return forward


def checkpoints_in_call(layer_class: type) -> bool:
    """Whether transformers checkpoints this class's layers around their whole __call__ (GradientCheckpointingLayer
    before transformers 5.2x, e.g. 5.17) rather than in the wrapped forward (5.2x). Then the compiled forward runs
    inside that checkpoint already and must not checkpoint again (every compiled-layer GPU run before 2026-11-27 on
    transformers 5.17 nested two checkpoints: nearly free for non-reentrant, whose early stop ends the outer recompute
    at once, but a second full recompute under reentrant checkpointing, and the outer checkpoint stayed where policy
    "block" means to skip it)."""
    return any(k.__name__ == "GradientCheckpointingLayer" and "__call__" in vars(k) for k in layer_class.__mro__)


def _compiled_call(compiled, checkpoint_here: bool = True):
    def forward(self, *args, **kwargs):
        if checkpoint_here and self.gradient_checkpointing and self.training:  # as transformers' wrapped forward
            if kwargs.get("use_cache") or kwargs.get("past_key_values") is not None:
                raise ValueError("a compiled, checkpointed layer does not take a KV cache (train with use_cache off)")
            return self._gradient_checkpointing_func(functools.partial(compiled, self, **kwargs), *args)
        return compiled(self, *args, **kwargs)
    return forward


@dataclass
class CompiledLayers:
    backend: str
    layers: int
    functions: int  # compiled functions: one per decoder-layer class (one for every model here)
    inductor_options: dict = field(default_factory=dict)  # torch.compile's options for these graphs ({}: defaults)

    def stats(self) -> dict:
        """What Dynamo compiled so far in this process: graphs, graph breaks, recompiles (frame compilations after
        the first of each compiled function; exact while there are no graph breaks) and seconds spent compiling."""
        from torch._dynamo.utils import compilation_time_metrics, counters

        return {"backend": self.backend, "layers": self.layers, "inductor_options": dict(self.inductor_options),
                "graphs": compiled_graphs(),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "recompiles": max(0, int(counters["frames"]["ok"]) - self.functions),
                "compile_s": round(sum(compilation_time_metrics.get("_compile.compile_inner", [])), 3)}


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (0 without torch.compile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_decoder_layers(model: nn.Module, backend: str = "inductor",
                           inductor_options: dict | None = None) -> CompiledLayers:
    """Compile every decoder layer's forward in place (see the module docstring); call after the model is built,
    sharded and prepared (LoRA adapters, FSDP2), before training. `inductor_options`: inductor settings for these
    graphs only (torch.compile's ``options``, e.g. what Method.compile_layers_options asks for); ignored by the
    other backends, which generate no code."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown compile backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    layers = decoder_layers(model)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    options = dict(inductor_options or {}) if backend == "inductor" else {}
    shared: dict[object, object] = {}
    for layer in layers:
        forward = original_forward(type(layer))
        if forward not in shared:
            shared[forward] = torch.compile(forward, backend=backend, options=options or None)
        layer.forward = types.MethodType(_compiled_call(shared[forward], not checkpoints_in_call(type(layer))), layer)
    return CompiledLayers(backend, len(layers), len(shared), options)


def compile_method_layers(model: nn.Module, backend: str, method) -> CompiledLayers:
    """compile_decoder_layers with the inductor settings `method` asks for (its compile_layers_options(backend))."""
    return compile_decoder_layers(model, backend, method.compile_layers_options(backend))
