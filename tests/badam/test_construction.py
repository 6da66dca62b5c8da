"""BlockOptimizer's construction as users write it: parameters they froze stay frozen (whether or not the base
optimizer holds them), a model re-wrapped after release() trains every block again, and the usual mistakes
(model.parameters() for named parameters, the optimizer class, a string partition, a bad verbose) give one clear
error naming the fix."""
import pytest
import torch

from badam import BlockOptimizer, BlockOptimizerRatio

from .tiny import lm_batch, tiny_llama, train_steps


def build(model, base=None, **kwargs):
    base = base or torch.optim.AdamW(model.parameters(), lr=1e-2)
    kwargs.setdefault("verbose", 0)
    return BlockOptimizer(base, list(model.named_parameters()), **kwargs)


@pytest.mark.parametrize("base_over", ["all", "trainable"])
def test_parameters_frozen_before_wrapping_stay_frozen_and_form_no_block(base_over):
    model = tiny_llama(layers=3)
    model.model.embed_tokens.weight.requires_grad_(False)
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    params = model.parameters() if base_over == "all" else (p for p in model.parameters() if p.requires_grad)
    opt = build(model, torch.optim.AdamW(params, lr=1e-2), switch_block_every=1, switch_mode="ascending",
                include_lm_head=True)
    assert opt.block_prefix_list[:2] == [["model.layers.1."], ["model.layers.2."]] and opt.num_blocks == 3
    assert sorted(opt.frozen_parameter_names) == sorted(frozen)
    train_steps(model, opt, 4)  # visits every block, the first one twice
    for name, p in model.named_parameters():
        if name in frozen:
            assert not p.requires_grad and torch.equal(p, frozen[name]), name


def test_a_partition_naming_only_frozen_parameters_says_so():
    model = tiny_llama(layers=2)
    model.model.embed_tokens.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"no parameter precedes the layer stack.*1 parameters with "
                                         r"requires_grad=False were left out and stay frozen"):
        build(model, include_embedding=True)
    whole = build(model.requires_grad_(False))  # frozen whole: 1.4's code does this first; every block trains
    assert whole.num_blocks == 2 and whole.frozen_parameter_names == []


def test_a_model_wrapped_again_after_release_trains_every_block():
    """BlockOptimizer freezes the blocks it does not train; those are not 'frozen by the user' for the next one."""
    model = tiny_llama(layers=3)
    first = build(model, switch_mode="ascending")
    train_steps(model, first, 1)
    first.release()
    assert not any(p.requires_grad for p in model.parameters())
    second = build(model, switch_mode="ascending")
    assert second.num_blocks == 3 and second.frozen_parameter_names == []
    with pytest.warns(UserWarning, match="takes it over"):  # over a model whose optimizer was simply dropped
        dropped = build(model, switch_mode="ascending")
    assert dropped.num_blocks == 3 and dropped.frozen_parameter_names == []


def test_common_mistakes_give_one_clear_error():
    model = tiny_llama(layers=2)
    base = torch.optim.AdamW(model.parameters())
    for wrong in (model.parameters(), list(model.parameters())):
        with pytest.raises(TypeError, match=r"\(name, parameter\) pairs, got a Parameter of shape .* pass "
                                            r"list\(model.named_parameters\(\)\), not model.parameters\(\)"):
            BlockOptimizer(base, wrong)
    with pytest.raises(TypeError, match=r"pass list\(model.named_parameters\(\)\), not the LlamaForCausalLM"):
        BlockOptimizer(base, model)
    with pytest.raises(TypeError, match="an optimizer instance built over the model's parameters.*not the class AdamW"):
        BlockOptimizer(torch.optim.AdamW, list(model.named_parameters()))
    with pytest.raises(ValueError, match="block_prefix_list must be a list of blocks.*got the string"):
        build(model, block_prefix_list="model.layers.0.")
    with pytest.raises(ValueError, match="verbose must be one of 0, 1, 2"):
        build(model, verbose="yes")
    assert build(model, verbose=False).verbose is False  # 1.4 users pass booleans
    with pytest.raises(TypeError, match="param_groups must be parameters or param-group dicts.*not a AdamW"):
        BlockOptimizerRatio(base, list(model.named_parameters()))
    with pytest.raises(TypeError, match=r"\(name, parameter\) pairs"):
        BlockOptimizerRatio(model.parameters(), model.parameters())


def test_generator_of_named_parameters_works_like_a_list():
    model = tiny_llama(layers=2)
    opt = BlockOptimizer(torch.optim.AdamW(model.parameters()), model.named_parameters(), verbose=0)
    model(**lm_batch(0)).loss.backward()
    opt.step()
    assert opt.num_blocks == 2
