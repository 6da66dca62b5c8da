"""badam/overlap.py: BlockOptimizer.overlap_update. On the CPU a recording stand-in for the side stream checks the
orchestration (what is queued, which tensors are kept for the stream, where the main stream waits: right before the
updated block's module, and at the state dicts, an in-place zero_grad, a switch back to updated weights); the numbers
must stay bitwise those of the plain optimizer, data parallel (deferred all-reduce) included. On a GPU the real side
stream must give the same numbers bit for bit."""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from badam import BlockOptimizer
from badam.overlap import block_modules

from .test_data_parallel import group  # noqa: F401  (fixture: a one-rank gloo group)
from .tiny import clone_model, lm_batch, params_equal, tiny_llama

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream needs a GPU")


class RecordingSide:
    """Stands in for CudaSideStream on the CPU: work "queued" runs at once; the calls are logged in `log`, shared with
    a module-forward log so the test sees where the main stream would wait."""

    def __init__(self, log: list):
        self.log, self.kept, self.events = log, [], 0

    def enter(self):
        self.log.append("queue")
        return contextlib.nullcontext()

    def record(self):
        self.events += 1
        return f"event{self.events}"

    def wait(self, event):
        self.log.append(f"wait {event}")

    def keep(self, tensors):
        self.kept.append(list(tensors))


