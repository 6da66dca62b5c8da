"""Checkpointing policy "block-graphed" (badam/layer_graphs.py): the layers below the active block replayed from CUDA
graphs give the losses and gradients policy "block" gives; calls that cannot be graphed run as they are. The CUDA
tests run where a GPU is (the device machine); on a CPU the policy must equal "block" and graph nothing."""
import functools

import pytest
import torch

from badam import BlockOptimizer
from badam.hf import enable_block_checkpointing
from badam.layer_graphs import LayerGraphs, call_parts, call_signature

from .test_checkpointing import dropout_llama
from .tiny import clone_model, lm_batch, tiny_llama

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def ascending(model, lr=1e-3):
    """BlockOptimizer over the decoder layers, one block per layer, ascending, K = 1 (every position in turn)."""
    prefixes = [[f"model.layers.{i}."] for i in range(len(model.model.layers))]
    return BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=lr), list(model.named_parameters()),
                          block_prefix_list=prefixes, switch_mode="ascending", switch_block_every=1, verbose=0,
                          full_precision_ok=True)


def train(model, steps, device, length=8, seed_dropout=False):
    """Losses and, per step, the active block's gradients (cloned before the step)."""
    opt = ascending(model)
    model.train()
    losses, grads = [], []
    for step in range(steps):
        if seed_dropout:
            torch.manual_seed(step)
        batch = {k: v.to(device) for k, v in lm_batch(step, length=length).items()}
        loss = model(**batch).loss
        loss.backward()
        grads.append([p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None])
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
    return losses, grads


def compare(reference, model, steps, device, **kw):
    ref_losses, ref_grads = train(reference, steps, device, **kw)
    losses, grads = train(model, steps, device, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ref_losses, losses)), (ref_losses, losses)
    for ref, got in zip(ref_grads, grads):
        assert len(ref) == len(got) > 0 and all(torch.equal(a, b) for a, b in zip(ref, got))


def pair(device, dropout=False, policy="block-graphed"):
    """Twin models: `policy` (graphed) and the same policy without graphs."""
    reference = (dropout_llama() if dropout else tiny_llama(torch.float32)).to(device)
    model = clone_model(reference).to(device)
    enable_block_checkpointing(reference, policy=policy.removesuffix("-graphed"))
    graphs = enable_block_checkpointing(model, policy=policy)
    return reference, model, graphs


def test_on_a_cpu_the_same_as_block_and_nothing_graphed():
    reference, model, graphs = pair("cpu")
    assert isinstance(graphs, LayerGraphs) and enable_block_checkpointing(clone_model(model)) is None
    compare(reference, model, 6, "cpu")
    stats = graphs.stats()
    assert stats["graphs"] == 0 and stats["counts"] == {"not_graphable": 7}  # below blocks 0,1,2,3,0,1


def test_recording_before_training_runs_two_forwards_in_training_mode_only():
    from badam.hf import record_layer_graphs

    model = tiny_llama(torch.float32)
    assert record_layer_graphs(model, **lm_batch(0)) is None  # no graphed policy: nothing to record
    enable_block_checkpointing(model, policy="block-graphed")
    with pytest.raises(ValueError, match="call model.train"):
        record_layer_graphs(model.eval(), **lm_batch(0))
    stats = record_layer_graphs(model.train(), **lm_batch(0))
    assert stats["counts"] == {"not_graphable": 2 * 4}  # every layer twice (on a CPU nothing is graphed)


def test_calls_that_cannot_be_graphed_have_no_signature():
    layer = torch.nn.Linear(2, 2)
    x = torch.ones(1, 2)
    assert call_signature(layer, [x, None, 3], None) is None  # CPU tensors
    assert call_signature(layer, [], None) is None  # no tensor at all
    with pytest.raises(ValueError, match="max_per_layer must be an integer >= 1"):
        LayerGraphs(max_per_layer=0)


@cuda
def test_replayed_layers_give_the_same_losses_and_gradients():
    reference, model, graphs = pair("cuda")
    compare(reference, model, 12, "cuda")  # three block-epochs: layers updated in place, then replayed again
    counts = graphs.stats()["counts"]
    assert graphs.stats()["graphs"] == 3 and counts["captured"] == 3 and counts["replayed"] > 0
    assert counts.get("capture_failed", 0) == 0, graphs.last_error


