"""How a model's parameters are split into the blocks that BAdam updates one at a time.

A partition is a list of blocks; a block is a list of name prefixes (badam 1.4's ``block_prefix_list`` format).
A prefix selects the parameters whose dotted name contains it at component boundaries: ``"model.layers.1"`` (with or
without the trailing dot) selects ``model.layers.1.mlp.up_proj.weight`` but never ``model.layers.10.…``, and a full
parameter name selects exactly that parameter.

Partitions offered here (all from parameter names, so they work for any architecture whose layers sit in a
``ModuleList``):
  * ``infer_block_prefixes`` — the default, one block per layer of the dominant ``<path>.<int>.`` stack
    (Llama/Mistral/Qwen/Gemma ``model.layers.N``, GPT-2 ``transformer.h.N``, BERT/RoBERTa/MPNet ``*.encoder.layer.N``),
    optionally with one block for everything before the stack (embeddings) and one for everything after it
    (final norm, lm_head, pooler, classifier), in the order badam 1.4 uses: [embedding, layer 0..L-1, head].
  * ``attention_mlp_blocks`` — the paper's finer partition: per layer, the attention module, then the rest (MLP, norms).
  * ``matrix_blocks`` — one block per weight matrix (its bias rides along); a layer's norm weights form one more block.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

_ATTENTION_COMPONENT = re.compile(r"attn|attention", re.IGNORECASE)


def _is_attention_module(component: str) -> bool:
    """``self_attn``, ``attn``, ``attention``, but not ``post_attention_layernorm``."""
    return bool(_ATTENTION_COMPONENT.search(component)) and "norm" not in component.lower()


def prefix_matches(prefix: str, name: str) -> bool:
    """True when `prefix` (dot-separated components) occurs in `name` on component boundaries."""
    core = prefix.strip(".")
    return bool(core) and f".{core}." in f".{name}."


def unique_named_parameters(named_parameters_list) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs with each tensor once, under its first name (a tied weight listed under two names is
    one parameter); an empty list is refused with the usual fix."""
    if isinstance(named_parameters_list, torch.nn.Module):
        raise TypeError(f"named_parameters_list must hold (name, parameter) pairs: pass "
                        f"list(model.named_parameters()), not the {type(named_parameters_list).__name__} itself")
    named, seen = [], set()
    for item in named_parameters_list:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], torch.Tensor)):
            shown = f"a {type(item).__name__}" + (f" of shape {tuple(item.shape)}" if hasattr(item, "shape") else "")
            raise TypeError(f"named_parameters_list must hold (name, parameter) pairs, got {shown}: pass "
                            "list(model.named_parameters()), not model.parameters() (blocks are found by name)")
        name, p = item
        if id(p) not in seen:
            seen.add(id(p))
            named.append((name, p))
    if not named:
        raise ValueError("named_parameters_list is empty; pass list(model.named_parameters())")
    return named


def _named(source) -> list[tuple[str, torch.Tensor | None]]:
    """Accept a module, an iterable of (name, tensor) pairs, or an iterable of names."""
    if isinstance(source, torch.nn.Module):
        return list(source.named_parameters())
    items = list(source)
    return [(item, None) if isinstance(item, str) else (item[0], item[1]) for item in items]


@dataclass
class LayerStack:
    """A repeated stack of layers: parameters named ``<path>.<index>.…``."""

    path: str                 # e.g. "model.layers" ("" for a top-level Sequential)
    indices: list[int]        # sorted numerically
    names: list[str]          # every parameter name inside the stack, in model order

    def layer_prefix(self, index: int) -> str:
        return f"{self.path}.{index}." if self.path else f"{index}."

    def layer_of(self, name: str) -> int | None:
        start = f"{self.path}." if self.path else ""
        if not name.startswith(start):
            return None
        head = name[len(start):].split(".", 1)[0]
        return int(head) if head.isdigit() else None


