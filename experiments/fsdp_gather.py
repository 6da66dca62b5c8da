"""FSDP2 without gathering a layer twice: which layers keep their all-gathered weights from forward to backward.

With FSDP2's default every layer is all-gathered for its forward, resharded, and all-gathered again in backward (for
the activation-checkpointing recompute and for the input gradient). A layer that backward never reaches needs only
the first gather, and a layer it does reach could keep its gathered weights instead of fetching them again, at the
cost of holding them (N-1)/N x its bf16 bytes longer. With BAdam, backward reaches only the active block and the
layers above it (nothing below requires a gradient, so autograd builds no graph there and FSDP2 registers no backward
hook: those layers already cost one gather per step and nothing else). Which layers backward reaches changes at every
block switch, so the choice is made again at each forward:

    keep gathered  = the `budget` layers nearest the head among those backward reaches (for BAdam: the active layer
                     and the layers above it; for methods that train every layer, e.g. LoRA: all layers);
    reshard        = every other layer (FSDP2's default).

budget = 0 is FSDP2's default; -1 keeps every reached layer (memory: the reached layers' full bf16 weights on every
GPU in addition to the shards, e.g. up to +15 GB at Llama 3-8B); a positive budget bounds the extra memory to that
many layers (Llama 3-70B: 1.7 GB per layer). Layers below the lowest trainable one always reshard: keeping them would
hold memory for nothing, and they are never gathered in backward (FSDP2's implicit backward prefetch would gather
the one just below the lowest reached layer: a wasted all-gather per backward, removed here with every budget,
0 included). In evaluation (no gradients) everything reshards. The arithmetic is unchanged; only when the weights are
fetched differs (tests/distributed: equal numbers, fewer all-gathers).
"""
from __future__ import annotations

import torch
from torch import nn


def lowest_reached_layer(layers: list[nn.Module], model: nn.Module) -> int | None:
    """Index of the lowest layer that backward passes through: 0 when the input embeddings require a gradient (it
    then flows through every layer), else the lowest layer holding a parameter that requires one; None when none."""
    get_in = getattr(model, "get_input_embeddings", None)
    embeddings = get_in() if callable(get_in) else None
    if isinstance(embeddings, nn.Module) and any(p.requires_grad for p in embeddings.parameters()):
        return 0
    for index, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return None


def layers_to_keep(num_layers: int, lowest_reached: int | None, budget: int) -> set[int]:
    """Indices of the layers that keep their gathered weights (see the module docstring)."""
    if budget == 0 or lowest_reached is None:
        return set()
    first = lowest_reached if budget < 0 else max(lowest_reached, num_layers - budget)
    return set(range(first, num_layers))


class GatherPolicy:
    """Forward pre-hook on the root FSDP module that sets, for this step, which layers FSDP2 may all-gather in
    backward (only those backward reaches: FSDP2's implicit backward prefetch would otherwise gather the layer below
    the lowest reached one for nothing, one wasted all-gather per backward under BAdam) and, with a budget, which
    keep their gathered weights from forward to backward."""

    def __init__(self, model: nn.Module, layers: list[nn.Module], budget: int = 0):
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < -1:
            raise ValueError(f"keep-gathered budget must be an integer >= -1 (layers; -1: every layer backward "
                             f"reaches, 0: FSDP2's default), got {budget!r}")
        self.model, self.layers, self.budget = model, layers, budget
        self.kept: set[int] = set()
        self.reached: set[int] = set()
        self._reshard: list[bool | None] = [None] * len(layers)
        self._in_backward: list[bool | None] = [None] * len(layers)
        get_in = getattr(model, "get_input_embeddings", None)
        embeddings = get_in() if callable(get_in) else None
        # embeddings sharded as a unit of their own (shard_model's separate_ends): gathered in backward only to train
        self.embeddings = embeddings if embeddings is not model and hasattr(embeddings, "set_unshard_in_backward") \
            else None
        self.handle = model.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, *_unused) -> None:
        lowest = lowest_reached_layer(self.layers, self.model) if torch.is_grad_enabled() else None
        self.reached = set() if lowest is None else set(range(lowest, len(self.layers)))
        self.kept = layers_to_keep(len(self.layers), lowest, self.budget)
        if self.embeddings is not None:
            self.embeddings.set_unshard_in_backward(any(p.requires_grad for p in self.embeddings.parameters()))
        for index, layer in enumerate(self.layers):
            needed = index in self.reached
            if self._in_backward[index] is not needed and hasattr(layer, "set_unshard_in_backward"):
                layer.set_unshard_in_backward(needed)
                self._in_backward[index] = needed
            if self.budget == 0:
                continue  # FSDP2's own reshard_after_forward stays as shard_model set it
            reshard = index not in self.kept
            if self._reshard[index] is not reshard:
                layer.set_reshard_after_forward(reshard, recurse=False)
                self._reshard[index] = reshard

    def remove(self) -> None:
        self.handle.remove()
        if self.embeddings is not None:
            self.embeddings.set_unshard_in_backward(True)
        for index, layer in enumerate(self.layers):
            if self._in_backward[index] is not None:
                layer.set_unshard_in_backward(True)
            if self._reshard[index] is not None:
                layer.set_reshard_after_forward(True, recurse=False)
