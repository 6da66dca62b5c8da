"""Model FLOPs of one training step, per method, and the achieved fraction of the device's bf16 peak (MFU).

Counting convention (PaLM, Chowdhery et al. 2022, appendix B): only matrix products count. A linear map with a
k x m weight applied to n tokens costs 2nkm FLOPs forward; its backward costs 2nkm for the input gradient and 2nkm
for the weight gradient, so a full step is the usual 6 N tokens plus attention. Attention scores and the weighted
sum cost 4 s^2 (heads x head_dim) per layer and sequence of s tokens forward (the full s x s matrix: causal masking
is not discounted, as in PaLM) and twice that backward. Norms, activations, softmax, dropout, the loss, casts and
the optimizer update are not counted. Tokens are the non-padding ones: padding is work, but not useful work.

What a backward pass computes depends on what trains, because autograd computes only what a trainable parameter
needs (and the harness's checkpointing has no input-require-grads hook, badam.hf.enable_block_checkpointing):
  * a weight gradient for every trainable matmul weight;
  * an input gradient for every matmul with a trainable parameter upstream of its input: every matmul of the layers
    above the lowest layer that holds a trainable parameter, the head, and in that lowest layer every matmul except
    the attention input projections (q, k, v, or a LoRA A on them) unless the layer's norms train too;
  * nothing below the lowest trainable layer.
So BAdam's backward with block b active is the input gradients of layers b..L-1 and the head plus block b's weight
gradients (it depends on the active block); Adam's and LOMO's is 4 N tokens; LoRA's is the input gradients of every
layer (4 N tokens minus the first layer's q/k/v) plus the adapters' own products. Exact for whole layers, full
training and adapters on every projection; a selection that trains only later parts of its lowest layer is counted
as if its input projections needed input gradients too. Mixture-of-experts layers count every expert.

Model FLOPs (MFU) = forward + every backward pass (LOMO's gradient-norm pass is a second full backward: work the
method chooses to do). Hardware FLOPs (HFU) add the recomputation of checkpointed layers, once per backward pass, for
the layers the backward reaches: each layer's forward except its last matmul (a pre-norm layer ends in a residual add,
which saves nothing for backward, so torch's non-reentrant checkpoint stops recomputing before that matmul; a post-norm
layer is undercounted by that one matmul). If transformers' input-require-grads hook is active (peft registers it
when checkpointing is on), the embeddings' output requires grad and every layer computes input gradients.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from experiments.results import timed_records

# Attention input projections: they read a layer's (normalised) input directly.
ENTRY_PROJECTIONS = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_key_value", "Wqkv",
                               "W_pack", "query", "key", "value"})

# Dense bf16 tensor-core peaks (with fp32 accumulation; sparsity not counted), TFLOP/s, matched against
# torch.cuda.get_device_name() in this order (first substring that matches wins).
DEVICE_PEAKS_BF16_TFLOPS = (
    ("GH200", 989.4, "NVIDIA GH200 datasheet (H100 SXM5 compute): 989.4 dense BF16"),
    ("H200", 989.4, "NVIDIA H200 datasheet: 1,979 BF16 with sparsity = 989.4 dense"),
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet, PCIe: 1,513 BF16 with sparsity = 756 dense"),
    ("H100 NVL", 835.0, "NVIDIA H100 NVL datasheet: 1,671 BF16 with sparsity = 835 dense"),
    ("H100", 989.4, "NVIDIA H100 datasheet, SXM5 (\"H100 80GB HBM3\"): 1,979 BF16 with sparsity = 989.4 dense"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 BF16 dense (624 with sparsity)"),
    ("RTX 3090", 71.0, "NVIDIA Ampere GA102 whitepaper, RTX 3090: 71 FP16/BF16 dense with FP32 accumulate"),
)


def device_peak(device_name: str | None) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, where the number comes from) for a CUDA device name; (None, why) when unknown."""
    for pattern, tflops, source in DEVICE_PEAKS_BF16_TFLOPS:
        if device_name and pattern.lower() in device_name.lower():
            return tflops * 1e12, source
    return None, f"no bf16 peak known for device {device_name!r} (known: " \
                 f"{', '.join(p for p, _, _ in DEVICE_PEAKS_BF16_TFLOPS)})"