def _stack_key(name: str) -> tuple[str, int] | None:
    """(path, index) of the first integer component of a dotted name, e.g. ('transformer.h', 3)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:i]), int(part)
    return None


def find_layer_stack(names: Sequence[str]) -> LayerStack:
    """The dominant repeated layer stack: the ``<path>.<int>.`` path holding the most parameter entries, with at
    least two layers. Nested integer paths (e.g. MoE experts inside a layer) belong to their enclosing layer."""
    by_path: dict[str, dict] = {}
    for name in names:
        key = _stack_key(name)
        if key is None:
            continue
        entry = by_path.setdefault(key[0], {"indices": set(), "names": []})
        entry["indices"].add(key[1])
        entry["names"].append(name)
    candidates = [(len(e["names"]), path) for path, e in by_path.items() if len(e["indices"]) >= 2]
    if not candidates:
        shown = ", ".join(list(names)[:6])
        raise ValueError(
            "no repeated layer stack found: no parameter names of the form '<path>.<int>.<rest>' with at least two "
            f"layers (names look like: {shown}). Pass block_prefix_list explicitly, e.g. "
            "[['encoder.0.'], ['encoder.1.'], ...].")
    _, path = max(candidates, key=lambda c: (c[0], -len(c[1])))
    entry = by_path[path]
    return LayerStack(path=path, indices=sorted(entry["indices"]), names=entry["names"])


def split_around_stack(names: Sequence[str], stack: LayerStack) -> tuple[list[str], list[str]]:
    """Names outside the stack: those before its first parameter (embeddings) and all others (norm, head, ...)."""
    in_stack = set(stack.names)
    first = min(i for i, n in enumerate(names) if n in in_stack)
    before = [n for n in names[:first] if n not in in_stack]
    after = [n for n in names[first:] if n not in in_stack]
    return before, after


def infer_block_prefixes(names_or_params, include_embedding: bool = False,
                         include_lm_head: bool = False) -> list[list[str]]:
    """Default partition: [embedding block]? + one block per layer + [head-and-others block]?.

    The embedding block is every parameter listed before the layer stack (``embed_tokens``; GPT-2's ``wte``/``wpe``;
    BERT's ``embeddings.*``); the head block is every other parameter outside the stack (final norm, ``lm_head``,
    pooler, classifier). With tied embeddings the shared matrix appears once, in the embedding block.
    """
    names = [n for n, _ in _named(names_or_params)]
    stack = find_layer_stack(names)
    before, after = split_around_stack(names, stack)
    blocks: list[list[str]] = []
    if include_embedding:
        if not before:
            raise ValueError("include_embedding=True but no parameter precedes the layer stack "
                             f"'{stack.path}' (nothing to put in an embedding block)")
        blocks.append(before)
    blocks.extend([stack.layer_prefix(i)] for i in stack.indices)
    if include_lm_head:
        if not after:
            raise ValueError("include_lm_head=True but no parameter lies outside the layer stack after it "
                             f"'{stack.path}' (nothing to put in a head block)")
        blocks.append(after)
    return blocks


def layer_blocks(names_or_params) -> list[list[str]]:
    """One block per layer of the dominant stack (same as infer_block_prefixes without embedding / head)."""
    return infer_block_prefixes(names_or_params)


def _layers(names: Sequence[str], stack: LayerStack) -> dict[int, list[str]]:
    per_layer: dict[int, list[str]] = {i: [] for i in stack.indices}
    for name in stack.names:
        per_layer[stack.layer_of(name)].append(name)
    return per_layer


def attention_mlp_blocks(names_or_params) -> list[list[str]]:
    """Two blocks per layer, in forward order: the attention sub-module(s), then the rest of the layer (MLP and
    norms, e.g. Llama's ``input_layernorm``; BERT's ``attention.output.LayerNorm`` stays with attention)."""
    names = [n for n, _ in _named(names_or_params)]
    stack = find_layer_stack(names)
    blocks: list[list[str]] = []
    for index, layer_names in _layers(names, stack).items():
        prefix = stack.layer_prefix(index)
        attention, rest = [], []
        for name in layer_names:
            first = name[len(prefix):].split(".", 1)[0]
            (attention if _is_attention_module(first) else rest).append(name)
        if not attention:
            raise ValueError(f"layer '{prefix}' has no attention sub-module (no component naming 'attn' or "
                             "'attention', other than a norm, right below the layer); use layer_blocks or a custom "
                             "block_prefix_list")
        modules = sorted({prefix + n[len(prefix):].split(".", 1)[0] for n in attention})
        blocks.append(modules)
        if rest:
            blocks.append(rest)
    return blocks


def matrix_blocks(named_parameters) -> list[list[str]]:
    """One block per weight matrix (>= 2-D parameter) of the layer stack, keyed by its module so that the module's
    bias joins it; per layer, the remaining 1-D parameters (norm weights) form one extra block. Needs shapes, so
    pass a module or (name, tensor) pairs."""
    named = _named(named_parameters)
    if any(t is None for _, t in named):
        raise ValueError("matrix_blocks needs parameter shapes: pass the model or its named_parameters(), not names")
    shapes = dict(named)
    names = [n for n, _ in named]
    stack = find_layer_stack(names)
    blocks: list[list[str]] = []
    for index, layer_names in _layers(names, stack).items():
        matrix_modules = [n.rsplit(".", 1)[0] for n in layer_names if shapes[n].dim() >= 2]
        blocks.extend([m] for m in dict.fromkeys(matrix_modules))
        leftovers = [n for n in layer_names if not any(prefix_matches(m, n) for m in matrix_modules)]
        if leftovers:
            blocks.append(leftovers)
    return blocks


def assign_to_blocks(names: Sequence[str], block_prefix_list: Iterable) -> list[list[int]]:
    """Indices into `names` of each block's parameters. One clear error for malformed input: a block that is not a
    list of prefixes, a prefix that matches nothing, an empty partition, or a parameter claimed by two blocks."""
    blocks = list(block_prefix_list) if block_prefix_list is not None else []
    if not blocks:
        raise ValueError("the partition is empty: block_prefix_list has no blocks; pass at least one block "
                         "(a list of name prefixes) or None to infer one block per layer")
    owner: dict[int, int] = {}
    assigned: list[list[int]] = []
    for b, block in enumerate(blocks):
        prefixes = [block] if isinstance(block, str) else list(block)
        if not prefixes or not all(isinstance(p, str) and p.strip(".") for p in prefixes):
            raise ValueError(f"block_prefix_list[{b}] = {block!r} is not a non-empty list of non-empty name prefixes")
        members: list[int] = []
        for prefix in prefixes:
            hits = [i for i, n in enumerate(names) if prefix_matches(prefix, n)]
            if not hits:
                raise ValueError(f"block_prefix_list[{b}]: prefix {prefix!r} matches no parameter name; "
                                 f"names look like: {', '.join(names[:4])}, ...")
            members.extend(i for i in hits if i not in members)
        for i in members:
            if i in owner and owner[i] != b:
                raise ValueError(f"parameter {names[i]!r} is in block {owner[i]} and block {b}; blocks must not "
                                 "overlap (use active_modules for parameters that should always train)")
            owner[i] = b
        assigned.append(sorted(members))
    return assigned
