"""The one analytic memory model: bytes of weights, gradients and optimizer states per method (no torch here).

Used by the memory tables (plots/tables_efficiency.py, paper Table 1) and by the multi-GPU benchmark's prediction
(benchmarks/multi_gpu.py), so both state the same formula. Activations, temporaries and allocator overhead are not
part of it: a measured peak is always above these figures.

Bytes per parameter under mixed precision (paper arXiv 2404.02827, Sec. 2.3 and Table 1): 2 for the 16-bit weights
of every parameter; a trained parameter adds an fp32 master copy (4), an fp32 gradient (4) and Adam's two fp32
moments (8), 16 in all, so Adam costs 18 M GB for M billion parameters and BAdam 2 M + 16 M / D (only the active
block of M / D parameters trains). LOMO keeps no states and one layer's 16-bit gradients at a time (2 M + 2 M / D).
LoRA of rank r on m x m matrices adds 2 r M / m adapter parameters with 18 bytes each (2 M + 36 r M / m).
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT_BYTES = 2          # bf16 / fp16 weights
TRAINED_EXTRA_BYTES = 16  # fp32 master + fp32 gradient + two fp32 Adam moments per trained parameter
PAPER_METHODS = ("adam", "lomo", "lora-rank8", "lora-rank100", "badam")  # the rows of the paper's Table 1


@dataclass(frozen=True)
class MemoryEstimate:
    formula: str      # as the paper writes it, e.g. "2M + 16M/D"
    bytes: int        # what the formula gives for the model at hand


def decoder_parameters(cfg: dict) -> int:
    """Parameter count of a Llama-style decoder from its config numbers (hidden, intermediate, layers, heads,
    kv heads, vocab, tied embeddings): attention q/k/v/o, gated MLP (3 matrices), 2 RMSNorms per layer,
    embeddings, final norm and the LM head unless tied."""
    try:
        layers, vocab, hidden = cfg["num_hidden_layers"], cfg["vocab_size"], cfg["hidden_size"]
    except KeyError as exc:
        raise ValueError(f"a decoder config needs hidden_size, intermediate_size, num_hidden_layers, "
                         f"num_attention_heads and vocab_size; missing {exc}") from None
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return layers * layer_parameters(cfg) + embeddings + hidden


def layer_parameters(cfg: dict) -> int:
    """Parameters of one decoder layer (BAdam's block with one layer per block)."""
    try:
        h, inter, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    except KeyError as exc:
        raise ValueError(f"a decoder config needs hidden_size, intermediate_size, num_hidden_layers, "
                         f"num_attention_heads and vocab_size; missing {exc}") from None
    head_dim = cfg.get("head_dim") or h // heads
    kv = cfg.get("num_key_value_heads", heads) * head_dim
    attention = h * heads * head_dim * 2 + h * kv * 2
    if cfg.get("attention_bias"):
        attention += heads * head_dim + 2 * kv + h
    return attention + 3 * h * inter + 2 * h


def paper_formula(method: str, params: int, layers: int, hidden: int) -> MemoryEstimate:
    """The paper's Table 1 for a model of `params` parameters, `layers` blocks (D) and matrix size `hidden` (m);
    methods: adam, lomo, lora-rank<r>, badam."""
    m = params  # bytes below are per parameter, so M stays in parameters here
    if method == "adam":
        return MemoryEstimate("18M", 18 * m)
    if method == "lomo":
        return MemoryEstimate("2M + 2M/D", round(WEIGHT_BYTES * m + WEIGHT_BYTES * m / layers))
    if method.startswith("lora-rank") and method[len("lora-rank"):].isdigit():
        r = int(method[len("lora-rank"):])
        return MemoryEstimate(f"2M + 36rM/m (r={r}, m={hidden})", round(WEIGHT_BYTES * m + 36 * r * m / hidden))
    if method == "badam":
        return block_method_bytes(m, m / layers, formula="2M + 16M/D")
    raise ValueError(f"no analytic formula for {method!r}; valid: {', '.join(PAPER_METHODS)}")


def block_method_bytes(total_params: int, trained_params: float, *, formula: str = "2M + 16M_block") \
        -> MemoryEstimate:
    """16-bit weights of everything plus the 16 bytes of master, gradient and moments of what trains at once."""
    return MemoryEstimate(formula, round(WEIGHT_BYTES * total_params + TRAINED_EXTRA_BYTES * trained_params))


def sharded_bytes_per_device(method: str, total_params: int, largest_block_params: int | None, devices: int) \
        -> MemoryEstimate | None:
    """Per-device bytes when everything (weights, masters, gradients, moments) is sharded evenly over `devices`
    (FSDP2): BAdam's largest block, or Adam over every parameter; None for methods without a formula here."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    if method == "badam" and largest_block_params is not None:
        whole = block_method_bytes(total_params, largest_block_params)
        return MemoryEstimate("(2 P + 16 P_block) / N", whole.bytes // devices)
    if method == "adam":
        return MemoryEstimate("18 P / N", block_method_bytes(total_params, total_params).bytes // devices)
    return None


def frozen_sharded_bytes(total_params: int, layer_stack_params: int, block_params: float, devices: int, *,
                         weight_bytes: int = WEIGHT_BYTES, trained_extra: int = TRAINED_EXTRA_BYTES) -> MemoryEstimate:
    """Per-device bytes of a block method under data parallelism with its frozen blocks sharded
    (badam/frozen_shards.py): the layer stack's 16-bit weights split over `devices`; the rest (embeddings, head), the
    active block's whole weights and its master, gradient and moments (`trained_extra` bytes each) on every device."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    rest = total_params - layer_stack_params
    held = weight_bytes * (layer_stack_params / devices + rest + block_params) + trained_extra * block_params
    return MemoryEstimate(f"{weight_bytes}(P_layers/N + P_rest + P_block) + {trained_extra}P_block", round(held))


__all__ = ["MemoryEstimate", "PAPER_METHODS", "decoder_parameters", "layer_parameters", "paper_formula",
           "block_method_bytes", "sharded_bytes_per_device", "frozen_sharded_bytes"]
