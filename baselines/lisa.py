"""LISA: Layerwise Importance Sampled AdamW (Pan, Liu, Diao, Pi, Zhang, Han, Zhang 2024, arXiv 2403.17919).

Written from the paper's Algorithm 1 (no pip package; LMFlow ships it as a Trainer callback, not used here):

    for i in 0 .. T/K - 1:
        freeze every layer except the embedding and the language-model head
        sample gamma of the N_L transformer layers uniformly at random and unfreeze them
        run AdamW for K iterations

What this implementation does, exactly:
  * gamma (`n_layers`) layers are drawn uniformly WITHOUT replacement among the transformer layers every K
    (`switch_every`) optimizer steps, with a torch.Generator seeded from `seed` (None: drawn once from torch's global
    RNG, so the harness's seed fixes it); a layer may be drawn again in the next period;
  * always on (`always_on_outside_layers`, default true): every parameter outside the layer stack, i.e. the
    embeddings, the final norm and the LM head (tied or not), and a classifier's fresh head. The paper names the
    embedding and the head; the final norm sits outside the layers as in LMFlow's callback, which freezes only the
    layer stack;
  * AdamW on fp32 masters (baselines.subset_training): the moments of layers that leave are dropped, those of the
    always-on parameters and of a layer drawn again are kept (the paper's algorithm restarts nothing else).
Defaults: gamma = 2 (the "E+H+2L" setting of the paper's memory comparison), K = 20 (the sampling period of the
authors' LMFlow example command, `--lisa_interval_steps 20`).

Memory: 2 bytes per weight (bf16) + 16 bytes per active parameter (fp32 master, gradient, two moments). With the
embeddings and head always on that is far more than BAdam's one block for models with large vocabularies (Llama 3-8B:
1.05 B parameters in embeddings + head vs 0.22 B per layer). The backward pass always runs down to the embeddings.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from baselines.adam import AdamOptions
from baselines.model_parts import layer_index, task_head_names
from baselines.subset_training import SubsetMethod


@dataclasses.dataclass
class LISAOptions(AdamOptions):
    n_layers: int = 2           # gamma: layers trained at a time
    switch_every: int = 20      # K: optimizer steps between two draws
    always_on_outside_layers: bool = True  # embeddings, final norm, LM head (and a task head) train at every step
    seed: int | None = None     # seed of the layer draws (None: drawn from torch's global RNG)

    def __post_init__(self):
        super().__post_init__()
        for key in ("n_layers", "switch_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{key} must be an integer >= 1; got {value}")
            setattr(self, key, int(value))


class LISA(SubsetMethod):
    """gamma random layers (+ embeddings, final norm and head) trained with AdamW for K steps, then redrawn.

    memory_split (MasterWeightMethod's, over the active parameters): parameters = every weight as stored;
    gradients = fp32 gradients of the active masters; optimizer_states = their fp32 masters and AdamW moments."""

    name = "lisa"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    Options = LISAOptions
    description = "gamma random layers plus embeddings and head train with AdamW, redrawn every K steps (LISA)"

    def setup_subset(self, model: nn.Module) -> None:
        o = self.options
        self.layers: dict[int, list[str]] = {}
        outside = []
        for name, _ in self.named:
            index = layer_index(name)
            if index is None:
                outside.append(name)
            else:
                self.layers.setdefault(index, []).append(name)
        if not self.layers:
            raise ValueError(f"{self.name}: found no transformer layers (parameter names like 'layers.N.', "
                             f"'layer.N.' or 'h.N.') to sample from")
        if o.n_layers > len(self.layers):
            raise ValueError(f"{self.name}: n_layers={o.n_layers} but the model has {len(self.layers)} layers; "
                             f"choose n_layers between 1 and {len(self.layers)}")
        heads = tuple(task_head_names(model))
        self.always_on = outside if o.always_on_outside_layers else \
            [n for n in outside if n.split(".", 1)[0] in heads]  # a fresh classifier head must train regardless
        seed = o.seed if o.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_done = 0
        self.draws = 0
        self._draw()

    def _draw(self) -> None:
        order = sorted(self.layers)
        picks = torch.randperm(len(order), generator=self.generator)[: self.options.n_layers]
        self.active_layers = sorted(order[int(i)] for i in picks)
        self.draws += 1
        chosen = {n for index in self.active_layers for n in self.layers[index]} | set(self.always_on)
        self.activate(chosen)

    def after_update(self) -> None:
        self.steps_done += 1
        if self.steps_done % self.options.switch_every == 0:
            self._draw()

    def describe(self) -> dict:
        return {"active_layers": " ".join(map(str, self.active_layers)), "lisa_draws": self.draws,
                "active_parameters": sum(self.param_by_name[n].numel() for n in self.active_names)}

    def schedule_state(self) -> dict:
        return {"generator": self.generator.get_state(), "steps_done": self.steps_done, "draws": self.draws,
                "active_layers": list(self.active_layers)}

    def load_schedule_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.steps_done, self.draws = int(state["steps_done"]), int(state["draws"])
        self.active_layers = [int(i) for i in state["active_layers"]]