@cuda
def test_reentrant_forwards_above_the_active_block_are_replayed_too():
    """block-reentrant-graphed: the layers above the active block run their first forward under no_grad (reentrant
    checkpointing), from graphs too; the recompute in backward runs as it is. The same numbers as block-reentrant."""
    reference, model, graphs = pair("cuda", policy="block-reentrant-graphed")
    compare(reference, model, 12, "cuda")
    counts = graphs.stats()["counts"]
    assert graphs.stats()["graphs"] == 4 and counts["replayed"] > 0  # every layer is above or below at some step
    assert counts.get("capture_failed", 0) == 0, graphs.last_error


@cuda
def test_graphs_recorded_before_training_are_the_ones_training_replays():
    from badam.hf import record_layer_graphs

    reference, model, graphs = pair("cuda")
    record_layer_graphs(model.train(), **{k: v.cuda() for k, v in lm_batch(99).items()})
    assert graphs.stats()["counts"] == {"first_sight": 4, "captured": 4}
    compare(reference, model, 8, "cuda")
    counts = graphs.stats()["counts"]
    assert counts["captured"] == 4 and counts["first_sight"] == 4 and counts["replayed"] > 0  # nothing new recorded


@cuda
def test_dropout_in_a_frozen_layer_is_never_graphed():
    reference, model, graphs = pair("cuda", dropout=True)
    compare(reference, model, 8, "cuda", seed_dropout=True)
    assert graphs.stats()["graphs"] == 0 and graphs.stats()["counts"]["random_numbers"] > 0


def eager(layer, hidden, position):
    """The layer's output without checkpointing or graphs (eval mode: transformers checkpoints only in training;
    the tiny Llama has no dropout, so the numbers are those of training mode)."""
    layer.eval()
    with torch.no_grad():
        out = layer(hidden, position_embeddings=position)
    layer.train()
    return out


@cuda
def test_new_shapes_and_new_storage_get_new_graphs():
    model = tiny_llama(torch.float32, layers=2).cuda()
    graphs = enable_block_checkpointing(model, policy="block-graphed")
    graphs.max_per_layer = 1
    layer = model.model.layers[0]
    layer.requires_grad_(False)
    model.train()
    hidden = torch.randn(1, 8, 32, device="cuda")
    position = model.model.rotary_emb(hidden, torch.arange(8, device="cuda")[None])

    def call(h, pos):
        return layer(h, position_embeddings=pos)

    outs = [call(hidden, position) for _ in range(3)]  # eager, warm-up (recorded), replay
    assert graphs.stats()["counts"] == {"first_sight": 1, "captured": 1, "replayed": 1}
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert outs[2].data_ptr() != outs[1].data_ptr()  # a copy: the next replay does not overwrite it
    # keyword tensors (transformers binds them into the partial it checkpoints) are inputs of the replay too
    shifted = model.model.rotary_emb(hidden, torch.arange(3, 11, device="cuda")[None])
    expected = eager(layer, hidden * 3, shifted)
    assert torch.equal(call(hidden * 3, shifted), expected) and graphs.stats()["counts"]["replayed"] == 2
    assert not torch.equal(expected, outs[0])
    with torch.no_grad():
        layer.mlp.down_proj.weight.data = layer.mlp.down_proj.weight.data * 2  # new storage: a new signature
    changed = [call(hidden, position) for _ in range(3)]
    expected = eager(layer, hidden, position)
    assert all(torch.equal(expected, c) for c in changed) and not torch.equal(expected, outs[0])
    assert graphs.stats()["graphs"] == 1  # max_per_layer = 1: the old one dropped
    short = hidden[:, :4].contiguous()
    assert call(short, tuple(t[:, :4] for t in position)).shape == (1, 4, 32)
    assert graphs.stats()["counts"]["first_sight"] == 3


def test_bound_arguments_are_arguments_of_the_call():
    layer = torch.nn.Linear(2, 2)
    x, y = torch.ones(2), torch.zeros(2)
    function, args, kwargs = call_parts(functools.partial(torch.add, x, alpha=2), (y,), {"out": None})
    assert function is torch.add and args == (x, y) and kwargs == {"alpha": 2, "out": None}
    assert call_parts(layer, (x,), {}) == (layer, (x,), {})


