"""Losses: cross_entropy (class-index and probability targets, label smoothing, class
weights, ignore_index, reductions, spatial dims), nll_loss, BCE-with-logits
(pos_weight, weight), mse_loss.  Forward vs a NumPy reference written here from the
definitions, gradient vs finite differences, extreme logits, and vs torch."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minicnn import ops, tensor
from minicnn.gradcheck import gradcheck
from minicnn.testing import arrays, shapes

REDUCTIONS = ["mean", "sum", "none"]


def _reduce(per_item, reduction, denominator):
    if reduction == "none":
        return per_item
    return per_item.sum() / (denominator if reduction == "mean" else 1.0)


def _rows(a):
    """(N, C, d...) -> (N·d..., C)."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _log_softmax(rows):
    shifted = rows - rows.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def reference_cross_entropy(x, target, weight, reduction, label_smoothing, ignore_index, from_logits=True):
    """PyTorch's definition: (1-ε)·weighted NLL + ε·(-Σ_c w_c ℓ_c / C), weighted-mean denominator."""
    n, c = x.shape[:2]
    logp = _log_softmax(_rows(x)) if from_logits else _rows(x)
    w = np.ones(c) if weight is None else weight
    if np.issubdtype(target.dtype, np.floating):
        t = _rows(target) * (1 - label_smoothing) + label_smoothing / c
        per_item, denominator = -(t * w * logp).sum(1), len(logp)
    else:
        t = target.reshape(-1)
        keep = t != ignore_index
        cls = np.where(keep, t, 0)
        nll = -w[cls] * logp[np.arange(len(cls)), cls]
        smooth = -(w * logp).sum(1) / c
        per_item = np.where(keep, (1 - label_smoothing) * nll + label_smoothing * smooth, 0.0)
        denominator = w[cls][keep].sum()
    return _reduce(per_item.reshape((n,) + x.shape[2:]), reduction, denominator)