@dataclass(frozen=True)
class Matmul:
    name: str
    layer: int | None     # index in the layer stack; None outside it
    fan_in: int
    fan_out: int
    position: str         # "pre" (before the stack), "entry" (attention input projection), "inner", "post" (head)


@dataclass(frozen=True)
class ModelShape:
    matmuls: tuple[Matmul, ...]
    num_layers: int
    attention_width: int  # query heads x head_dim


@dataclass(frozen=True)
class Trainable:
    """What trains at one step."""
    matmuls: frozenset = frozenset()      # indices into ModelShape.matmuls whose weight trains
    layers: frozenset = frozenset()       # layers holding any trainable parameter
    norm_layers: frozenset = frozenset()  # layers whose non-matmul parameters (norms) train
    before_stack: bool = False            # a parameter before the stack trains (embeddings)
    after_stack: bool = False             # a parameter after the stack trains (final norm, head)
    inputs_require_grad: bool = False     # the embeddings' output is made to require grad (transformers'
    #                                       input-require-grads hook, which peft registers under checkpointing)


@dataclass(frozen=True)
class StepFlops:
    forward: int
    backward: int            # one backward pass
    recompute: int           # re-forward of checkpointed layers in one backward pass
    backward_passes: int = 1

    @property
    def model(self) -> int:
        return self.forward + self.backward_passes * self.backward

    @property
    def hardware(self) -> int:
        return self.model + self.backward_passes * self.recompute


def _lowest(shape: ModelShape, trainable: Trainable) -> int | None:
    """Lowest layer the backward reaches with a trainable parameter (-1: below the stack; num_layers: only the head
    trains; None: nothing trains)."""
    if trainable.before_stack or trainable.inputs_require_grad:
        return -1
    if trainable.layers:
        return min(trainable.layers)
    if trainable.after_stack or trainable.matmuls:
        return shape.num_layers
    return None


def count_step(shape: ModelShape, trainable: Trainable, seq_lens: list[int], *, head_tokens: int | None = None,
               backward_passes: int = 1, checkpointing: bool = False) -> StepFlops:
    """FLOPs of one optimizer step over sequences of the given (non-padding) lengths (all micro-batches)."""
    tokens = sum(seq_lens)
    head_tokens = tokens if head_tokens is None else head_tokens
    attention = 4 * sum(s * s for s in seq_lens) * shape.attention_width  # one layer, forward
    lowest = _lowest(shape, trainable)
    forward = backward = 0
    layer_forward = [attention] * shape.num_layers
    last_matmul: dict[int, int] = {}  # FLOPs of each layer's last matmul, which recomputation skips
    for index, op in enumerate(shape.matmuls):
        flops = 2 * (head_tokens if op.position == "post" else tokens) * op.fan_in * op.fan_out
        forward += flops
        if op.layer is not None:
            layer_forward[op.layer] += flops
            last_matmul[op.layer] = flops
        if lowest is None:
            continue
        if index in trainable.matmuls:
            backward += flops  # weight gradient
        if op.position == "post":
            needs_input = lowest < shape.num_layers
        elif op.position == "pre":
            needs_input = trainable.before_stack
        elif op.layer > lowest:
            needs_input = True
        elif op.layer == lowest:
            needs_input = op.position != "entry" or op.layer in trainable.norm_layers
        else:
            needs_input = False
        if needs_input:
            backward += flops
    forward += attention * shape.num_layers
    recompute = 0
    if lowest is not None:
        entry_trains = {shape.matmuls[i].layer for i in trainable.matmuls if shape.matmuls[i].position == "entry"}
        for layer in range(max(lowest, 0), shape.num_layers):
            if layer > lowest or layer in trainable.norm_layers or layer in entry_trains:
                backward += 2 * attention
            if checkpointing:
                recompute += layer_forward[layer] - last_matmul.get(layer, 0)
    return StepFlops(forward, backward, recompute, backward_passes)


