"""Name → method. Entries are "module:Class" strings, imported only when asked for, so that a method whose optional
dependency is missing never stops the others from loading.

Adding a method: write baselines/<name>.py with a Method subclass (its description, pip requirements and
capabilities are class attributes, see baselines/base.py), then add one line below. scripts/setup_env.sh installs
the requirements of every registered method (`python -m baselines requirements`).
"""
from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "adam": "baselines.adam:Adam",
    "adam_bf16": "baselines.adam:AdamPureBF16",
    "sgd": "baselines.sgd:SGD",
    "badam": "baselines.badam_method:BAdam",
    "bsgd": "baselines.badam_method:BSGD",
    "badam_ratio": "baselines.badam_ratio:BAdamRatio",
    "badam_official": "baselines.badam_official:BAdamOfficial",
    "lora": "baselines.lora:LoRA",
    "lomo": "baselines.lomo:LOMO",
    "adalomo": "baselines.lomo:AdaLOMO",
    "galore": "baselines.galore:GaLore",
    "galore_8bit": "baselines.galore:GaLore8bit",
    "galore_layerwise": "baselines.galore:GaLoreLayerwise",
    "lisa": "baselines.lisa:LISA",
    "blockllm": "baselines.blockllm:BlockLLM",
    "adam_mini": "baselines.adam_mini:AdamMini",
    "muon": "baselines.muon:Muon",
    "adamw_8bit": "baselines.adamw_8bit:AdamW8bit",
    "apollo": "baselines.apollo:APOLLO",
    "q_galore": "baselines.q_galore:QGaLore",
    "adafactor": "baselines.adafactor:Adafactor",
}


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return self.args[0]


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method_class(name: str):
    """The Method subclass registered under `name`; an unknown name raises one error listing the valid names."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; valid methods: {', '.join(method_names())}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def missing_requirements(*, include_optional: bool = False) -> list[str]:
    """pip requirements of the registered methods that are not installed here, each once: those of methods installed
    by default (Method.install_by_default), and with include_optional those of the others too."""
    out: list[str] = []
    for name in method_names():
        cls = get_method_class(name)
        if cls.install_by_default or include_optional:
            out += [r.split(" (installed")[0] for r in cls.missing_requirements() if r not in out]
    return out


def describe_methods() -> list[str]:
    """One line per registered method: name, what it can do, and its description."""
    lines = []
    for name in method_names():
        cls = get_method_class(name)
        flags = ["CUDA only" if cls.cuda_only else "CPU+CUDA",
                 "fused update" if cls.fused_backward else "", "no accumulation" if not cls.supports_grad_accumulation
                 else "", "no clipping" if not cls.supports_clipping else "",
                 "FSDP2" if cls.supports_fsdp2() else "no FSDP2", "DDP" if cls.supports_ddp() else "",
                 _compile_flag(cls)]
        needs = f"; needs {', '.join(cls.requirements)}" if cls.requirements else ""
        lines.append(f"{name:<18} [{', '.join(f for f in flags if f)}{needs}] {cls.description}")
    return lines


def _compile_flag(cls) -> str:
    """What train.compile_layers cannot do for the method with its default options: refused with every backend, or
    with inductor only (empty when it compiles)."""
    options = cls.Options()
    if cls.compile_layers_problem(options, "aot_eager"):
        return "no compiled layers"
    return "no inductor" if cls.compile_layers_problem(options, "inductor") else ""
