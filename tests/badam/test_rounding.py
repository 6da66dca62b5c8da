"""measure_rounding: what the bf16 weights keep of each block visit's update once the fp32 masters are dropped."""
import warnings

import pytest
import torch

from badam import BlockOptimizer
from badam.rounding import KEPT_WARNING_THRESHOLD

from .tiny import clone_model, params_equal, roundtrip, tiny_llama, train_steps

K = 3


def build(model, lr, *, measure=True, gradients="param", events=None, seed=5):
    return BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0),
                          list(model.named_parameters()), switch_block_every=K, switch_mode="random", verbose=0,
                          seed=seed, gradients=gradients, measure_rounding=measure,
                          log_fn=events.append if events is not None else None)


def visits(events):
    return [e for e in events if e["event"] == "visit_end"]


@pytest.mark.filterwarnings("ignore:BlockOptimizer.*kept only")
@pytest.mark.parametrize("gradients", ["param", "master"])
def test_the_measure_equals_a_direct_computation_on_the_visits_tensors(gradients):
    model = tiny_llama(dtype=torch.bfloat16)
    start = {id(p): p.detach().clone() for p in model.parameters()}
    direct = []
    opt = None

    def at_visit_end(event):
        if event["event"] != "visit_end":
            return
        # computed here, from the masters still alive, in float64: the stored and the master update of the visit
        pairs = list(zip(opt._masters.params, opt._masters.masters))
        stored = torch.cat([(p.double() - start[id(p)].double()).reshape(-1) for p, _ in pairs])
        master = torch.cat([(m.detach().double() - start[id(p)].double()).reshape(-1) for p, m in pairs])
        moved = master != 0
        direct.append({"update_kept": float(stored.norm() / master.norm()),
                       "elements_frozen": int((moved & (stored == 0)).sum()) / int(moved.sum()),
                       "elements": master.numel(), "elements_moved": int(moved.sum())})
        for p, _ in pairs:
            start[id(p)] = p.detach().clone()  # (only the visited block changed: the others keep their start)

    events = []
    opt = build(model, lr=3e-4, gradients=gradients, events=events)
    opt.log_fn = lambda e: (at_visit_end(e), events.append(e))
    train_steps(model, opt, 3 * K)
    measured = visits(events)
    assert len(measured) == len(direct) == 3
    for got, want in zip(measured, direct):
        assert got["update_kept"] == pytest.approx(want["update_kept"], rel=1e-5)
        assert got["elements_frozen"] == want["elements_frozen"]
        assert (got["elements"], got["elements_moved"]) == (want["elements"], want["elements_moved"])
        assert got["dtype"] == "bfloat16" and 0 < got["update_kept"] < 1.5
    assert [e["global_step"] for e in measured] == [K, 2 * K, 3 * K]
    assert opt.last_visit_rounding == {k: v for k, v in measured[-1].items() if k not in ("event", "block_epoch")}


def test_fp32_weights_report_nothing():
    model = tiny_llama(dtype=torch.float32)
    events = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = build(model, lr=1e-3, events=events)
        train_steps(model, opt, 2 * K + 1)
        opt.release()
    assert visits(events) == [] and opt.last_visit_rounding is None


@pytest.mark.parametrize("lr,warns", [(1e-6, True), (3e-2, False)])
def test_one_warning_when_visits_keep_less_than_the_threshold(lr, warns):
    model = tiny_llama(dtype=torch.bfloat16)
    events = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = build(model, lr=lr, events=events)
        train_steps(model, opt, 4 * K)
    kept = [e["update_kept"] for e in visits(events)]
    lost = [w for w in caught if "kept only" in str(w.message)]
    assert len(kept) == 4
    if warns:
        assert max(kept) < KEPT_WARNING_THRESHOLD  # every visit below it, one warning in all
        assert len(lost) == 1
        text = str(lost[0].message)
        assert "bfloat16" in text and "fp32" in text and "K x lr" in text and "block" in text
    else:
        assert min(kept) >= KEPT_WARNING_THRESHOLD and lost == []



