"""Optimizers and gradient clipping: 20 steps against torch.optim (1e-10 relative),
param groups, skipping, state-dict resume, validation."""
import numpy as np
import pytest

from minicnn import nn, optim

SHAPES = [(3, 4), (4,), (2, 2, 2)]

# (optimizer name, options); each runs 20 steps against torch.optim's
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6)),
    ("Adam", dict(lr=0.05, weight_decay=0.1)),
    ("Adam", dict(lr=0.05, amsgrad=True)),
    ("Adam", dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.05, weight_decay=0.3)),
    ("AdamW", dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-4)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.005, centered=True, momentum=0.7, weight_decay=0.05)),
]
CONFIG_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for name, kw in CONFIGS]


def _grad(p, step):
    """A gradient that depends on the parameter (so errors would feed back) and the step."""
    return np.sin(3 * p + step) + 0.2 * p


def _initial(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def _params(arrays):
    return [nn.Parameter(a.copy()) for a in arrays]


def _set_grads(params, step, as_grad=lambda g: g, data=lambda p: p.data):
    """Every parameter gets its gradient, except the last one on odd steps (grad None: skipped)."""
    for i, p in enumerate(params):
        skip = i == len(params) - 1 and step % 2 == 1
        p.grad = None if skip else as_grad(_grad(data(p), step))


def _groups(params, groups):
    """``groups`` None: the parameter list; else [(slice, options)] param-group dicts."""
    if groups is None:
        return params
    return [dict(params=params[s], **opts) for s, opts in groups]


def _train(name, options, steps, params, groups=None, optimizer=None, first_step=0):
    opt = optimizer or getattr(optim, name)(_groups(params, groups), **options)
    for step in range(first_step, first_step + steps):
        _set_grads(params, step)
        opt.step()
    return opt


def _against_torch(torch, name, options, groups=None, steps=20):
    init = _initial()
    mine = _params(init)
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    opt_mine = _train(name, options, steps, mine, groups)
    opt_theirs = getattr(torch.optim, name)(_groups(theirs, groups), **options)
    for step in range(steps):
        _set_grads(theirs, step, as_grad=torch.tensor, data=lambda t: t.detach().numpy())
        opt_theirs.step()
    for i, (m, t) in enumerate(zip(mine, theirs)):
        np.testing.assert_allclose(m.data, t.detach().numpy(), rtol=1e-10, atol=1e-13, err_msg=f"param {i}")
        assert not np.allclose(m.data, init[i]), "the optimizer should have moved every parameter"
        for key, value in opt_theirs.state[t].items():
            if key != "step":
                np.testing.assert_allclose(opt_mine.state[id(m)][key], value.numpy(), rtol=1e-10, atol=1e-13,
                                           err_msg=f"state {key} of param {i}")


@pytest.mark.parametrize("name, options", CONFIGS, ids=CONFIG_IDS)
def test_twenty_steps_match_torch(name, options, torch):
    _against_torch(torch, name, options)


@pytest.mark.parametrize("name, groups", [
    ("SGD", [(slice(0, 1), dict(lr=0.01)), (slice(1, None), dict(momentum=0.9, nesterov=True))]),
    ("Adam", [(slice(0, 2), dict(lr=1e-3)), (slice(2, None), dict(lr=0.05, amsgrad=True))]),
    ("AdamW", [(slice(0, 2), dict(weight_decay=0.0)), (slice(2, None), dict(lr=0.05))]),
    ("RMSprop", [(slice(0, 1), dict(lr=1e-3, centered=True)), (slice(1, None), dict(momentum=0.5))]),
])
def test_param_groups_with_their_own_options_match_torch(name, groups, torch):
    _against_torch(torch, name, dict(lr=0.02), groups=groups)


def test_plain_sgd_is_p_minus_lr_g():
    (p,) = _params(_initial()[:1])
    before = p.data.copy()
    p.grad = _grad(before, 0)
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_array_equal(p.data, before - 0.1 * _grad(before, 0))


def test_adam_first_step_moves_each_weight_by_about_lr():
    """Bias correction makes step 1 equal lr·g/(|g| + eps) for every element: about lr·sign(g)."""
    (p,) = _params(_initial()[:1])
    before = p.data.copy()
    p.grad = _grad(before, 0)
    optim.Adam([p], lr=0.01).step()
    np.testing.assert_allclose(before - p.data, 0.01 * p.grad / (np.abs(p.grad) + 1e-8), rtol=1e-12)


def test_defaults_match_torch(torch):
    for name, keys in [("SGD", ["lr", "momentum", "dampening", "weight_decay", "nesterov"]),
                       ("Adam", ["lr", "betas", "eps", "weight_decay", "amsgrad"]),
                       ("AdamW", ["lr", "betas", "eps", "weight_decay", "amsgrad"]),
                       ("RMSprop", ["lr", "alpha", "eps", "weight_decay", "momentum", "centered"])]:
        mine = getattr(optim, name)(_params(_initial())).defaults
        theirs = getattr(torch.optim, name)([torch.zeros(1, requires_grad=True)]).defaults
        assert {k: mine[k] for k in keys} == {k: theirs[k] for k in keys}, name


def test_frozen_parameters_are_skipped_even_with_a_grad():
    a, b = _params(_initial()[:2])
    b.requires_grad_(False)
    before = b.data.copy()
    a.grad, b.grad = np.ones(a.shape), np.ones(b.shape)
    optim.Adam([a, b], lr=0.1).step()
    np.testing.assert_array_equal(b.data, before)
    assert not np.array_equal(a.data, _initial()[0])


def test_zero_grad_and_add_param_group():
    a, b = _params(_initial()[:2])
    opt = optim.SGD([a], lr=0.1)
    opt.add_param_group({"params": b, "lr": 0.5})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["momentum"] == 0.0   # the default fills in
    a.grad, b.grad = np.ones(a.shape), np.ones(b.shape)
    b_before = b.data.copy()
    opt.step()
    np.testing.assert_allclose(b.data, b_before - 0.5)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


# ------------------------------------------------------------------ state dicts
@pytest.mark.parametrize("name, options", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_resume_is_bit_identical(name, options):
    groups = [(slice(0, 1), dict(lr=0.003)), (slice(1, None), {})]
    straight = _params(_initial())
    _train(name, options, 20, straight, groups)

    first = _params(_initial())
    opt = _train(name, options, 10, first, groups)
    saved_weights, saved_opt = [p.data.copy() for p in first], opt.state_dict()
    _train(name, options, 3, first, optimizer=opt, first_step=10)   # must not leak into the saved dict

    resumed = _params(saved_weights)
    fresh = getattr(optim, name)(_groups(resumed, [(slice(0, 1), dict(lr=0.9)), (slice(1, None), {})]), **options)
    fresh.load_state_dict(saved_opt)
    assert fresh.param_groups[0]["lr"] == 0.003
    _train(name, options, 10, resumed, optimizer=fresh, first_step=10)
    for s, r in zip(straight, resumed):
        np.testing.assert_array_equal(r.data, s.data)


def test_state_dict_layout_refers_to_parameters_by_position():
    params = _params(_initial())
    opt = _train("Adam", {}, 1, params, groups=[(slice(0, 2), {}), (slice(2, None), dict(lr=0.1))])
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == 0.1
    assert set(sd["state"]) == {0, 1, 2} and sd["state"][0]["step"] == 1
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_loading_a_state_dict_of_other_groups_is_a_value_error():
    opt = _train("SGD", dict(momentum=0.9), 1, _params(_initial()))
    other = optim.SGD([{"params": _params(_initial())[:1]}, {"params": _params(_initial())[1:]}], momentum=0.9)
    with pytest.raises(ValueError, match="parameter groups"):
        other.load_state_dict(opt.state_dict())


# ------------------------------------------------------------------- validation
@pytest.mark.parametrize("make, match", [
    (lambda ps: optim.SGD(ps, lr=-1), "learning rate"),
    (lambda ps: optim.SGD(ps, nesterov=True), "Nesterov"),
    (lambda ps: optim.SGD(ps, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), "betas"),
    (lambda ps: optim.Adam([{"params": ps, "momentum": 0.9}]), "unknown options"),
    (lambda ps: optim.RMSprop([{"params": ps[:2]}, {"params": ps[1:]}]), "more than one"),
    (lambda ps: optim.AdamW([]), "empty"),
])
def test_bad_optimizer_arguments_raise_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make(_params(_initial()))


# --------------------------------------------------------------------- clipping
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, np.inf])
def test_clip_grad_norm_matches_torch(max_norm, norm_type, torch):
    mine = _params(_initial())
    theirs = [torch.tensor(a, requires_grad=True) for a in _initial()]
    _set_grads(mine, 1)
    _set_grads(theirs, 1, as_grad=torch.tensor, data=lambda t: t.detach().numpy())
    total = optim.clip_grad_norm_(mine, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert total == pytest.approx(expected.item(), rel=1e-12)
    for m, t in zip(mine, theirs):
        if t.grad is None:
            assert m.grad is None
        else:
            np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)
    if max_norm < total:
        clipped = optim.clip_grad_norm_(mine, np.inf, norm_type)
        assert clipped == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_value_matches_torch(torch):
    mine = _params(_initial())
    theirs = [torch.tensor(a, requires_grad=True) for a in _initial()]
    _set_grads(mine, 0)
    _set_grads(theirs, 0, as_grad=torch.tensor, data=lambda t: t.detach().numpy())
    optim.clip_grad_value_(mine, 0.3)
    torch.nn.utils.clip_grad_value_(theirs, 0.3)
    for m, t in zip(mine, theirs):
        np.testing.assert_array_equal(m.grad, t.grad.numpy())
    assert max(np.abs(m.grad).max() for m in mine) == 0.3


