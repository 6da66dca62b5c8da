"""Method contracts the harness relies on: defaults, unsupported settings, fused-backward methods, bad options."""
from __future__ import annotations

import pytest
import torch

from baselines.errors import MethodUnsupportedError
from baselines.registry import get_method_class, method_names
from tests.baselines.conftest import build, make_llama, train_step

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_every_registered_method_imports_with_option_defaults():
    for name in method_names():
        cls = get_method_class(name)
        assert cls.name == name
        cls.Options()  # paper defaults construct without arguments


def test_every_method_declares_itself_and_its_requirements_match_pyproject():
    """A method's requirements live in its class; one naming a pyproject extra is listed there too, and what a
    method keeps out of the default setup (install_by_default False) is not pulled in by the `all` extra."""
    import tomllib

    from packaging.requirements import Requirement

    from experiments.paths import REPO_ROOT

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    default_extras = {e for line in extras["all"] for e in line.split("[", 1)[1].rstrip("]").split(",")}
    for name in method_names():
        cls = get_method_class(name)
        assert cls.description and "\n" not in cls.description and len(cls.description) <= 110, name
        assert cls.supports_fsdp2() == (cls.fsdp2_unsupported is None), name
        if cls.extra is not None:
            listed = {Requirement(r).name for r in extras[cls.extra]}
            assert {Requirement(r).name for r in cls.requirements} <= listed, name
            assert (cls.extra in default_extras) == cls.install_by_default, name


def test_missing_requirements_are_found_from_the_installed_distributions():
    from baselines.base import Method

    class Needs(Method):
        name = "needs"
        requirements = ("pytest>=1", "pytest<1", "no-such-distribution-abc")

    missing = Needs.missing_requirements()
    assert missing[0].startswith("pytest<1 (installed: ") and missing[1] == "no-such-distribution-abc"
    assert Needs.install_hint() == "pip install 'pytest>=1' 'pytest<1' 'no-such-distribution-abc'"


def test_lora_defaults_target_every_linear_layer_with_alpha_four_times_rank():
    options = get_method_class("lora").Options()
    assert options.lora_alpha == 4 * options.rank
    method, peft_model = build("lora", make_llama(num_hidden_layers=3), rank=8)
    expected = {f"model.layers.{i}.{'self_attn' if k.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{k}"
                for i in range(3) for k in LLAMA_LINEAR}
    adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == expected  # every linear map of every layer; lm_head and embeddings are not adapted
    assert method.lora_config.lora_alpha == 32 and method.lora_config.r == 8
    assert method.lora_config.modules_to_save is None  # a causal LM has no fresh head


def test_lora_merge_folds_the_adapters_into_the_weights(batch):
    method, peft_model = build("lora", make_llama(), rank=4, dropout=0.0)
    for _ in range(2):
        train_step(method, peft_model, batch)
    with torch.no_grad():
        expected = peft_model(**batch).logits
    merged = get_method_class("lora").merge(peft_model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, atol=0.1, rtol=0.05)  # bf16 rounding of W + BA


@pytest.mark.parametrize("name", ["adalomo", "galore_8bit"])
def test_cuda_only_methods_raise_a_clear_error_on_cpu(name):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: these methods are supported here")
    with pytest.raises(MethodUnsupportedError, match="needs CUDA"):
        build(name, make_llama())


def test_official_badam_rejects_models_without_layers_n_names():
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64)).to(torch.bfloat16)
    with pytest.raises(MethodUnsupportedError, match="layers.N."):
        build("badam_official", bert)
    method, _ = build("badam", bert)  # our BlockOptimizer handles encoder.layer.N and keeps the head active
    assert method.describe()["num_blocks"] == 2
    assert "classifier.weight" in method.optimizer.active_parameter_names


@pytest.mark.parametrize("name", ["lomo", "galore_layerwise"])
def test_fused_methods_cannot_accumulate_gradients(name, batch):
    cls = get_method_class(name)
    assert cls.fused_backward is True and cls.supports_grad_accumulation is False
    method, model = build(name, make_llama(), rank=4) if name.startswith("galore") else build(name, make_llama())
    with pytest.raises(ValueError, match="cannot accumulate"):
        method.backward(model(**batch).loss, last_micro_batch=False)


def test_lomo_two_pass_clipping_reports_the_norm(batch):
    method, model = build("lomo", make_llama(), lr=1.0)
    assert method.grad_norm_over == "none"
    method.set_max_grad_norm(1e-3)
    assert method.grad_norm_over == "trainable"
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(method, model, batch, max_norm=1e-3)
    norm = method.clip_and_norm(1e-3)
    assert norm is not None and norm > 1e-3  # the unclipped norm of the first pass
    # clipped to total norm 1e-3 with lr 1, no weight moves by more than 1e-3 plus bf16 rounding (unclipped, this
    # batch moves some weight by about 0.09)
    moved = max(float((p.detach().float() - start[n].float()).abs().max()) for n, p in model.named_parameters())
    assert 0 < moved <= 2e-3
    with pytest.raises(ValueError, match="set_max_grad_norm"):
        method.clip_and_norm(1.0)  # a threshold the fused backward did not use


def test_galore_layerwise_reports_its_norm_but_refuses_to_clip(batch):
    method, model = build("galore_layerwise", make_llama(), rank=4)
    train_step(method, model, batch)
    loss = model(**batch).loss
    method.backward(loss)
    assert method.clip_and_norm(None) > 0
    with pytest.raises(ValueError, match="cannot clip"):
        method.clip_and_norm(1.0)
    with pytest.raises(ValueError, match="cannot clip"):
        method.set_max_grad_norm(1.0)


@pytest.mark.parametrize("name,options,fragment", [
    ("badam", {"switch_mode": "sideways"}, "random, ascending, descending, fixed"),
    ("badam", {"partition": "rows"}, "layers, attn_mlp, matrix"),
    ("badam", {"switch_block_every": 0}, "switch_block_every"),
    ("galore", {"proj_type": "diagonal"}, "std, reverse_std, right, left, full"),
    ("lora", {"rank": 0}, "rank must be a positive integer"),
    ("adam", {"betas": (0.9, 1.5)}, "betas"),
    ("sgd", {"nesterov": True}, "nesterov"),
])
def test_bad_options_raise_one_clear_error(name, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_method_class(name).Options(**options)


def test_adam_bf16_refuses_fp32_weights():
    with pytest.raises(ValueError, match="dtype=bf16"):
        build("adam_bf16", make_llama(dtype=torch.float32))


def test_every_adamw_method_shares_one_update_kernel_choice():
    """make_adamw: foreach on CPU (exact CPU numbers kept), fused when all parameters are on CUDA, or as asked."""
    from baselines.adam import AdamOptions, make_adamw

    p = torch.nn.Parameter(torch.zeros(3))
    assert not make_adamw([p], 1e-3, AdamOptions(), 0.0).defaults["fused"]
    assert make_adamw([{"params": [p]}], 1e-3, AdamOptions(fused=True), 0.0).defaults["fused"]
    with pytest.raises(ValueError, match="fused"):
        AdamOptions(fused="yes")