@pytest.mark.filterwarnings("ignore:BlockOptimizer.*kept only")
def test_a_visit_resumed_mid_way_reports_nothing_and_one_resumed_at_its_start_reports_the_same():
    reference = tiny_llama(dtype=torch.bfloat16)
    initial = clone_model(reference)
    events = []
    train_steps(reference, build(reference, lr=3e-4, events=events), 3 * K)
    want = {e["global_step"]: e for e in visits(events)}

    for split, first_reported in ((K + 1, 3 * K), (K, 2 * K)):  # mid-visit: nothing until the next visit ends
        model = clone_model(initial)
        opt = build(model, lr=3e-4)
        train_steps(model, opt, split)
        saved = roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict()})
        resumed = tiny_llama(dtype=torch.bfloat16, seed=1)
        resumed.load_state_dict(saved["model"])
        after = []
        opt2 = build(resumed, lr=3e-4, events=after, seed=99)
        opt2.load_state_dict(saved["optimizer"])
        train_steps(resumed, opt2, 3 * K - split, first_step=split)
        got = visits(after)
        assert [e["global_step"] for e in got] == list(range(first_reported, 3 * K + 1, K))
        for e in got:
            assert e["update_kept"] == want[e["global_step"]]["update_kept"]
        assert params_equal(resumed, reference)


@pytest.mark.filterwarnings("ignore:BlockOptimizer.*kept only")
def test_off_by_default_and_measuring_changes_no_weight():
    plain = tiny_llama(dtype=torch.bfloat16)
    measured = clone_model(plain)
    events = []
    opt = BlockOptimizer(torch.optim.AdamW(plain.parameters(), lr=3e-4, weight_decay=0.0),
                         list(plain.named_parameters()), switch_block_every=K, switch_mode="random", verbose=0, seed=5,
                         log_fn=events.append)  # as build(), without measure_rounding: the default
    assert not opt.measure_rounding and "rounding_start_copy" not in opt.memory_bytes()
    opt_measured = build(measured, lr=3e-4)
    active = sum(p.numel() for p in opt_measured._active_params)
    assert opt_measured.memory_bytes()["rounding_start_copy"] == 2 * active  # bf16 start copy of the active block
    train_steps(plain, opt, 2 * K + 1)
    train_steps(measured, opt_measured, 2 * K + 1)
    assert visits(events) == [] and opt.last_visit_rounding is None
    assert params_equal(plain, measured)


@pytest.mark.filterwarnings("ignore:BlockOptimizer.*kept only")
def test_release_reports_the_visit_in_progress_and_fixed_mode_one_visit():
    model = tiny_llama(dtype=torch.bfloat16)
    events = []
    opt = BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=3e-4), list(model.named_parameters()),
                         switch_block_every=K, switch_mode="fixed", start_block=1, verbose=0,
                         log_fn=events.append, measure_rounding=True)
    train_steps(model, opt, 2 * K + 1)
    assert visits(events) == []  # fixed mode keeps its masters: the visit lasts until release()
    opt.release()
    (end,) = visits(events)
    assert end["global_step"] == 2 * K + 1 and end["block"] == 1


def test_sharded_parameters_are_refused_with_one_line():
    model = tiny_llama(dtype=torch.bfloat16)
    first = next(model.parameters())
    first._local_tensor = first.data  # what marks an FSDP2 DTensor shard to the optimizer
    with pytest.raises(ValueError, match="measure_rounding=True is not supported on FSDP2"):
        build(model, lr=1e-3)


@pytest.mark.filterwarnings("ignore:BlockOptimizerRatio")
def test_ratio_mode_measures_each_mask_period_on_its_trained_entries():
    from badam import BlockOptimizerRatio

    model = tiny_llama(dtype=torch.bfloat16)
    start = {id(p): p.detach().clone() for p in model.parameters()}
    events, direct = [], []
    opt = None

    def at_period_end(event):
        events.append(event)
        stored, master = [], []
        for entry in opt._trained:
            begin = entry.selection.gather(start[id(entry.param)].view(-1), torch.float64)
            stored.append(entry.selection.gather(entry.param.detach().view(-1), torch.float64) - begin)
            master.append(entry.master.detach().double() - begin)
        stored, master = torch.cat(stored), torch.cat(master)
        direct.append(float(stored.norm() / master.norm()))
        start.update({id(p): p.detach().clone() for p in model.parameters()})

    opt = BlockOptimizerRatio(model.parameters(), list(model.named_parameters()), update_ratio=0.5, switch_every=2,
                              verbose=0, lr=3e-4, mask_mode="scatter", seed=1, measure_rounding=True,
                              log_fn=at_period_end)
    for step in range(5):
        model(**{"input_ids": torch.arange(8).view(1, 8), "labels": torch.arange(8).view(1, 8)}).loss.backward()
        opt.clip_grad_norm_(float("inf"))
        opt.step()
        opt.zero_grad()
    assert [e["global_step"] for e in events] == [2, 4] and [e["event"] for e in events] == ["period_end"] * 2
    assert [e["update_kept"] for e in events] == pytest.approx(direct, rel=1e-5)
    assert opt.last_period_rounding["period"] == 1 and events[0]["dtype"] == "bfloat16"
