"""The mixed-precision scheme shared by the full-parameter methods (adam, sgd, galore, lora's trainable parts).

The paper's Adam baseline keeps the weights in bf16 for compute and gives every trained parameter an fp32 master copy,
an fp32 gradient and fp32 optimizer states: 2 + 4 + 4 + 8 = 18 bytes per parameter for AdamW. The machinery
(`badam.mixed_precision.FP32MasterWeights`) lives in the badam package so BAdam's active block uses the very same code;
this module adapts it to the Method contract: the optimizer updates the masters, `step` writes them back into the
model, and gradients are read (norm, clipping) on the masters. The masters run in FP32MasterWeights' "master" gradient
mode: each gradient is folded into the fp32 master gradient during backward and p.grad is None afterwards, so every
parameter holds 4 bytes of gradient (the "param" mode BlockOptimizer uses would add a bf16 copy of every gradient
during the update). The harness clips and measures through `clip_and_norm`, which reads the masters.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from badam.mixed_precision import FP32MasterWeights
from baselines.base import Method, optimizer_state_tensors, storage_key, tensor_bytes


class MasterWeightMethod(Method):
    """A torch optimizer over fp32 masters of the trainable parameters; subclasses say which optimizer.

    memory_split counts:
      parameters       — every model parameter as stored (bf16 weights; LoRA adapters too);
      gradients        — gradients held on model parameters plus the fp32 master gradients;
      optimizer_states — the optimizer's state tensors plus the fp32 master copies (parameters already stored in
                         fp32 are their own masters and are counted once, as parameters).
    """

    def prepare_model(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def make_optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        """The optimizer over the masters (param_groups hold master tensors)."""
        raise NotImplementedError

    def param_groups(self, named_masters: list[tuple[str, torch.Tensor]]) -> list[dict]:
        """How the masters split into optimizer groups. Default: one group."""
        return [{"params": [m for _, m in named_masters]}]

    def build_optimizer(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"{self.name}: the model has no trainable parameters")
        self.master_weights = FP32MasterWeights([p for _, p in named], gradients="master")
        # FP32MasterWeights drops repeated (tied) parameters; keep the first name of each.
        names: dict[int, str] = {}
        for n, p in named:
            names.setdefault(id(p), n)
        named_masters = [(names[id(p)], m) for p, m in zip(self.master_weights.params, self.master_weights.masters)]
        self.optimizer = self.make_optimizer(self.param_groups(named_masters))

    # --- one step ----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.Tensor]:
        return list(self.master_weights.masters)  # gradients live here after backward (see FP32MasterWeights)

    def step(self) -> None:
        self.optimizer.step()
        self.master_weights.copy_to_model()

    def zero_grad(self) -> None:
        self.master_weights.zero_grad()
        for p in self.master_weights.params:
            p.grad = None

    # --- measurement and persistence ----------------------------------------------------------------------------
    def state_tensors(self):
        """Tensors the optimizer holds per parameter (subclasses add non-standard ones, e.g. GaLore projectors)."""
        return optimizer_state_tensors(self.optimizer)

    def memory_split(self, model: nn.Module) -> dict[str, int]:
        params = list(model.parameters())
        param_ptrs = {storage_key(p) for p in params}
        copies = [m for m in self.master_weights.masters if storage_key(m) not in param_ptrs]
        grads = itertools.chain((p.grad for p in params), (m.grad for m in self.master_weights.masters))
        return {
            "parameters": tensor_bytes(params),
            "gradients": tensor_bytes(grads),
            "optimizer_states": tensor_bytes(itertools.chain(self.state_tensors(), copies)),
        }

    def state_dict(self) -> dict:
        # The masters carry the precision the bf16 model lost; without them a resumed run would diverge.
        return {"optimizer": self.optimizer.state_dict(), "masters": [m.detach() for m in self.master_weights.masters]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        masters = state["masters"]
        if len(masters) != len(self.master_weights.masters):
            raise ValueError(f"{self.name}: checkpoint has {len(masters)} master tensors, this model has "
                             f"{len(self.master_weights.masters)}; was it saved from a different model or method?")
        for mine, saved in zip(self.master_weights.masters, masters):
            mine.copy_(saved)
        self.master_weights.copy_to_model()
        self.optimizer.load_state_dict(state["optimizer"])