# --- reading a live model (torch) ------------------------------------------------------------------------------
def _is_matmul(module) -> bool:
    import torch

    if isinstance(module, torch.nn.Linear):  # its shape from in/out_features: a sharded weight's storage is empty
        return True
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and type(module).__name__ == "Conv1D"  # (in, out)


def _fans(module) -> tuple[int, int]:
    if hasattr(module, "in_features") and hasattr(module, "out_features"):  # nn.Linear, also with frozen_shards
        return module.in_features, module.out_features
    rows, cols = module.weight.shape
    return (rows, cols) if type(module).__name__ == "Conv1D" else (cols, rows)


def _position(name: str, layer: int | None, before_stack: bool) -> str:
    if layer is None:
        return "pre" if before_stack else "post"
    parts = name.split(".")
    return "entry" if ENTRY_PROJECTIONS.intersection(parts) and "lora_B" not in parts else "inner"


def _attention_width(model) -> int:
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not heads or not hidden:
        raise ValueError(f"cannot count attention FLOPs of {type(model).__name__}: its config has no "
                         "num_attention_heads / hidden_size")
    return int(heads) * int(getattr(config, "head_dim", None) or hidden // heads)


class FlopCounter:
    """The FLOP model of one live model: its shape is read once, what trains is read per step (snapshot())."""

    def __init__(self, model):
        from badam.partition import find_layer_stack

        named_params = list(model.named_parameters())
        stack = find_layer_stack([n for n, _ in named_params])
        first_in_stack = next(i for i, (n, _) in enumerate(named_params) if stack.layer_of(n) is not None)
        order = {id(p): i for i, (_, p) in enumerate(named_params)}
        matmuls, weights, matmul_param_ids = [], [], set()
        for name, module in model.named_modules():
            if not _is_matmul(module):
                continue
            layer = stack.layer_of(f"{name}.weight")
            before = order.get(id(module.weight), first_in_stack) < first_in_stack
            fan_in, fan_out = _fans(module)
            matmuls.append(Matmul(name, layer, fan_in, fan_out, _position(name, layer, before)))
            weights.append(module.weight)
            matmul_param_ids.update(id(p) for p in module.parameters(recurse=False))
        layer_index = {index: position for position, index in enumerate(stack.indices)}
        self.shape = ModelShape(tuple(Matmul(m.name, None if m.layer is None else layer_index[m.layer], m.fan_in,
                                             m.fan_out, m.position) for m in matmuls),
                                len(stack.indices), _attention_width(model))
        self._weights = weights
        # every parameter with where it sits: (param, layer position or None, before the stack, is a matmul's)
        self._params = []
        for i, (name, param) in enumerate(named_params):
            layer = stack.layer_of(name)
            self._params.append((param, None if layer is None else layer_index[layer], i < first_in_stack,
                                 id(param) in matmul_param_ids))
        from badam.hf import uses_checkpointing

        self.checkpointing = uses_checkpointing(model)
        self.inputs_require_grad = any(getattr(m, "_require_grads_hooks", None) or hasattr(m, "_require_grads_hook")
                                       for m in model.modules())

    def snapshot(self) -> Trainable:
        """What trains now (BAdam changes it at block switches: take it before the step's forward)."""
        layers, norm_layers, before, after = set(), set(), False, False
        for param, layer, is_before, is_matmul in self._params:
            if not param.requires_grad:
                continue
            if layer is not None:
                layers.add(layer)
                if not is_matmul:
                    norm_layers.add(layer)
            elif is_before:
                before = True
            else:
                after = True
        trained = frozenset(i for i, w in enumerate(self._weights) if w.requires_grad)
        return Trainable(trained, frozenset(layers), frozenset(norm_layers), before, after, self.inputs_require_grad)

    def count(self, trainable: Trainable, micro_batches: list[dict], *, backward_passes: int = 1,
              labelled_head: bool = False) -> StepFlops:
        """FLOPs of one step over its micro-batches (dicts with input_ids and optionally attention_mask, labels);
        labelled_head: the head runs on labelled positions only (train.loss_chunk_tokens)."""
        seq_lens, head_tokens = [], 0
        for batch in micro_batches:
            lengths, labelled = sequence_lengths(batch)
            seq_lens += lengths
            head_tokens += labelled if labelled_head else sum(lengths)
        return count_step(self.shape, trainable, seq_lens, head_tokens=head_tokens,
                          backward_passes=backward_passes, checkpointing=self.checkpointing)


def backward_passes(describe: dict) -> int:
    """Backward passes a step ran: a method whose describe() reports norm_pass=True (LOMO with clipping) runs a
    gradient-norm backward before the one that updates."""
    return 2 if describe.get("norm_pass") else 1


def sequence_lengths(batch: dict) -> tuple[list[int], int]:
    """(non-padding length of every row, labelled next-token positions) of one batch."""
    mask, ids, labels = batch.get("attention_mask"), batch.get("input_ids"), batch.get("labels")
    if mask is not None:
        lengths = [int(v) for v in mask.sum(dim=-1).reshape(-1).tolist()]
    elif ids is not None:
        lengths = [int(ids.shape[-1])] * (int(ids.numel()) // max(1, int(ids.shape[-1])))
    else:
        lengths = []
    labelled = int((labels[..., 1:] != -100).sum()) if labels is not None and labels.dim() > 1 else sum(lengths)
    return lengths, labelled


# --- per-run summary ---------------------------------------------------------------------------------------------
COUNTING_NOTE = ("model FLOPs = matmul FLOPs of the forward and of every backward pass, from what trained at each "
                 "step (PaLM convention; attention's full s^2; padding excluded); hardware FLOPs add checkpointed "
                 "layers' recomputation; mfu / hfu = FLOPs summed over the timed steps / their summed step time / "
                 "the device's dense bf16 peak (experiments/flops.py)")


def utilization_summary(records: list[dict], warmup_steps: int, device_name: str | None) -> dict:
    """summary.json's "compute" block from metrics records carrying model_flops / hardware_flops per step."""
    counted = [r for r in records if isinstance(r.get("model_flops"), (int, float))]
    timed = timed_records(counted, warmup_steps)
    peak, source = device_peak(device_name)
    out = {"model_flops_per_step": None, "hardware_flops_per_step": None, "model_tflops_per_s": None,
           "hardware_tflops_per_s": None, "mfu": None, "hfu": None, "steps_counted": len(timed),
           "peak_bf16_tflops": None if peak is None else peak / 1e12, "peak_source": source,
           "device_name": device_name, "counting": COUNTING_NOTE}
    seconds = sum(float(r.get("t_step_ms") or 0.0) for r in timed) / 1e3
    if not timed:
        out["note"] = ("no per-step FLOP counts in metrics.jsonl (not counted under train.distributed, ddp or fsdp2, for "
                       "models without a repeated layer stack, or by runs older than the count)")
        return out
    if seconds <= 0:
        return out
    for kind in ("model", "hardware"):
        values = [float(r.get(f"{kind}_flops") or 0) for r in timed]
        out[f"{kind}_flops_per_step"] = statistics.median(values)
        rate = sum(values) / seconds
        out[f"{kind}_tflops_per_s"] = rate / 1e12
        out["mfu" if kind == "model" else "hfu"] = None if peak is None else rate / peak
    return out


__all__ = ["ENTRY_PROJECTIONS", "DEVICE_PEAKS_BF16_TFLOPS", "device_peak", "Matmul", "ModelShape", "Trainable",
           "StepFlops", "count_step", "FlopCounter", "backward_passes", "sequence_lengths", "utilization_summary",
           "COUNTING_NOTE"]
