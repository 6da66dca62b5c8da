"""The contract every training method fulfils, so that one loop can train them all.

A method owns everything that differs between optimizers: which parameters train, how they are stored (master
copies, adapters), how the backward pass and the update happen, and what memory it holds. The harness loop
(experiments/loop.py) only calls the methods below, in this order for each optimizer step:

    for each micro-batch: loss = forward(...); method.backward(loss, last_micro_batch)
    norm = method.clip_and_norm(max_grad_norm); method.step(); method.zero_grad()

`set_lr_scale` is called before each step with the schedule's multiplier.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


@dataclasses.dataclass
class NoOptions:
    """For methods without options of their own."""


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds: a sharded DTensor (FSDP2) is a wrapper without storage of its own, so its
    bytes, and its storage identity, are those of the local shard; any other tensor is returned as is."""
    local = getattr(t, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else t


def storage_key(t: torch.Tensor) -> int:
    """Identity of the storage behind `t` (of its local shard for a DTensor), to tell copies from shared tensors."""
    return local_part(t).untyped_storage().data_ptr()


def tensor_bytes(tensors) -> int:
    """Bytes held by distinct storages among `tensors` (a tensor seen twice, or two views of one storage, count once).
    A DTensor counts the bytes of its local shard: what this process holds."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        storage = local_part(t).untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer):
    """Every tensor in an optimizer's per-parameter state (exp_avg, exp_avg_sq, momentum buffers, ...)."""
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                yield value


class Method:
    """Base class: a plain full-parameter method around a torch optimizer. Subclasses override what differs.

    A method describes itself in class attributes, read by the harness (which refuses a setup the method cannot run
    with one clear line), by run_all (which adapts a profile's settings to the method and says so in its plan), by
    scripts/setup_env.sh (which installs `requirements`) and by `python -m experiments.run --list`. Nothing about a
    method is kept in tables elsewhere: a new method is its own file plus one registry line."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type] = NoOptions
    # One line saying what the method trains and how (shown by --list and in the docs).
    description: ClassVar[str] = ""
    # pip requirements beyond the suite's core (torch, transformers): checked before the run starts (a missing one
    # makes the run "unsupported" with the install command) and installed by scripts/setup_env.sh.
    requirements: ClassVar[tuple[str, ...]] = ()
    # The pyproject extra that also lists them (`pip install 'badam-bench[<extra>]'`); None: pip install the
    # requirements themselves.
    extra: ClassVar[str | None] = None
    # False keeps the requirements out of the default setup (e.g. a non-commercial license); the run says how to
    # install them.
    install_by_default: ClassVar[bool] = True
    # Why the method runs on CUDA only (None: it runs on CPU too). run_all skips it on a CPU device with this reason.
    cuda_only: ClassVar[str | None] = None
    # True when the update happens inside backward (LOMO, AdaLomo): step() is then a no-op and update time is 0.
    fused_backward: ClassVar[bool] = False
    # False when gradients cannot be accumulated over micro-batches (fused updates consume them at once). run_all
    # then multiplies the micro-batch by grad_accum instead, keeping the effective batch.
    supports_grad_accumulation: ClassVar[bool] = True
    # False when global-norm clipping is impossible (each parameter is updated before the global norm exists).
    # run_all turns clipping off for such a method; the harness refuses it as an unsupported setup.
    supports_clipping: ClassVar[bool] = True
    # Why the method is not offered on FSDP2-sharded parameters (None: it runs there, compared with one process on the
    # same global batch; experiments/distributed.py). The default refuses: an optimizer that allocates its state as
    # plain tensors fails on sharded (DTensor) parameters at its first step. A class that is verified sets None; a
    # subclass that changes the update should declare its own reason again.
    fsdp2_unsupported: ClassVar[str | None] = ("not verified under FSDP2 sharding against one process (an optimizer "
                                               "whose state is plain tensors fails on sharded DTensor parameters)")
    # What running sharded costs or changes, for a method that runs under FSDP2 (recorded in summary.json).
    fsdp2_note: ClassVar[str | None] = None
    # Why the method is not offered under train.distributed=ddp (None: it runs there, compared with one process on
    # the same global batch in tests/distributed; experiments/ddp.py). A class that is verified sets None; a subclass
    # that changes the update should declare its own reason again.
    ddp_unsupported: ClassVar[str | None] = ("not verified under data parallelism against one process (methods that "
                                             "update inside backward cannot average first; methods whose trainable "
                                             "subset changes or that communicate themselves need their own handling)")

    # Why train.ddp_shard_frozen (each rank keeps 1/N of the frozen blocks' weights, badam/frozen_shards.py) is not
    # offered (None: it is). Only a method whose BlockOptimizer leaves blocks frozen has something to shard.
    frozen_sharding_unsupported: ClassVar[str | None] = ("only block-coordinate methods (a BlockOptimizer: badam, "
                                                         "bsgd) have frozen blocks to shard")

    # Why the method cannot train with compiled decoder layers (train.compile_layers; None: it can). Dynamo guards
    # each layer's parameters' requires_grad: a method that trains changing subsets of a layer's tensors needs a graph
    # per subset, until torch's recompile limit ends the run (experiments/layer_compile.py).
    compile_layers_unsupported: ClassVar[str | None] = None

    @classmethod
    def compile_layers_problem(cls, options, backend: str) -> str | None:
        """Why this method with these options cannot train with decoder layers compiled by `backend` (None: it can);
        a class whose options or backend decide it overrides this."""
        return cls.compile_layers_unsupported

    @classmethod
    def compile_layers_options(cls, backend: str) -> dict:
        """Inductor settings this method's compiled layers need (torch.compile's ``options``; {}: inductor's
        defaults); only the inductor backend reads them. summary.json's compile_layers records them."""
        return {}

    @classmethod
    def frozen_sharding_problem(cls, options) -> str | None:
        """Why this method with these options cannot shard its frozen blocks under ddp (None: it can); a class whose
        options decide it overrides this."""
        return cls.frozen_sharding_unsupported

    @classmethod
    def supports_fsdp2(cls) -> bool:
        return cls.fsdp2_unsupported is None

    @classmethod
    def supports_ddp(cls) -> bool:
        return cls.ddp_unsupported is None

    @classmethod
    def install_hint(cls) -> str:
        if cls.extra:
            return f"pip install 'badam-bench[{cls.extra}]' (or: pip install {' '.join(map(repr, cls.requirements))})"
        return "pip install " + " ".join(repr(r) for r in cls.requirements)

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """Requirements not installed here (or installed in a version the requirement excludes)."""
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        missing = []
        for text in cls.requirements:
            requirement = Requirement(text)
            try:
                installed = version(requirement.name)
            except PackageNotFoundError:
                missing.append(text)
                continue
            if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
                missing.append(f"{text} (installed: {installed})")
        return missing

    @classmethod
    def capabilities(cls) -> dict:
        """The declared capabilities as plain values (summary.json's method_info, --list, the docs' table)."""
        return {"description": cls.description, "requirements": list(cls.requirements), "extra": cls.extra,
                "install_by_default": cls.install_by_default, "cuda_only": cls.cuda_only,
                "fused_backward": cls.fused_backward, "supports_grad_accumulation": cls.supports_grad_accumulation,
                "supports_clipping": cls.supports_clipping, "supports_fsdp2": cls.supports_fsdp2(),
                "fsdp2_note": cls.fsdp2_unsupported or cls.fsdp2_note, "supports_ddp": cls.supports_ddp()}

    def __init__(self, options: Any = None, lr: float = 1e-5, weight_decay: float = 0.0):
        self.options = options if options is not None else self.Options()
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.optimizer: Any = None

    # --- setup -----------------------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Freeze, wrap or cast the model; return the module to train. Default: train every parameter as is."""
        return model

    def build_optimizer(self, model: nn.Module) -> None:
        """Create self.optimizer over the trainable parameters."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[torch.Tensor]:
        """The parameters whose gradients the current step uses (for BAdam: the active block)."""
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    # --- one step ----------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, last_micro_batch: bool = True) -> None:
        loss.backward()

    def clip_and_norm(self, max_norm: float | None) -> float | None:
        """Total L2 norm of the gradients of trainable_parameters(), clipped to max_norm when given."""
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        if not params:
            return None
        if max_norm is None or max_norm <= 0:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm)

    # Which parameters the gradient norm is taken over, for metrics.jsonl's grad_norm_over.
    grad_norm_over: ClassVar[str] = "trainable"

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def update_overlapped(self) -> bool:
        """True when the update runs beside the next forward (a side CUDA stream, e.g. BAdam's overlap_update): the
        loop's step timer then waits for its own stream only between steps."""
        return False

    def set_max_grad_norm(self, max_norm: float | None) -> None:
        """Told once before training. Methods that update inside backward (LOMO, layer-wise GaLore) must know the
        clipping threshold before the backward pass; the others clip in clip_and_norm and ignore this."""

    def set_lr_scale(self, scale: float) -> None:
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * scale

    # --- measurement and persistence ----------------------------------------------------------------------------
    def memory_split(self, model: nn.Module) -> dict[str, int]:
        """Bytes actually held now: model parameters, gradients, optimizer states (incl. fp32 master copies)."""
        params = list(model.parameters())
        return {
            "parameters": tensor_bytes(params),
            "gradients": tensor_bytes(p.grad for p in params),
            "optimizer_states": tensor_bytes(optimizer_state_tensors(self.optimizer)) if self.optimizer else 0,
        }

    def describe(self) -> dict:
        """Extras to log each step (e.g. BAdam's active block). Must be JSON-serialisable."""
        return {}

    def summarize_records(self, records: list[dict]) -> dict:
        """Method-specific blocks for summary.json from the run's metrics.jsonl records (e.g. BAdam's
        badam_rounding); keys must not clash with the summary's own. JSON-serialisable."""
        return {}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
