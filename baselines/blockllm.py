"""BlockLLM (Ramesh, Ganapathiraman, Laradji, Schmidt 2024, arXiv 2406.17296): train the parameter tensors whose
gradients matter most, reselected when the loss stops improving.

Written from the paper (no pip package; the authors' public code was read for the selection unit, not copied). What
this implementation does, exactly:

  * Unit of selection: one parameter tensor (a weight matrix or a norm vector) inside the transformer layers.
    Embeddings and the LM head are never candidates (as in the authors' code; `include_embedding_and_head` makes them
    candidates); a classifier's fresh head trains at every step.
  * Selection rule: on a scoring step every candidate receives its gradient; a hook takes the norm of each tensor's
    gradient ||G_l|| and frees that gradient at once (unless the tensor is being trained), so the full gradient never
    exists. Score s_l = ||G_l|| / f_l with f_l = 1 + the number of earlier selections of l (the paper's visit
    frequency, which favours tensors chosen less often). Tensors are taken by decreasing score until they hold at
    least (1 - sparsity) of the candidate parameters (the last one may overshoot; at least one tensor).
  * Sparsity: 0.95 by default, i.e. about 5 % of the parameters train (the paper's "less than 5 % of the
    parameters").
  * Patience m (`patience`, 100 by default, as in the authors' code): the losses since the last selection are kept;
    once there are more than m, the subset is reselected when the mean of the last m is not below the mean of all of
    them (the loss stopped improving relative to its moving average). The first step is a scoring step.
  * The update: AdamW on fp32 masters of the selected tensors (baselines.subset_training); a reselection drops the
    moments of tensors that leave and keeps those of tensors selected again.
Differences from the paper, stated: the selected tensors are updated in full (the paper additionally masks
coordinates below a gradient-magnitude threshold inside the selected tensors, which only trims the overshoot of the
last tensor taken); the scoring step updates the subset selected before it (on the first step: nothing), so no step
holds the whole gradient; with gradient accumulation the score adds the squared norms of the micro-batch gradients
(exact for grad_accum = 1).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from baselines.adam import AdamOptions
from baselines.base import local_part
from baselines.model_parts import layer_index, task_head_names
from baselines.subset_training import SubsetMethod


@dataclasses.dataclass
class BlockLLMOptions(AdamOptions):
    sparsity: float = 0.95     # fraction of the candidate parameters NOT trained
    patience: int = 100        # m: losses kept before the improvement test
    include_embedding_and_head: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.sparsity = float(self.sparsity)
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the fraction of parameters left out); got {self.sparsity}")
        if isinstance(self.patience, bool) or int(self.patience) != self.patience or self.patience < 1:
            raise ValueError(f"patience must be an integer >= 1; got {self.patience}")
        self.patience = int(self.patience)


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks of a distributed run (FSDP2: each rank scored its own shards); unchanged otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


class BlockLLM(SubsetMethod):
    """The tensors with the largest normalised gradient norm, trained with AdamW until the loss stops improving.

    memory_split (MasterWeightMethod's, over the selected tensors): parameters = every weight as stored;
    gradients = fp32 gradients of the selected masters (a scoring step frees every other gradient in its hook);
    optimizer_states = the selected tensors' fp32 masters and AdamW moments."""

    name = "blockllm"
    fsdp2_unsupported = None  # compared with one process under FSDP2 (experiments/distributed.py)
    Options = BlockLLMOptions
    description = "the layer tensors of largest normalised gradient norm train with AdamW, reselected on plateaus"
    fsdp2_note = ("the scoring step's gradient norms are summed over the ranks' shards and the step loss averaged "
                  "over ranks, so every rank selects the same tensors")
    compile_layers_unsupported = ("each reselection gives the layers new sets of trainable tensors, each a new Dynamo "
                                  "graph, until torch's recompile limit stops the run (after 19 steps on a 6-layer "
                                  "test model)")

    def setup_subset(self, model: nn.Module) -> None:
        o = self.options
        heads = set(task_head_names(model))
        self.always_on = [n for n, _ in self.named if n.split(".", 1)[0] in heads]
        ends = set()
        if not o.include_embedding_and_head:
            for get in ("get_input_embeddings", "get_output_embeddings"):
                module = getattr(model, get, lambda: None)()
                if module is not None and getattr(module, "weight", None) is not None:
                    ends.add(id(module.weight))
        self.candidates = [n for n, p in self.named if n not in self.always_on and id(p) not in ends
                           and (o.include_embedding_and_head or layer_index(n) is not None)]
        if not self.candidates:
            raise ValueError(f"{self.name}: no candidate tensors (parameters inside layers named like 'layers.N.')")
        total = sum(self.param_by_name[n].numel() for n in self.candidates)
        self.budget = max(1, math.ceil((1.0 - o.sparsity) * total))
        self.visits = {n: 0 for n in self.candidates}
        self.losses: list[float] = []
        self.selections = 0
        self.scored_this_step = False
        self._step_loss: torch.Tensor | None = None
        self._index = {n: i for i, n in enumerate(self.candidates)}
        self._sq_norms: torch.Tensor | None = None
        self._hooks = [self.param_by_name[n].register_post_accumulate_grad_hook(self._make_score_hook(n))
                       for n in self.candidates]
        self.activate(self.always_on)
        self._start_scoring()

    # --- scoring ------------------------------------------------------------------------------------------------
    def _make_score_hook(self, name: str):
        index = self._index[name]

        def score(param: torch.Tensor) -> None:
            if not self.scoring or param.grad is None:
                return
            with torch.no_grad():
                sq = local_part(param.grad).float().square().sum()
                if self._sq_norms is None:
                    self._sq_norms = torch.zeros(len(self.candidates), device=sq.device)
                self._sq_norms[index] += sq
            if name not in self._active_set:
                param.grad = None  # scored; this gradient trains nothing

        return score

    def _start_scoring(self) -> None:
        """The next forward/backward gives every candidate a gradient (norms only, see the hooks)."""
        self.scoring = True
        self._sq_norms = None
        self._active_set = set(self.active_names)
        for name in self.candidates:
            self.param_by_name[name].requires_grad_(True)

    def _select(self) -> None:
        norms = self._sq_norms if self._sq_norms is not None else torch.zeros(len(self.candidates))
        norms = _all_reduce_sum(norms).sqrt().cpu()
        scores = [float(norms[i]) / (1 + self.visits[n]) for i, n in enumerate(self.candidates)]
        order = sorted(range(len(self.candidates)), key=lambda i: (-scores[i], i))  # ties: model order
        chosen, count = [], 0
        for i in order:
            if count >= self.budget:
                break
            chosen.append(self.candidates[i])
            count += self.param_by_name[self.candidates[i]].numel()
        for name in chosen:
            self.visits[name] += 1
        self.selections += 1
        self.scoring = False
        self._sq_norms = None
        self.losses = []
        self.activate(set(chosen) | set(self.always_on))

    def _stopped_improving(self) -> bool:
        m = self.options.patience
        if len(self.losses) <= m:
            return False
        return sum(self.losses[-m:]) / m >= sum(self.losses) / len(self.losses)

    # --- one step ----------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, last_micro_batch: bool = True) -> None:
        loss.backward()
        part = loss.detach().float()  # the loop passes loss / grad_accum: the sum over micro-batches is the step's
        self._step_loss = part if self._step_loss is None else self._step_loss + part

    def after_update(self) -> None:
        self.scored_this_step = self.scoring
        if self.scoring:
            self._select()
        else:
            if self._step_loss is not None:
                # the same decision on every rank: the loss averaged over them (FSDP2), as the metrics report it
                import torch.distributed as dist

                loss = _all_reduce_sum(self._step_loss.clone())
                world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
                self.losses.append(float(loss) / world)
            if self._stopped_improving():
                self._start_scoring()
        self._step_loss = None

    def describe(self) -> dict:
        return {"blockllm_selections": self.selections, "scoring_step": self.scored_this_step,
                "active_parameters": sum(self.param_by_name[n].numel() for n in self.active_names)}

    # --- persistence ----------------------------------------------------------------------------------------
    def schedule_state(self) -> dict:
        return {"visits": [self.visits[n] for n in self.candidates], "losses": list(self.losses),
                "selections": self.selections, "scoring": self.scoring}

    def load_schedule_state(self, state: dict) -> None:
        visits = state["visits"]
        if len(visits) != len(self.candidates):
            raise ValueError(f"{self.name}: checkpoint scores {len(visits)} candidate tensors, this model has "
                             f"{len(self.candidates)}")
        self.visits = {n: int(v) for n, v in zip(self.candidates, visits)}
        self.losses = [float(x) for x in state["losses"]]
        self.selections = int(state["selections"])
        if state["scoring"]:
            self._start_scoring()
        else:
            self.scoring = False
            self._sq_norms = None