@cuda
def test_a_call_through_a_hooked_layer_call_is_not_graphed():
    """Before transformers 5.2x the checkpointed callable was the layer's own __call__, module hooks (FSDP2's
    all-gather) inside it: never recorded into a graph."""
    layer = torch.nn.Linear(4, 4).cuda().requires_grad_(False)
    layer.register_forward_pre_hook(lambda module, args: None)
    graphs = LayerGraphs()
    x = torch.randn(2, 4, device="cuda")
    outs = [graphs.run(layer, functools.partial(layer.__call__), (x,), {}) for _ in range(3)]
    assert graphs.stats()["counts"] == {"not_graphable": 3} and all(torch.equal(outs[0], o) for o in outs)


def test_graph_safe_pre_hooks_are_called_and_others_keep_the_call_eager():
    """A hook marked graph_safe (the overlapped update's stream wait) is called before a replay would run; it may
    remove itself; any other hook, or a marked one taking kwargs, leaves the call eager (its __call__ runs them)."""
    from badam.layer_graphs import graph_safe, hooks_left_after_graph_safe

    layer, calls = torch.nn.Linear(2, 2), []
    handles = []

    @graph_safe
    def wait_once(module, args):
        calls.append(len(args))
        handles[0].remove()

    handles.append(layer.register_forward_pre_hook(wait_once))
    assert not hooks_left_after_graph_safe(layer, (torch.ones(2),)) and calls == [1] and not layer._forward_pre_hooks
    other = layer.register_forward_pre_hook(lambda module, args: calls.append("other"))
    assert hooks_left_after_graph_safe(layer, (torch.ones(2),)) and calls == [1]
    other.remove()
    layer.register_forward_pre_hook(graph_safe(lambda module, args, kwargs: calls.append("kw")), with_kwargs=True)
    assert hooks_left_after_graph_safe(layer, ()) and calls == [1]
    on_cpu = LayerGraphs()  # CPU tensors: never graphed, the call runs its __call__ (hooks included) as it is
    layer._forward_pre_hooks.clear()
    handles[0] = layer.register_forward_pre_hook(wait_once)
    on_cpu.run(layer, functools.partial(layer.__call__), (torch.ones(2),), {})
    assert calls == [1, 1] and on_cpu.stats()["counts"] == {"not_graphable": 1}


@cuda
def test_a_hooked_layer_call_with_only_graph_safe_hooks_is_replayed():
    from badam.layer_graphs import graph_safe

    layer = torch.nn.Linear(4, 4).cuda().requires_grad_(False)
    calls = []
    layer.register_forward_pre_hook(graph_safe(lambda module, args: calls.append(1)))
    graphs = LayerGraphs()
    x = torch.randn(2, 4, device="cuda")
    outs = [graphs.run(layer, functools.partial(layer.__call__), (x,), {}) for _ in range(3)]
    assert graphs.stats()["counts"] == {"first_sight": 1, "captured": 1, "replayed": 1}
    assert all(torch.equal(outs[0], o) for o in outs)
    assert len(calls) >= 3  # before each call (and again inside the eager ones)


@cuda
def test_a_layer_whose_signatures_keep_changing_stops_being_recorded():
    from badam.layer_graphs import RECORDINGS_PER_KEPT_GRAPH

    layer = torch.nn.Linear(4, 4).cuda().requires_grad_(False)
    graphs = LayerGraphs(max_per_layer=1)
    call = functools.partial(torch.nn.Linear.forward, layer)
    for rows in range(1, RECORDINGS_PER_KEPT_GRAPH + 3):  # a new shape, twice each
        x = torch.randn(rows, 4, device="cuda")
        assert all(torch.equal(graphs.run(layer, call, (x,), {}), layer(x)) for _ in range(2))
    counts = graphs.stats()["counts"]
    assert counts["captured"] == RECORDINGS_PER_KEPT_GRAPH and counts["recording_budget_spent"] == 2
    assert graphs.stats()["graphs"] == 1