def build(model, **kwargs):
    base = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    options = {"switch_block_every": 1, "switch_mode": "ascending", "verbose": 0, "seed": 3, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp32 weights warn about memory
        return BlockOptimizer(base, list(model.named_parameters()), **options)


def train(model, opt, steps, device="cpu", clip=None, accum=1):
    losses, norms = [], []
    for s in range(steps):
        for k in range(accum):
            quiet = opt.no_sync() if k < accum - 1 else contextlib.nullcontext()
            with quiet:
                batch = {key: v.to(device) for key, v in lm_batch(s + 10 * k).items()}
                loss = model(**batch).loss / accum
                loss.backward()
        if clip is not None:
            norms.append(opt.clip_grad_norm_(clip))
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
    return [float(x) for x in losses], [float(x) for x in norms]


def forward_log(model, log):
    """Log every decoder layer's forward (its name) into `log`."""
    return [layer.register_forward_pre_hook(lambda module, args, name=f"layer{i}": log.append(name))
            for i, layer in enumerate(model.model.layers)]


@pytest.mark.parametrize("kwargs", [{}, {"switch_block_every": 2, "switch_mode": "random"},
                                    {"per_tensor_update": False}, {"gradients": "master"}])
def test_queued_update_trains_bitwise_like_the_plain_optimizer(kwargs):
    reference, model = tiny_llama(torch.float32), tiny_llama(torch.float32)
    log = []
    opt = build(model, **kwargs)
    opt.overlap_update(model, side=RecordingSide(log))
    assert train(reference, build(reference, **kwargs), 7) == train(model, opt, 7)
    assert params_equal(reference, model)
    assert opt._overlap.launched == 7 and log.count("queue") == 7


def test_the_main_stream_waits_right_before_the_updated_block_runs():
    model = tiny_llama(torch.float32, layers=4)
    log = []
    opt = build(model, start_block=0)
    side = RecordingSide(log)
    opt.overlap_update(model, side=side)
    handles = forward_log(model, log)
    train(model, opt, 3)  # ascending, K = 1: steps update layers 0, 1, 2
    for handle in handles:
        handle.remove()
    # step 1's forward: nothing queued yet; its update of layer 0 is waited for just before layer 0 runs in step 2
    assert log == ["layer0", "layer1", "layer2", "layer3", "queue",
                   "wait event1", "layer0", "layer1", "layer2", "layer3", "queue",
                   "layer0", "wait event2", "layer1", "layer2", "layer3", "queue"]
    assert opt._overlap.pending and opt._overlap.waits == 2
    # what the stream keeps: the updated layer's masters (fp32 weights are their own), gradients and AdamW states
    layer0 = {id(p) for p in model.model.layers[0].parameters()}
    assert layer0 <= {id(t) for t in side.kept[0]}
    states = [v for s in opt.base_optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert {id(t) for t in states} <= {id(t) for t in side.kept[-1]}
    model.state_dict()  # reads every weight: waits
    assert log[-1] == "wait event3" and not opt._overlap.pending


def test_state_dicts_in_place_zero_grad_and_release_wait():
    model = tiny_llama(torch.float32)
    log = []
    opt = build(model)
    opt.overlap_update(model, side=RecordingSide(log))
    train(model, opt, 1)
    opt.state_dict()
    assert log[-1] == "wait event1"
    train(model, opt, 1)
    opt.zero_grad(set_to_none=False)
    assert log[-1] == "wait event2"
    train(model, opt, 1)
    opt.zero_grad()  # set_to_none: dropping references needs no wait (the stream keeps the memory)
    assert log[-1] == "queue"
    opt.load_state_dict(opt.state_dict())
    assert log[-1] == "wait event3"
    train(model, opt, 1)
    opt.release()
    assert log[-1] == "wait event4" and not opt._overlap.pending
    assert not model.model.layers[0]._forward_pre_hooks and not model._state_dict_pre_hooks


def test_a_switch_back_to_updated_weights_waits_first():
    """active_modules train in every block: each switch copies their just-updated weights into new masters."""
    model = tiny_llama(torch.float32, layers=2)
    log = []
    opt = build(model, active_modules=["lm_head"])
    opt.overlap_update(model, side=RecordingSide(log))
    reference = tiny_llama(torch.float32, layers=2)
    assert train(reference, build(reference, active_modules=["lm_head"]), 3) == train(model, opt, 3)
    assert log.count("queue") == 3 and sum(entry.startswith("wait") for entry in log) >= 3
    assert params_equal(reference, model)


def test_guarded_modules_are_whole_layers_whatever_the_partition():
    """A graphed policy replays whole layers, where a hook on a module inside would not run: the layer is guarded."""
    model = tiny_llama(torch.float32, layers=3, tie=False)
    names = {id(p): n for n, p in model.named_parameters()}
    layer = model.model.layers[1]
    assert block_modules(model, list(layer.parameters()), names) == [layer]
    assert block_modules(model, [layer.self_attn.q_proj.weight], names) == [layer]  # partition=matrix's block
    assert block_modules(model, [model.lm_head.weight, model.model.norm.weight], names) == [model.lm_head,
                                                                                          model.model.norm]


def test_a_matrix_partition_waits_at_the_layer():
    model = tiny_llama(torch.float32, layers=2)
    log = []
    prefixes = [[n] for n, _ in model.named_parameters() if ".layers." in n and n.endswith("proj.weight")]
    opt = build(model, block_prefix_list=prefixes)
    opt.overlap_update(model, side=RecordingSide(log))
    handles = forward_log(model, log)
    train(model, opt, 2)
    for handle in handles:
        handle.remove()
    assert log[log.index("queue") + 1:] == ["wait event1", "layer0", "layer1", "queue"]


def test_clipping_inside_the_update_equals_clipping_before_it():
    reference, model = tiny_llama(torch.float32), tiny_llama(torch.float32)
    opt = build(model)
    opt.overlap_update(model, max_grad_norm=0.05, side=RecordingSide([]))
    losses, norms = train(reference, build(reference), 5, clip=0.05)
    model_losses = []
    for s in range(5):
        loss = model(**lm_batch(s)).loss
        loss.backward()
        opt.step()
        model_losses.append(float(loss.detach()))
        assert float(opt.last_grad_norm) == norms[s]
        opt.zero_grad()
    assert model_losses == losses and params_equal(reference, model)


def test_on_a_cpu_the_update_runs_in_step():
    reference, model = tiny_llama(torch.float32), tiny_llama(torch.float32)
    opt = build(model)
    opt.overlap_update(model, max_grad_norm=1.0)
    assert opt._overlap.side is None
    assert train(reference, build(reference), 4, clip=1.0)[0] == train(model, opt, 4)[0]
    assert params_equal(reference, model) and not opt._overlap.pending and opt.last_grad_norm is not None


def test_bad_uses_are_refused_with_the_reason():
    model = tiny_llama(torch.float32)
    opt = build(model)
    with pytest.raises(ValueError, match="does not hold this optimizer's parameters"):
        opt.overlap_update(tiny_llama(torch.float32))
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="max_grad_norm must be a number > 0"):
            opt.overlap_update(model, max_grad_norm=bad)
    opt.overlap_update(model)
    with pytest.raises(RuntimeError, match="already enabled"):
        opt.overlap_update(model)
    rounding = tiny_llama(torch.bfloat16)
    with pytest.raises(ValueError, match="measure_rounding"):
        build(rounding, measure_rounding=True).overlap_update(rounding)


@pytest.mark.parametrize("accum,gradients", [(1, "param"), (3, "param"), (2, "master")])
def test_data_parallel_all_reduce_is_left_in_flight_until_step(group, accum, gradients):  # noqa: F811
    """One gloo rank (averaging = identity): the end of backward only launches the all-reduces, step() completes them
    inside the queued update, and the numbers stay bitwise those of the plain data-parallel optimizer."""
    reference, model = tiny_llama(torch.bfloat16), tiny_llama(torch.bfloat16)
    ref_opt = build(reference, process_group=group, gradients=gradients)
    opt = build(model, process_group=group, gradients=gradients)
    opt.overlap_update(model, side=RecordingSide([]))
    sync = opt.gradient_sync
    assert sync.defer_to_step
    assert train(reference, ref_opt, 4, accum=accum) == train(model, opt, 4, accum=accum)
    assert params_equal(reference, model) and sync.reductions == ref_opt.gradient_sync.reductions == 4
    model(**lm_batch(50)).loss.backward()
    assert sync._deferred and sync.tensors_in_flight()
    opt.clip_grad_norm_(1.0)  # reads the gradients: the average is formed first
    assert not sync._deferred and sync.reductions == 5


# --- on a GPU: the real side stream ------------------------------------------------------------------------------
def gpu_pair(policy=None):
    """Twin bf16 models on the GPU with the same checkpointing policy (None: no checkpointing)."""
    from badam.hf import enable_block_checkpointing

    reference = tiny_llama(torch.bfloat16, layers=4)
    model = clone_model(reference)
    reference, model = reference.cuda(), model.cuda()
    graphs = []
    for m in (reference, model):
        if policy is not None:
            graphs.append(enable_block_checkpointing(m, policy=policy))
        m.train()
    model.layer_graphs = graphs[-1] if graphs else None  # the test reads its counts
    return reference, model


@cuda
@pytest.mark.parametrize("policy,kwargs", [(None, {}), (None, {"switch_mode": "random", "switch_block_every": 2}),
                                           ("non-reentrant", {}), ("block-graphed", {}),
                                           ("block-reentrant-graphed", {})])
def test_on_a_gpu_the_side_stream_gives_the_same_numbers(policy, kwargs):
    """12 steps (three block-epochs at K = 1): losses, clip norms and weights bitwise those of clipping before a plain
    step; the update is still queued when step() returns."""
    reference, model = gpu_pair(policy)
    ref_losses, ref_norms = train(reference, build(reference, **kwargs), 12, device="cuda", clip=0.5)
    opt = build(model, **kwargs)
    opt.overlap_update(model, max_grad_norm=0.5)
    assert opt.overlap_active
    losses, norms, queued = [], [], 0
    for s in range(12):
        batch = {key: v.cuda() for key, v in lm_batch(s).items()}
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        queued += opt._overlap.pending
        opt.zero_grad()
        losses.append(loss.detach())
        norms.append(opt.last_grad_norm.clone())  # waits for the update (for the test's sake)
    torch.cuda.synchronize()
    assert [float(x) for x in losses] == ref_losses and [float(x) for x in norms] == ref_norms
    assert params_equal(reference, model)
    assert queued == 12 and opt._overlap.launched == 12


@cuda
@pytest.mark.parametrize("policy", ["block-graphed", "block-reentrant-graphed"])
def test_on_a_gpu_the_hooked_layer_is_replayed_after_its_wait(policy):
    """Nothing reads the norm between steps, so the wait happens in the updated layer's pre-hook, called by the
    graphed policy itself before the replay (graph_safe): no layer call is left eager, and the numbers stay those of
    the plain update. 12 steps, K = 1 ascending: block 3's update is waited for in block 0's steps, above the active
    block (where block-reentrant-graphed replays the first forward)."""
    reference, model = gpu_pair(policy)
    ref_losses, _ = train(reference, build(reference), 12, device="cuda")
    opt = build(model)
    opt.overlap_update(model)
    losses = train(model, opt, 12, device="cuda")[0]
    torch.cuda.synchronize()
    opt.wait_for_update()
    assert losses == ref_losses and params_equal(reference, model)
    counts = model.layer_graphs.stats()["counts"]
    assert "not_graphable" not in counts and counts["replayed"] > 0, counts
    assert opt._overlap.waits >= 11


@cuda
def test_on_a_gpu_the_timer_waits_for_the_main_stream_only():
    from experiments.measure import StepTimer

    side = torch.cuda.Stream()
    big = torch.randn(4096, 4096, device="cuda")
    timer = StepTimer(torch.device("cuda"), stream_only=True)
    timer.start_step()
    with torch.cuda.stream(side):
        for _ in range(50):
            big = big @ big / 64.0  # ~10 ms of work on another stream
    timer.end_step()
    assert not side.query()  # end_step returned while the side stream was still busy
    timer.start_step()
    timer.end_step(everything=True)
    assert side.query()
