"""LR schedulers: PyTorch's formulas (compared with torch.optim.lr_scheduler where installed),
state dicts, warmup chaining and momentum cycling."""
import math

import numpy as np
import pytest

from minicnn.nn import Parameter
from minicnn.optim import (SGD, Adam, CosineAnnealingLR, LinearLR, MultiStepLR, OneCycleLR,
                           SequentialLR, StepLR)

# torch warns when a scheduler steps without an optimizer step; traces here need no updates
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")

CASES = {
    "step": (lambda o: StepLR(o, step_size=3, gamma=0.5), 12),
    "multistep": (lambda o: MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3), 12),
    "cosine": (lambda o: CosineAnnealingLR(o, T_max=7, eta_min=0.001), 20),
    "linear": (lambda o: LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=4), 8),
    "onecycle": (lambda o: OneCycleLR(o, max_lr=0.4, total_steps=17), 16),
    "onecycle3": (lambda o: OneCycleLR(o, max_lr=[0.4, 0.2], epochs=3, steps_per_epoch=5,
                                       pct_start=0.25, anneal_strategy="linear", three_phase=True), 14),
}


def _groups(cls, make_params, **kw):
    return cls([{"params": make_params(), "lr": 0.1}, {"params": make_params(), "lr": 0.02}], **kw)


def _mini_opt(cls=SGD):
    kw = {"momentum": 0.9} if cls is SGD else {}
    return _groups(cls, lambda: [Parameter(np.zeros(2, np.float32))], **kw)


def _trace(opt, sched, steps, key="lr"):
    out = [[g[key] for g in opt.param_groups]]
    for _ in range(steps):
        sched.step()
        out.append([g[key] for g in opt.param_groups])
    return out


def _torch_sched(torch, name, opt):
    L = torch.optim.lr_scheduler
    if name == "step":
        return L.StepLR(opt, step_size=3, gamma=0.5)
    if name == "multistep":
        return L.MultiStepLR(opt, milestones=[2, 5, 5, 9], gamma=0.3)
    if name == "cosine":
        return L.CosineAnnealingLR(opt, T_max=7, eta_min=0.001)
    if name == "linear":
        return L.LinearLR(opt, start_factor=0.1, end_factor=0.9, total_iters=4)
    if name == "onecycle":
        return L.OneCycleLR(opt, max_lr=0.4, total_steps=17)
    return L.OneCycleLR(opt, max_lr=[0.4, 0.2], epochs=3, steps_per_epoch=5, pct_start=0.25,
                        anneal_strategy="linear", three_phase=True)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_matches_torch(name, opt_name):
    torch = pytest.importorskip("torch")
    make, steps = CASES[name]
    ours = _mini_opt(SGD if opt_name == "SGD" else Adam)
    tcls = getattr(torch.optim, opt_name)
    kw = {"momentum": 0.9} if opt_name == "SGD" else {}
    theirs = _groups(tcls, lambda: [torch.nn.Parameter(torch.zeros(2))], **kw)
    got = _trace(ours, make(ours), steps)
    want = _trace(theirs, _torch_sched(torch, name, theirs), steps)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    key = "momentum" if opt_name == "SGD" else "betas"
    if name.startswith("onecycle"):  # momentum cycles inversely to the rate
        ours, theirs = _mini_opt(SGD if opt_name == "SGD" else Adam), _groups(
            tcls, lambda: [torch.nn.Parameter(torch.zeros(2))], **kw)
        got = _trace(ours, make(ours), steps, key)
        want = _trace(theirs, _torch_sched(torch, name, theirs), steps, key)
        np.testing.assert_allclose(np.array(got, float), np.array(want, float), rtol=1e-12)


def test_closed_forms_without_torch():
    opt = _mini_opt()
    s = StepLR(opt, step_size=2, gamma=0.5)
    assert _trace(opt, s, 4) == [[0.1, 0.02], [0.1, 0.02], [0.05, 0.01], [0.05, 0.01], [0.025, 0.005]]
    opt = _mini_opt()
    c = CosineAnnealingLR(opt, T_max=4)
    lrs = [row[0] for row in _trace(opt, c, 4)]
    assert lrs[0] == 0.1 and lrs[4] == pytest.approx(0.0, abs=1e-17)
    assert lrs[2] == pytest.approx(0.05)


def test_one_cycle_endpoints_and_overrun():
    opt = _mini_opt()
    s = OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.3)
    lrs = [row[0] for row in _trace(opt, s, 9)]
    assert lrs[0] == pytest.approx(1.0 / 25)
    assert max(lrs) == pytest.approx(1.0) and int(np.argmax(lrs)) == 2
    assert lrs[-1] == pytest.approx(1.0 / 25 / 1e4)
    s.step()  # step 10 == total_steps is still allowed (PyTorch's rule)
    with pytest.raises(ValueError, match="total_steps"):
        s.step()