def test_clipping_a_single_tensor_and_no_grads():
    (p,) = _params(_initial()[:1])
    assert optim.clip_grad_norm_(p, 1.0) == 0.0
    p.grad = np.full(p.shape, 10.0)
    total = optim.clip_grad_norm_(p, 1.0)
    assert total == pytest.approx(10 * np.sqrt(p.size))
    assert np.linalg.norm(p.grad) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("name, options", [("SGD", dict(momentum=0.9)), ("Adam", dict(amsgrad=True)),
                                           ("RMSprop", dict(momentum=0.5, centered=True))])
def test_a_state_that_does_not_fit_changes_nothing(name, options):
    """Every array of a parameter's state must have the parameter's shape (the Adam kernel
    indexes them by its size), and every entry a step needs must be there."""
    saved = _train(name, options, 2, _params(_initial())).state_dict()
    params = _params(_initial(1))
    opt = getattr(optim, name)(params, lr=0.5, **options)
    key = next(k for k, v in saved["state"][0].items() if isinstance(v, np.ndarray))
    cases = [({**saved["state"][0], key: np.zeros(1)}, rf"parameter 0: '{key}' has shape \(1,\)"),
             ({**saved["state"][0], key: saved["state"][0][key] + 1j}, "complex128")]
    if len(saved["state"][0]) > 1:   # an empty state is a parameter never stepped: fine
        cases.append(({k: v for k, v in saved["state"][0].items() if k != key}, rf"lacks \['{key}'\]"))
    for entries, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict({**saved, "state": {**saved["state"], 0: entries}})
        assert opt.state == {} and opt.param_groups[0]["lr"] == 0.5
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == saved["param_groups"][0]["lr"]
    assert all(np.array_equal(opt.state[id(params[0])][k], v) for k, v in saved["state"][0].items())


def test_load_state_dict_accepts_initial_lr_and_refuses_unknown_options():
    """A scheduler stores 'initial_lr' in the groups; any other option the optimizer does not
    have is a corrupt or foreign state."""
    p = nn.Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=0.1)
    saved = opt.state_dict()
    opt.load_state_dict({**saved, "param_groups": [{**saved["param_groups"][0], "initial_lr": 0.1}]})
    with pytest.raises(ValueError, match="unknown option 'momentun'"):
        opt.load_state_dict({**saved, "param_groups": [{**saved["param_groups"][0], "momentun": 0.9}]})
