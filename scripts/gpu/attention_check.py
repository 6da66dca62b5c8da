"""Does the GPU compute the same loss as the CPU? The first training batch of a config, a few rows, scored on the
CPU in fp32 (reference) and on CUDA with each attention path: sdpa with cuDNN allowed, sdpa without cuDNN (the
harness default), eager; bf16 weights under bf16 autocast as in training, and fp32.

Why: in the first GPU session of the quality profile (2026-11-25, H100, torch 2.11) Gemma-3-270M started training at
loss 9.41 on a batch whose rows score 0.95-1.96 on this project's CPU machine. Because the CPU reference is computed
on the GPU machine itself, this check tells a GPU kernel fault (GPU paths differ from the CPU) from a fault of the
model or tokenizer there (all paths agree on a wrong loss). The second session's check (results/lr_sweep_gemma3_270m/
attention_check.json) found every path within 1e-3 of the CPU, the cause being the tokenizer (see
experiments.models.check_subword_tokenizer). Run this before trusting quality runs on a new machine or stack:

    python3 scripts/gpu/attention_check.py --config quality/gemma3_270m_alpaca.yaml --rows 4 --out check.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from experiments.config import load_config
from experiments.lm_loss import model_loss
from experiments.models import load_model
from experiments.run import build_data


def score(model, batch, device, autocast, chunk) -> float:
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
        return float(model_loss(model, batch, chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = load_config(args.config, ["method.name=adam"])
    chunk = cfg.train.loss_chunk_tokens
    _, tokenizer = load_model(cfg.model.source, dtype="fp32", tokenizer=None)
    batches_fn, _ = build_data(cfg, tokenizer)
    batch = {k: v[:args.rows] for k, v in next(iter(batches_fn(0))).items()}
    results = {"config": args.config, "rows": args.rows, "shape": list(batch["input_ids"].shape),
               "tokens": int(batch["attention_mask"].sum()), "torch": torch.__version__,
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "losses": {}}
    started = time.perf_counter()
    cpu_model, _ = load_model(cfg.model.source, dtype="fp32", device="cpu")
    results["losses"]["cpu fp32 (reference)"] = score(cpu_model, batch, "cpu", False, chunk)
    del cpu_model
    paths = (("sdpa", True), ("sdpa", False), ("eager", False)) if torch.cuda.is_available() else ()
    for attn, cudnn in paths:
        for dtype, autocast in (("bf16", True), ("fp32", False)):
            model, _ = load_model(cfg.model.source, dtype=dtype, device="cuda", attn_implementation=attn,
                                  cudnn_attention=cudnn)
            name = f"cuda {attn}{' +cudnn' if cudnn else ''} {dtype}"
            try:
                results["losses"][name] = score(model, batch, "cuda", autocast, chunk)
            except Exception as exc:  # a backend that refuses the shapes is a result too
                results["losses"][name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            del model
            torch.cuda.empty_cache()
    results["wall_s"] = time.perf_counter() - started
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    for name, value in results["losses"].items():
        print(f"{name:<32} {value}")


if __name__ == "__main__":
    main()
