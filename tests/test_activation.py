"""Activations and the softmax family: forward vs the NumPy formula, gradient vs finite
differences, extreme inputs, the Module forms, and forward + gradients vs torch."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import nn, ops, tensor
from minicnn.gradcheck import gradcheck
from minicnn.testing import arrays, distinct_arrays, shapes

_erf = np.vectorize(math.erf)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# name -> (minicnn fn, NumPy formula, torch fn(F, x), value strategy for a shape)
ELEMENTWISE = {
    "relu": (ops.relu, lambda x: np.maximum(x, 0), lambda F, x: F.relu(x), distinct_arrays),
    "relu6": (ops.relu6, lambda x: np.clip(x, 0, 6), lambda F, x: F.relu6(x),
              lambda s: distinct_arrays(s, spacing=0.9, avoid=(0.0, 6.0))),
    "leaky_relu": (ops.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x),
                   lambda F, x: F.leaky_relu(x), distinct_arrays),
    "leaky_relu_0.2": (lambda x: ops.leaky_relu(x, 0.2), lambda x: np.where(x > 0, x, 0.2 * x),
                       lambda F, x: F.leaky_relu(x, 0.2), distinct_arrays),
    "gelu": (ops.gelu, lambda x: x * 0.5 * (1 + _erf(x / math.sqrt(2))), lambda F, x: F.gelu(x),
             lambda s: arrays(s, -5, 5)),
    "gelu_tanh": (lambda x: ops.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
                  lambda F, x: F.gelu(x, approximate="tanh"), lambda s: arrays(s, -5, 5)),
    "sigmoid": (ops.sigmoid, lambda x: 1 / (1 + np.exp(-x)), lambda F, x: F.sigmoid(x),
                lambda s: arrays(s, -20, 20)),
    "tanh": (ops.tanh, np.tanh, lambda F, x: F.tanh(x), lambda s: arrays(s, -5, 5)),
}


@pytest.mark.parametrize("name", ELEMENTWISE)
@given(data=st.data())
def test_elementwise_forward_and_gradient(name, data):
    fn, formula, _, values = ELEMENTWISE[name]
    x = data.draw(values(data.draw(shapes(max_dims=3))))
    t = tensor(x, requires_grad=True)
    np.testing.assert_allclose(fn(t).data, formula(x), rtol=1e-14, atol=1e-15)
    assert gradcheck(fn, [t])


@pytest.mark.parametrize("name", ELEMENTWISE)
@given(data=st.data())
def test_elementwise_vs_torch(name, data, against_torch, torch):
    fn, _, torch_fn, values = ELEMENTWISE[name]
    x = data.draw(values(data.draw(shapes(max_dims=3))))
    against_torch(fn, lambda v: torch_fn(torch.nn.functional, v), x)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_keeps_float32(name, rng):
    fn = ELEMENTWISE[name][0]
    x = tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    y = fn(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_kinks_follow_torch():
    """At 0 (and 6) the subgradient is PyTorch's: relu 0, relu6 0 at both ends, leaky slope."""
    x = tensor(np.array([0.0, 6.0, -1.0, 3.0]), requires_grad=True)
    for fn, expected in [(ops.relu, [0, 1, 0, 1]), (ops.relu6, [0, 0, 0, 1]),
                         (lambda v: ops.leaky_relu(v, 0.1), [0.1, 1, 0.1, 1])]:
        x.grad = None
        fn(x).sum().backward()
        np.testing.assert_allclose(x.grad, expected)


# --------------------------------------------------------------- softmax family
SOFTMAX_FAMILY = {
    "softmax": (ops.softmax, _softmax, lambda F, x, axis: F.softmax(x, axis)),
    "log_softmax": (ops.log_softmax, lambda x, axis: np.log(_softmax(x, axis)),
                    lambda F, x, axis: F.log_softmax(x, axis)),
}


@st.composite
def softmax_case(draw):
    x = draw(arrays(shapes(min_dims=1, max_dims=3), -5, 5))
    return x, draw(st.integers(-x.ndim, x.ndim - 1))


@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
@given(case=softmax_case())
def test_softmax_family_forward_and_gradient(name, case):
    fn, formula, _ = SOFTMAX_FAMILY[name]
    x, axis = case
    t = tensor(x, requires_grad=True)
    np.testing.assert_allclose(fn(t, axis).data, formula(x, axis), rtol=1e-12, atol=1e-14)
    assert gradcheck(lambda v: fn(v, axis), [t])


@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
@given(case=softmax_case())
def test_softmax_family_vs_torch(name, case, against_torch, torch):
    fn, _, torch_fn = SOFTMAX_FAMILY[name]
    x, axis = case
    against_torch(lambda v: fn(v, axis), lambda v: torch_fn(torch.nn.functional, v, axis), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_at_extreme_logits(dtype):
    x = tensor(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype), requires_grad=True)
    s = ops.softmax(x)
    np.testing.assert_allclose(s.data, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    ls = ops.log_softmax(x)
    np.testing.assert_allclose(ls.data, [[0, -2e4, -1e4], [-math.log(3)] * 3], rtol=1e-6)
    (s * tensor(np.array([1.0, 2.0, 3.0], dtype))).sum().backward()
    assert np.all(np.isfinite(x.grad))
    x.grad = None
    ls[:, 0].sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0, 0], [2 / 3, -1 / 3, -1 / 3]], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_at_extreme_inputs(dtype):
    x = tensor(np.array([1e4, -1e4, 800.0, -800.0], dtype), requires_grad=True)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        y = ops.sigmoid(x)
        np.testing.assert_array_equal(y.data, [1, 0, 1, 0])
        y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 0, 0, 0])
    np.testing.assert_array_equal(ops.tanh(x).data, [1, -1, 1, -1])


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(tensor([1.0]), approximate="erf")


# ---------------------------------------------------------------------- modules
@pytest.mark.parametrize("module, fn", [
    (nn.ReLU(), ops.relu), (nn.ReLU6(), ops.relu6), (nn.LeakyReLU(0.3), lambda x: ops.leaky_relu(x, 0.3)),
    (nn.GELU(), ops.gelu), (nn.GELU("tanh"), lambda x: ops.gelu(x, "tanh")), (nn.Sigmoid(), ops.sigmoid),
    (nn.Tanh(), ops.tanh), (nn.Softmax(), ops.softmax), (nn.Softmax(dim=0), lambda x: ops.softmax(x, 0)),
])
def test_activation_modules_match_the_functions(module, fn, rng):
    x = tensor(rng.standard_normal((3, 4)))
    np.testing.assert_array_equal(module(x).data, fn(x).data)
    assert list(module.parameters()) == []


def test_activation_module_repr():
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(nn.ReLU()) == "ReLU()"
