"""badam/data_parallel.py in one process: a gloo group of one rank, where averaging is the identity, so a data-parallel
BlockOptimizer must train bitwise like a plain one through every path of the gradient plumbing (bf16 p.grad, fp32
accumulation sums, "master" mode, in-place and bucketed all-reduce, no_sync, parameters without gradient). The
averaging across ranks itself is compared with one process in tests/distributed/test_ddp.py (2 gloo processes)."""
from __future__ import annotations

import contextlib
import socket
import warnings

import pytest
import torch
import torch.distributed as dist

from badam import BlockOptimizer
from badam.data_parallel import BlockGradientSync, resolve_reduce_dtype

from .tiny import lm_batch, params_equal, tiny_llama


@pytest.fixture(scope="module")
def group():
    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def build(model, **kwargs):
    base = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp32 models warn about memory
        opt = BlockOptimizer(base, list(model.named_parameters()), switch_block_every=2, switch_mode="random",
                             seed=5, verbose=0, **kwargs)
    return opt


def train(model, opt, steps=5, accum=1, no_sync_first=True):
    for s in range(steps):
        for k in range(accum):
            quiet = opt.no_sync() if no_sync_first and k < accum - 1 else contextlib.nullcontext()
            with quiet:
                (model(**lm_batch(10 * s + k)).loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("dtype,gradients,accum,reduce_dtype", [
    (torch.bfloat16, "param", 1, "fp32"),    # bf16 p.grad widened into an fp32 bucket and rounded back
    (torch.bfloat16, "param", 1, "bf16"),    # bf16 p.grad all-reduced in place
    (torch.bfloat16, "param", 3, "fp32"),    # fp32 accumulation sums reduced in place, p.grad shown again
    (torch.bfloat16, "master", 2, "fp32"),   # fp32 master gradients
    (torch.float32, "param", 2, "fp32"),     # fp32 parameters are their own masters
])
def test_one_rank_trains_bitwise_like_one_process(group, dtype, gradients, accum, reduce_dtype):
    plain, parallel = tiny_llama(dtype), tiny_llama(dtype)
    train(plain, build(plain, gradients=gradients), accum=accum)
    opt = build(parallel, gradients=gradients, process_group=group, reduce_dtype=reduce_dtype)
    train(parallel, opt, accum=accum)
    assert params_equal(plain, parallel)
    assert opt.gradient_sync.reductions == 5  # one averaging per step: the last micro-batch's backward


@pytest.mark.parametrize("dtype,gradients,accum,reduce_dtype", [
    (torch.bfloat16, "param", 1, "fp32"), (torch.bfloat16, "param", 1, "bf16"), (torch.bfloat16, "param", 3, "fp32"),
    (torch.bfloat16, "param", 3, "bf16"), (torch.bfloat16, "master", 2, "fp32"), (torch.float32, "param", 2, "bf16"),
])
def test_division_by_the_world_size_rounds_like_divide_then_copy(group, dtype, gradients, accum, reduce_dtype):
    """With the group's size taken as 3, the sum over this one rank is the local gradient, so every held gradient
    must come out as (local in the wire dtype) / 3, cast back where it lives: the result of dividing the buffer in
    place and copying it back, which the fused division-into-the-gradient replaced."""
    wire = resolve_reduce_dtype(reduce_dtype)
    plain, parallel = tiny_llama(dtype), tiny_llama(dtype)
    reference, opt = build(plain, gradients=gradients), build(parallel, gradients=gradients, process_group=group,
                                                             reduce_dtype=reduce_dtype)
    opt.gradient_sync.world_size = 3
    opt.gradient_sync.record_timing = True
    for k in range(accum):
        with opt.no_sync() if k < accum - 1 else contextlib.nullcontext():
            (parallel(**lm_batch(k)).loss / accum).backward()
        (plain(**lm_batch(k)).loss / accum).backward()
    timing = opt.gradient_sync.take_timing()
    assert timing["reduce_tail_ms"] >= 0 and timing["reduce_window_ms"] >= 0
    assert opt.gradient_sync.take_timing() is None  # taken once
    masters, plain_masters = opt._masters, reference._masters
    assert len(masters.params) > 2 and opt.gradient_sync.buckets[-1] != [] and opt.gradient_sync._buckets[-1].flags
    for i in range(len(masters.params)):
        local = plain_masters.held_grad(i)
        want = (local.to(wire) / 3).to(local.dtype)
        assert torch.equal(masters.held_grad(i), want), i
        if masters.params[i].grad is not None and gradients == "param":
            assert torch.equal(masters.params[i].grad, want.to(masters.params[i].dtype)), i  # p.grad shows it


def test_averaging_every_backward_also_matches(group):
    plain, parallel = tiny_llama(), tiny_llama()
    train(plain, build(plain), accum=2)
    opt = build(parallel, process_group=group)
    train(parallel, opt, accum=2, no_sync_first=False)
    assert params_equal(plain, parallel) and opt.gradient_sync.reductions == 10


def test_a_step_after_only_no_sync_backwards_averages_there_and_warns(group):
    plain, parallel = tiny_llama(), tiny_llama()
    train(plain, build(plain), steps=2)
    opt = build(parallel, process_group=group)
    with pytest.warns(UserWarning, match="every backward since the last step ran inside no_sync"):
        for s in range(2):
            with opt.no_sync():
                parallel(**lm_batch(10 * s)).loss.backward()
            torch.nn.utils.clip_grad_norm_(parallel.parameters(), 0.5)
            opt.step()
            opt.zero_grad()
    assert params_equal(plain, parallel) and opt.gradient_sync.reductions == 2


def test_buckets_put_matrices_in_backward_order_and_vectors_last(group):
    model = tiny_llama(layers=2)
    opt = build(model, process_group=group)
    sync = opt.gradient_sync
    params = opt._masters.params
    order = [i for bucket in sync.buckets for i in bucket]
    assert sorted(order) == list(range(len(params)))
    kinds = [params[i].dim() > 1 for i in order]
    assert kinds == sorted(kinds, reverse=True)  # every matrix before every norm weight
    matrices = [i for i in order if params[i].dim() > 1]
    assert matrices == sorted(matrices, reverse=True)  # reverse registration order: down_proj first
    small = BlockGradientSync(group, bucket_numel=2048)
    small.attach(opt._masters)
    assert all(sum(params[i].numel() for i in b) <= 2048 or len(b) == 1 for b in small.buckets)
    assert len(small.buckets) > len(sync.buckets)
    small.detach()


@pytest.mark.parametrize("max_in_flight", [1, 64])
def test_pending_all_reduces_are_bounded_and_change_no_value(group, max_in_flight):
    """max_in_flight only moves when the backward waits for a bucket (the compute stream on NCCL): at most that many
    all-reduces pend between launches, and the trained weights are those of one process bit for bit."""
    plain, parallel = tiny_llama(), tiny_llama()
    train(plain, build(plain))
    opt = build(parallel)
    opt.enable_data_parallel(group, bucket_numel=2048, max_in_flight=max_in_flight)
    sync, pending = opt.gradient_sync, []
    launch = sync._launch

    def counting_launch(bucket, in_backward):
        launch(bucket, in_backward)
        pending.append(len(sync._in_flight))

    sync._launch = counting_launch
    train(parallel, opt)
    assert params_equal(plain, parallel) and sync.max_in_flight == max_in_flight
    assert len(sync.buckets) > 3 and max(pending) == min(max_in_flight + 1, len(sync.buckets))


def test_a_parameter_without_gradient_keeps_none(group):
    model = tiny_llama(layers=2)
    opt = build(model, process_group=group, active_modules=["lm_head"])
    model.lm_head.weight.requires_grad_(False)  # gets no gradient in this backward
    model(**lm_batch(0)).loss.backward()
    assert model.lm_head.weight.grad is None
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_arguments_and_misuse_give_one_clear_error(group):
    with pytest.raises(ValueError, match="reduce_dtype 'fp16' is not valid; choose one of fp32, bf16"):
        resolve_reduce_dtype("fp16")
    with pytest.raises(ValueError, match="bucket_numel must be an integer >= 1"):
        BlockGradientSync(group, bucket_numel=0)
    with pytest.raises(ValueError, match="max_in_flight must be an integer >= 1"):
        BlockGradientSync(group, max_in_flight=0)
    model = tiny_llama(layers=2)
    opt = build(model)
    model(**lm_batch(0)).loss.backward()
    opt.step()
    with pytest.raises(RuntimeError, match="before the first backward and step"):
        opt.enable_data_parallel(group)
    twice = build(tiny_llama(layers=2), process_group=group)
    with pytest.raises(RuntimeError, match="already data parallel"):
        twice.enable_data_parallel(group)
    assert twice.process_group is group and build(tiny_llama(layers=2)).process_group is None


def test_without_a_process_group_running(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="needs an initialised torch.distributed process group"):
        BlockGradientSync(None)