def test_warmup_then_cosine():
    opt = _mini_opt()
    warm = LinearLR(opt, start_factor=0.25, total_iters=4)
    cos = CosineAnnealingLR(opt, T_max=6)
    seq = SequentialLR(opt, [warm, cos], milestones=[4])
    lrs = [row[0] for row in _trace(opt, seq, 10)]
    np.testing.assert_allclose(lrs[:5], [0.025, 0.04375, 0.0625, 0.08125, 0.1])
    np.testing.assert_allclose(lrs[4:], [0.1 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(7)])


def test_warmup_then_cosine_matches_torch():
    torch = pytest.importorskip("torch")
    L = torch.optim.lr_scheduler
    ours = _mini_opt()
    theirs = _groups(torch.optim.SGD, lambda: [torch.nn.Parameter(torch.zeros(2))], momentum=0.9)
    s1 = SequentialLR(ours, [LinearLR(ours, 0.2, total_iters=3), CosineAnnealingLR(ours, T_max=5)], [3])
    s2 = L.SequentialLR(theirs, [L.LinearLR(theirs, 0.2, total_iters=3), L.CosineAnnealingLR(theirs, T_max=5)], [3])
    np.testing.assert_allclose(_trace(ours, s1, 8), _trace(theirs, s2, 8), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_resumes_the_schedule(name):
    make, steps = CASES[name]
    opt = _mini_opt()
    sched = make(opt)
    full = _trace(opt, sched, steps)
    opt_a = _mini_opt()
    a = make(opt_a)
    for _ in range(steps // 2):
        a.step()
    saved_sched, saved_opt = a.state_dict(), opt_a.state_dict()
    opt_b = _mini_opt()
    b = make(opt_b)
    opt_b.load_state_dict(saved_opt)
    b.load_state_dict(saved_sched)
    rest = _trace(opt_b, b, steps - steps // 2)
    assert rest == full[steps // 2:]


def test_sequential_state_dict_restores_children():
    opt = _mini_opt()
    seq = SequentialLR(opt, [LinearLR(opt, 0.5, total_iters=2), StepLR(opt, 2)], [2])
    for _ in range(3):
        seq.step()
    state = seq.state_dict()
    opt2 = _mini_opt()
    seq2 = SequentialLR(opt2, [LinearLR(opt2, 0.5, total_iters=2), StepLR(opt2, 2)], [2])
    seq2.load_state_dict(state)
    assert seq2.last_epoch == 3 and seq2.get_last_lr() == seq.get_last_lr()


@pytest.mark.parametrize("bad", [
    lambda o: StepLR(o, step_size=0),
    lambda o: CosineAnnealingLR(o, T_max=-1),
    lambda o: LinearLR(o, start_factor=0.0),
    lambda o: OneCycleLR(o, max_lr=0.1),
    lambda o: OneCycleLR(o, max_lr=[0.1], total_steps=5),
    lambda o: OneCycleLR(o, max_lr=0.1, total_steps=5, anneal_strategy="exp"),
    lambda o: SequentialLR(o, [StepLR(o, 1)], milestones=[2]),
])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        bad(_mini_opt())


def test_needs_an_optimizer():
    with pytest.raises(TypeError, match="Optimizer"):
        StepLR([Parameter(np.zeros(1, np.float32))], step_size=1)


def test_a_scheduler_state_that_does_not_work_changes_nothing():
    opt = SGD([Parameter(np.zeros(2))], lr=1.0)
    sched = CosineAnnealingLR(opt, T_max=4)
    before = dict(sched.state_dict())
    for state, match in [({**before, "T_max": 0}, "ZeroDivisionError"),
                         ({**before, "last_epoch": 1.5}, "'last_epoch' must be an int"),
                         ({**before, "eta_min": "0"}, "'eta_min' must be a float"),
                         ({**before, "optimizer": None}, r"unexpected entries \['optimizer'\]"),
                         ({**before, "base_lrs": [1.0, 1.0]}, "'base_lrs' has 2 rates for 1 param groups")]:
        with pytest.raises(ValueError, match=match):
            sched.load_state_dict(state)
        assert sched.state_dict() == before and sched.optimizer is opt


def test_sequential_lr_starts_each_scheduler_at_its_milestone():
    """Three schedulers, milestones 2 and 5: step t runs scheduler k at t - (its milestone)."""
    opt = _mini_opt()
    parts = [LinearLR(opt, 0.25, total_iters=2), StepLR(opt, 1, gamma=0.5), CosineAnnealingLR(opt, T_max=4)]
    seq = SequentialLR(opt, parts, milestones=[2, 5])
    for step in range(9):
        k, start = (0, 0) if step < 2 else (1, 2) if step < 5 else (2, 5)
        assert seq.lr_at(step) == parts[k].lr_at(step - start), step
