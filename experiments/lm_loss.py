"""Causal-LM loss without the full logits tensor (train.loss_chunk_tokens).

A model's own loss materialises logits for every position of the batch and then an fp32 copy for the cross-entropy:
with Gemma 3's 262,144-token vocabulary a batch of 32 x 512 tokens needs 8.6 GB of bf16 logits, 17 GB in fp32 and as
much again for their gradient, far more than the 270M-parameter model itself. Here the vocabulary projection runs only
on the positions that carry a label (prompt and padding positions are skipped), `chunk_tokens` rows at a time, and
each chunk's gradients (with respect to the hidden states and the output embedding) are formed right away in the
forward pass, so no chunk's logits outlive it. The result equals the model's loss (mean token cross-entropy over the
labelled positions, after Gemma-style final-logit soft-capping where the config has it) up to rounding; the gradients
are those of that loss. Backward passes that run twice over the same loss (LOMO's gradient-norm pass) reuse the stored
gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(cap(h_i @ W^T + b), y_i) over rows of h, in chunks; gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap, compute_dtype):
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk].to(compute_dtype)
            logits = F.linear(h, w, b).float()
            if softcap:
                squashed = torch.tanh(logits / softcap)
                logits = squashed * softcap
            y = targets[start:start + chunk]
            total += F.cross_entropy(logits, y, reduction="sum")
            if not (need_h or need_w or need_b):
                continue
            grad_logits = torch.softmax(logits, dim=-1)              # d(sum CE)/d(logits) = softmax - onehot
            grad_logits[torch.arange(y.shape[0], device=y.device), y] -= 1.0
            if softcap:
                grad_logits *= 1.0 - squashed * squashed              # d(c·tanh(z/c))/dz
            grad_logits = grad_logits.to(compute_dtype)
            if need_h:
                grad_h[start:start + chunk] = (grad_logits @ w).to(hidden.dtype)
            if need_w:
                grad_w += (grad_logits.t() @ h).float()
            if need_b:
                grad_b += grad_logits.float().sum(0)
            del logits, grad_logits
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_total.float()
        return (None if grad_h is None else grad_h * scale.to(grad_h.dtype),
                None if grad_w is None else (grad_w * scale).to(ctx.weight_dtype),
                None if grad_b is None else (grad_b * scale).to(ctx.weight_dtype),
                None, None, None, None)


def _head_and_decoder(model: nn.Module):
    head = model.get_output_embeddings()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if head is None or decoder is None or not isinstance(head, nn.Linear):
        raise ValueError(f"train.loss_chunk_tokens needs a causal LM with a linear output head and a decoder "
                         f"(get_output_embeddings / get_decoder); {type(model).__name__} has none: set it to 0")
    return head, decoder


def chunked_causal_lm_loss(model: nn.Module, batch: dict, chunk_tokens: int) -> torch.Tensor:
    """The mean next-token loss of `batch` (input_ids, attention_mask, labels with -100 on unlabelled positions)."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    head, decoder = _head_and_decoder(model)
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = decoder(**inputs).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    rows = hidden[:, :-1][keep]
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0  # no labelled token: a zero loss that still belongs to the graph
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None) or 0.0
    compute_dtype = torch.get_autocast_dtype(rows.device.type) if torch.is_autocast_enabled(rows.device.type) \
        else rows.dtype
    total = _ChunkedLinearCrossEntropy.apply(rows, head.weight, head.bias, targets[keep], chunk_tokens,
                                             float(softcap), compute_dtype)
    return total / count


def model_loss(model: nn.Module, batch: dict, chunk_tokens: int = 0) -> torch.Tensor:
    """The model's own loss (chunk_tokens = 0) or the chunked one."""
    if chunk_tokens:
        return chunked_causal_lm_loss(model, batch, chunk_tokens)
    return model(**batch).loss