@st.composite
def ce_case(draw, probabilities=None):
    """Logits (N, C, d...), a target, and cross_entropy's keyword arguments."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    x = draw(arrays((n, c) + spatial, -5, 5))
    if probabilities is None:
        probabilities = draw(st.booleans())
    kwargs = dict(weight=draw(st.none() | arrays((c,), 0.1, 2.0)), reduction=draw(st.sampled_from(REDUCTIONS)),
                  label_smoothing=draw(st.sampled_from([0.0, 0.1, 0.35])), ignore_index=-100)
    if probabilities:
        target = draw(arrays(x.shape, 0.01, 1.0))
        target /= target.sum(1, keepdims=True)
    else:
        target = draw(hnp.arrays(np.int64, (n,) + spatial, elements=st.integers(0, c - 1)))
        kwargs["ignore_index"] = draw(st.sampled_from([-100, 0]))
        if draw(st.booleans()):
            target[draw(hnp.arrays(np.bool_, target.shape))] = kwargs["ignore_index"]
        assume(np.any(target != kwargs["ignore_index"]))  # an all-ignored mean is 0/0, as in torch
    return x, target, kwargs


@given(case=ce_case())
def test_cross_entropy_forward_and_gradient(case):
    x, target, kwargs = case
    t = tensor(x, requires_grad=True)
    out = ops.cross_entropy(t, target, **kwargs)
    expected = reference_cross_entropy(x, target, kwargs["weight"], kwargs["reduction"],
                                       kwargs["label_smoothing"], kwargs["ignore_index"])
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-13)
    assert gradcheck(lambda v: ops.cross_entropy(v, target, **kwargs), [t])


@given(case=ce_case())
def test_cross_entropy_vs_torch(case, against_torch, torch):
    x, target, kwargs = case
    theirs = dict(kwargs, weight=None if kwargs["weight"] is None else torch.tensor(kwargs["weight"]))
    against_torch(lambda v: ops.cross_entropy(v, target, **kwargs),
                  lambda v: torch.nn.functional.cross_entropy(v, torch.tensor(target), **theirs), x)


def test_cross_entropy_accepts_a_tensor_target(rng):
    x = rng.standard_normal((3, 4))
    y = np.array([0, 3, 1])
    a = ops.cross_entropy(tensor(x), tensor(y))
    b = ops.cross_entropy(tensor(x), y)
    assert a.item() == b.item()
    np.testing.assert_allclose(a.item(), reference_cross_entropy(x, y, None, "mean", 0.0, -100), rtol=1e-12)


def test_cross_entropy_accepts_a_tensor_class_weight(rng):
    x, y, w = rng.standard_normal((3, 4)), np.array([0, 3, 1]), rng.uniform(0.5, 2, 4)
    a = ops.cross_entropy(tensor(x), y, weight=tensor(w))
    np.testing.assert_array_equal(a.data, ops.cross_entropy(tensor(x), y, weight=w).data)


@given(case=ce_case(probabilities=False))
def test_nll_loss_forward_gradient_and_torch(case, against_torch, torch):
    x, target, kwargs = case
    del kwargs["label_smoothing"]
    logp = np.ascontiguousarray(  # torch's nll_loss2d backward wants a contiguous input
        np.moveaxis(_log_softmax(_rows(x)).reshape(x.shape[:1] + x.shape[2:] + x.shape[1:2]), -1, 1))
    t = tensor(logp, requires_grad=True)
    expected = reference_cross_entropy(logp, target, kwargs["weight"], kwargs["reduction"], 0.0,
                                       kwargs["ignore_index"], from_logits=False)
    np.testing.assert_allclose(ops.nll_loss(t, target, **kwargs).data, expected, rtol=1e-12, atol=1e-13)
    assert gradcheck(lambda v: ops.nll_loss(v, target, **kwargs), [t])
    theirs = dict(kwargs, weight=None if kwargs["weight"] is None else torch.tensor(kwargs["weight"]))
    against_torch(lambda v: ops.nll_loss(v, target, **kwargs),
                  lambda v: torch.nn.functional.nll_loss(v, torch.tensor(target), **theirs), logp)


def test_nll_of_log_softmax_equals_cross_entropy(rng):
    x = tensor(rng.standard_normal((5, 3)))
    y = np.array([0, 2, 1, 1, 0])
    np.testing.assert_allclose(ops.nll_loss(ops.log_softmax(x, dim=1), y).data, ops.cross_entropy(x, y).data,
                               rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_at_extreme_logits(dtype):
    x = tensor(np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype), requires_grad=True)
    y = np.array([0, 1, 2])
    loss = ops.cross_entropy(x, y, reduction="none")
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss.data, [0.0, 2e4, np.log(3)], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0, 0], [1, -1, 0], [1 / 3, 1 / 3, -2 / 3]], atol=1e-6)
    smoothed = ops.cross_entropy(tensor(x.data), y, label_smoothing=0.1, reduction="none")
    np.testing.assert_allclose(smoothed.data[0], 0.1 / 3 * (2e4 + 1e4), rtol=1e-6)


# ------------------------------------------------------------------------- BCE
def reference_bce(x, y, weight, pos_weight, reduction):
    """-w·[p·y·log σ(x) + (1-y)·log(1-σ(x))], with log σ(x) = -log(1 + e^(-x))."""
    p = 1.0 if pos_weight is None else pos_weight
    w = 1.0 if weight is None else weight
    per_item = w * (p * y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x))
    return _reduce(per_item, reduction, x.size)


@st.composite
def bce_case(draw):
    shape = draw(shapes(min_dims=1, max_dims=3))
    x, y = draw(arrays(shape, -6, 6)), draw(arrays(shape, 0, 1))
    if draw(st.booleans()):
        y = np.round(y)
    weight = draw(st.none() | arrays(shape, 0, 2) | arrays(shape[-1:], 0, 2))
    pos_weight = draw(st.none() | arrays(shape[-1:], 0.1, 5))
    return x, y, dict(weight=weight, pos_weight=pos_weight, reduction=draw(st.sampled_from(REDUCTIONS)))


@given(case=bce_case())
def test_bce_with_logits_forward_and_gradient(case):
    x, y, kwargs = case
    t = tensor(x, requires_grad=True)
    out = ops.binary_cross_entropy_with_logits(t, y, **kwargs)
    np.testing.assert_allclose(out.data, reference_bce(x, y, **kwargs), rtol=1e-12, atol=1e-13)
    assert gradcheck(lambda v: ops.binary_cross_entropy_with_logits(v, y, **kwargs), [t])


@given(case=bce_case())
def test_bce_with_logits_vs_torch(case, against_torch, torch):
    x, y, kwargs = case
    theirs = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    against_torch(lambda v: ops.binary_cross_entropy_with_logits(v, y, **kwargs),
                  lambda v: torch.nn.functional.binary_cross_entropy_with_logits(v, torch.tensor(y), **theirs), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_at_extreme_logits(dtype):
    x = tensor(np.array([1e4, 1e4, -1e4, -1e4], dtype), requires_grad=True)
    y = np.array([1.0, 0.0, 1.0, 0.0])
    loss = ops.binary_cross_entropy_with_logits(x, y, reduction="none", pos_weight=np.array(2.0))
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss.data, [0.0, 1e4, 2e4, 0.0], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad, [0.0, 1.0, -2.0, 0.0])


def test_bce_with_logits_is_accurate_for_confident_predictions():
    x = np.array([30.0, 40.0, -30.0, -40.0])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    loss = ops.binary_cross_entropy_with_logits(tensor(x), y, reduction="none")
    np.testing.assert_allclose(loss.data, np.log1p(np.exp(-np.abs(x))), rtol=1e-12)


# ------------------------------------------------------------------------- MSE
@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=st.data())
def test_mse_loss_forward_and_gradient(reduction, data):
    shape = data.draw(shapes(min_dims=0, max_dims=3))
    x, y = data.draw(arrays(shape)), data.draw(arrays(shape))
    tx, ty = tensor(x, requires_grad=True), tensor(y, requires_grad=True)
    out = ops.mse_loss(tx, ty, reduction=reduction)
    np.testing.assert_allclose(out.data, _reduce((x - y) ** 2, reduction, x.size), rtol=1e-14, atol=1e-15)
    assert gradcheck(lambda a, b: ops.mse_loss(a, b, reduction=reduction), [tx, ty])
    np.testing.assert_allclose(ops.mse_loss(tensor(x), y, reduction=reduction).data, out.data)


def test_mse_loss_vs_torch(against_torch, torch, rng):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    for reduction in REDUCTIONS:
        against_torch(lambda a, b: ops.mse_loss(a, b, reduction=reduction),
                      lambda a, b: torch.nn.functional.mse_loss(a, b, reduction=reduction), x, y)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, match", [
    (lambda x: ops.cross_entropy(x, np.array([0, 1]), reduction="avg"), "reduction"),
    (lambda x: ops.cross_entropy(x, np.array([0, 3])), "target class 3"),
    (lambda x: ops.cross_entropy(x, np.array([0, -1])), "target class -1"),
    (lambda x: ops.cross_entropy(x, np.array([0, 1, 2])), "shape"),
    (lambda x: ops.cross_entropy(x, np.ones((2, 2)) / 2), "probability targets"),
    (lambda x: ops.cross_entropy(x, np.array([0, 1]), weight=np.ones(2)), "class weight"),
    (lambda x: ops.cross_entropy(x, np.array([0, 1]), label_smoothing=1.5), "label_smoothing"),
    (lambda x: ops.cross_entropy(x[0], np.array([0])), r"\(N, C\)"),
    (lambda x: ops.binary_cross_entropy_with_logits(x, np.ones(3)), "target shape"),
    (lambda x: ops.binary_cross_entropy_with_logits(x, np.ones((2, 3)), reduction="all"), "reduction"),
    (lambda x: ops.mse_loss(x, np.ones((2, 3)), reduction="mean "), "reduction"),
])
def test_bad_loss_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(tensor(np.zeros((2, 3))))
