"""Examples → token ids → padded batches, and batched prediction.

Classification batches hold `input_ids`, `attention_mask` (+ `token_type_ids` where the tokenizer makes them) of shape
(batch, length) and `labels` (batch,). Multiple-choice batches (COPA) hold the same keys with shape
(batch, choices, length), the layout of transformers' *ForMultipleChoice models. Padding is per batch (to the longest
member), by the tokenizer's own `pad`, so that every tokenizer pads on its side with its pad id.
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from eval.superglue.tasks import Example


def encode_examples(examples: Sequence[Example], tokenizer, *, max_length: int, kind: str) -> list[dict]:
    """Tokenize each example's sentence pair(s), truncating the longer segment first to `max_length` tokens."""
    if max_length < 8:
        raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
    if kind not in ("classification", "multiple_choice"):
        raise ValueError(f"unknown task kind {kind!r}; valid kinds: classification, multiple_choice")
    firsts = [a for ex in examples for a, _ in ex.pairs]
    seconds = [b for ex in examples for _, b in ex.pairs]
    encoded = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    features, row = [], 0
    for ex in examples:
        per_pair = [{k: encoded[k][row + j] for k in keys} for j in range(len(ex.pairs))]
        row += len(ex.pairs)
        if kind == "classification":
            if len(per_pair) != 1:
                raise ValueError(f"example {ex.uid} has {len(per_pair)} input pairs; classification needs one")
            features.append({**per_pair[0], "labels": ex.label})
        else:
            features.append({"choices": per_pair, "labels": ex.label})
    return features


def collate(features: Sequence[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Pad a list of encoded features into one batch of tensors (see the module docstring for the shapes)."""
    labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    if "choices" not in features[0]:
        batch = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in features], return_tensors="pt")
        return {**dict(batch), "labels": labels}
    n_choices = len(features[0]["choices"])
    if any(len(f["choices"]) != n_choices for f in features):
        raise ValueError("every multiple-choice example in a batch needs the same number of choices")
    flat = tokenizer.pad([choice for f in features for choice in f["choices"]], return_tensors="pt")
    batch = {k: v.view(len(features), n_choices, -1) for k, v in flat.items()}
    return {**batch, "labels": labels}


def shuffled_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The training order of epoch `epoch`: a permutation that depends only on (seed, epoch), so that every method
    sees identical batches."""
    order = list(range(n))
    random.Random(f"superglue-order-{seed}-{epoch}").shuffle(order)
    return order


def train_batches(features: Sequence[dict], tokenizer, *, batch_size: int, seed: int,
                  epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled training batches of one epoch; the last, smaller batch is kept (small tasks such as CB and COPA
    would otherwise lose a sizeable share of their data)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = shuffled_order(len(features), seed=seed, epoch=epoch)
    for start in range(0, len(order), batch_size):
        yield collate([features[i] for i in order[start:start + batch_size]], tokenizer)


def eval_batches(features: Sequence[dict], tokenizer, *, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(features), batch_size):
        yield collate(features[start:start + batch_size], tokenizer)


def _to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def predict(model, features: Sequence[dict], tokenizer, *, batch_size: int, device="cpu",
            autocast_dtype: torch.dtype | None = None, desc: str = "predict",
            progress: bool = True) -> tuple[list[int], float]:
    """Arg-max class (or choice) of every feature, in order, and the mean cross-entropy loss over them.

    The model is put in eval mode (no dropout) and given back in the mode it came in.
    """
    was_training = model.training
    model.eval()
    predictions: list[int] = []
    loss_sum, count = 0.0, 0
    device_type = torch.device(device).type
    try:
        batches = eval_batches(features, tokenizer, batch_size=batch_size)
        total = (len(features) + batch_size - 1) // batch_size
        for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=not progress):
            batch = _to_device(batch, device)
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                output = model(**batch)
            logits = output.logits.float()
            predictions.extend(logits.argmax(dim=-1).tolist())
            n = batch["labels"].shape[0]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
            count += n
    finally:
        model.train(was_training)
    return predictions, loss_sum / max(count, 1)
