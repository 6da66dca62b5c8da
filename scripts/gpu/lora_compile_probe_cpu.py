"""Issue 18 probe, CPU side of `scripts/gpu/compile_layers_check.sh lora-probe`: does LoRA's first AdamW step lower
the loss by the same amount with inductor-compiled decoder layers as eager, in fp32 and bf16? A 4-layer random Llama
(hidden 256), rank-16 LoRA on every linear map, checkpointing, three batches of 2 x 128 random tokens; prints, per
dtype and backend, the loss at steps 2 and 3 at lr 1e-3 minus the same at lr 1e-12 (adapters stay ~0). About 90 s
on 2 cores:
    .venv/bin/python scripts/gpu/lora_compile_probe_cpu.py
On 2026-11-26 (torch 2.13 CPU) the effects agreed within 10 % (results/bench/compile_layers_h100x1/README.md)."""
import copy
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.layer_compile import compile_decoder_layers
import torch._dynamo


def main():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    base0 = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 2000, (2, 128), generator=g) for _ in range(3)]

    def run(dtype, backend, lr, scaling_alpha=64, ckpt=True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        m = copy.deepcopy(base0).to(dtype)
        if ckpt:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            m.enable_input_require_grads()
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        m = get_peft_model(m, LoraConfig(r=16, lora_alpha=scaling_alpha, lora_dropout=0.0, target_modules=targets))
        m.train()
        if backend != "none":
            compile_decoder_layers(m, backend)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        losses = []
        for b in batches:
            out = m(input_ids=b, labels=b, use_cache=False)
            losses.append(out.loss.item())
            out.loss.backward(); opt.step(); opt.zero_grad()
        return losses
    for dtype in (torch.float32, torch.bfloat16):
        for backend in ("none", "aot_eager", "inductor"):
            hi = run(dtype, backend, 1e-3); lo = run(dtype, backend, 1e-12)
            print(dtype, backend, "step2/3 loss at lr 1e-12 minus at lr 1e-3:",
                  [round(low - high, 5) for high, low in zip(hi[1:], lo[1:])], flush=True)


if __name__ == "__main__":
    main()
