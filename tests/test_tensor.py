"""Tensor basics and the autograd engine: dtypes, backward semantics, graph lifetime, grad mode."""
import gc
import sys
import weakref

import numpy as np
import pytest

import minicnn
from minicnn import Function, Tensor, no_grad, ops, tensor


# ------------------------------------------------------------------ construction
def test_python_floats_default_to_float32():
    assert tensor([1.0, 2.0]).dtype == np.float32
    assert tensor(3.5).dtype == np.float32
    assert tensor([[1, 2]], dtype=np.float64).dtype == np.float64


def test_ndarrays_keep_their_dtype():
    assert tensor(np.zeros(3)).dtype == np.float64
    assert tensor(np.zeros(3, np.float32)).dtype == np.float32
    assert tensor(np.arange(3)).dtype == np.arange(3).dtype
    assert tensor(np.float64(2.0)).dtype == np.float64


def test_attributes_and_conversions():
    data = np.arange(6.0).reshape(2, 3)
    t = tensor(data)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.numpy() is t.data  # shared, not copied
    assert tensor([[4.0]]).item() == 4.0
    with pytest.raises(ValueError, match="one element"):
        t.item()
    assert "requires_grad=True" in repr(tensor([1.0], requires_grad=True))
    assert "requires_grad" not in repr(t)


def test_requires_grad_only_on_float_leaves():
    with pytest.raises(TypeError, match="floating"):
        tensor([1, 2], requires_grad=True)
    x = tensor([1.0], requires_grad=True)
    y = x * 2
    assert y.requires_grad and not y.is_leaf
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)
    assert x.requires_grad_(False) is x and not x.requires_grad
    assert not (x * 2).requires_grad


def test_detach_shares_data_and_cuts_the_graph():
    x = tensor([1.0, 2.0], requires_grad=True)
    y = (x * 3).detach()
    assert not y.requires_grad and y.is_leaf
    np.testing.assert_array_equal(y.data, [3.0, 6.0])


def test_comparisons_give_bool_tensors_without_grad():
    x = tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    for result, expected in [(x < 2, [1, 0, 0]), (x <= 2, [1, 1, 0]), (x > 2, [0, 0, 1]),
                             (x >= 2, [0, 1, 1]), (x == 2, [0, 1, 0]), (x != 2, [1, 0, 1]),
                             (x > tensor(np.array([0.0, 5.0, 3.0])), [1, 0, 0])]:
        assert result.dtype == np.bool_ and not result.requires_grad
        np.testing.assert_array_equal(result.data, np.array(expected, bool))


def test_truth_value_follows_numpy():
    assert not bool(tensor([1.0]) == 2.0)
    assert bool(tensor(np.array(3.0)) > 2.0)          # 0-d: no len() to fall back on
    a, b = tensor([1.0]), tensor([2.0])
    assert [a, b].index(b) == 1
    with pytest.raises(ValueError, match="ambiguous"):
        bool(tensor([1.0, 2.0]) > 0)


def test_tensors_hash_by_identity():
    a, b = tensor([1.0]), tensor([1.0])
    assert len({a, b}) == 2


def test_ndarray_on_the_left_dispatches_to_tensor():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = np.array([10.0, 20.0]) - x
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [-1.0, -1.0])


# ---------------------------------------------------------------------- backward
def test_scalar_backward_defaults_to_one_and_non_scalar_needs_grad():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    with pytest.raises(RuntimeError, match="grad argument"):
        (x * x).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * x).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        tensor([1.0]).backward()


def test_backward_with_explicit_grad_is_a_vector_jacobian_product():
    x = tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    (x * x).backward(np.array([1.0, 10.0, 100.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 40.0, 600.0])


def test_backward_on_a_leaf_accumulates_the_given_grad():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    x.backward(np.array([3.0, 4.0]))
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [6.0, 8.0])


def test_grads_accumulate_across_backward_calls_until_cleared():
    w = tensor(np.array([1.0, -2.0]), requires_grad=True)
    for _ in range(3):
        (w * w * w).sum().backward()
    np.testing.assert_array_equal(w.grad, 3 * 3 * w.data ** 2)
    w.zero_grad()
    assert w.grad is None
    (w * 2).sum().backward()
    np.testing.assert_array_equal(w.grad, [2.0, 2.0])


def test_leaf_grad_is_not_aliased_to_graph_buffers():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    g = np.array([5.0, 6.0])
    x.backward(g)
    x.grad += 1
    np.testing.assert_array_equal(g, [5.0, 6.0])


def test_backward_twice_without_retain_graph_raises():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_backward_through_a_freed_shared_subgraph_raises():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x.exp()
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2).sum().backward()


def test_retain_graph_allows_a_second_backward():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x.exp()).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * np.exp([1.0, 2.0]))


def test_ten_thousand_op_chain_backprops_without_recursion():
    limit = sys.getrecursionlimit()
    x = tensor(np.array([0.5, -1.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    assert sys.getrecursionlimit() == limit
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001 ** 10_000), rtol=1e-9)


def test_intermediate_tensors_are_released_after_backward():
    x = tensor(np.ones(3), requires_grad=True)
    mid = x * 2
    ref = weakref.ref(mid)
    out = mid.exp().sum()
    del mid
    gc.collect()
    assert ref() is not None, "the graph should hold the intermediate until backward"
    out.backward()
    gc.collect()
    assert ref() is None, "backward should free the intermediate and what its node saved"


class _CountingSquare(Function):
    """y = x²; counts backward calls."""
    calls = 0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        _CountingSquare.calls += 1
        return 2 * ctx.saved[0] * g


def test_each_node_backward_runs_once_in_a_diamond():
    _CountingSquare.calls = 0
    x = tensor(np.array([1.5, -2.0]), requires_grad=True)
    s = _CountingSquare.apply(x)           # used by four paths below
    out = (s * 2 + s * 3 + s.exp() + s).sum()
    out.backward()
    assert _CountingSquare.calls == 1
    sq = x.data ** 2
    np.testing.assert_allclose(x.grad, (6 + np.exp(sq)) * 2 * x.data)


class _Scale(Function):
    """y = factor·x + c, ``factor`` a keyword option; records needs_input_grad."""
    seen = None

    @staticmethod
    def forward(ctx, x, c, factor=1.0):
        _Scale.seen = ctx.needs_input_grad
        ctx.factor = factor
        return x * factor + c

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, g


def test_function_apply_passes_options_and_needs_input_grad():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = tensor(np.array([5.0, 5.0]))
    y = _Scale.apply(x, c, factor=2.0)
    assert _Scale.seen == (True, False)
    np.testing.assert_array_equal(y.data, [7.0, 9.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
    assert c.grad is None


class _WrongShape(Function):
    @staticmethod
    def forward(ctx, x):
        return x.sum(keepdims=True)

    @staticmethod
    def backward(ctx, g):
        return g  # should be broadcast to x's shape


def test_backward_returning_a_wrong_shape_names_the_function():
    x = tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="_WrongShape.*shape"):
        _WrongShape.apply(x).sum().backward()


def test_grad_free_inputs_get_no_grad():
    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = tensor(np.array([3.0, 4.0]))
    (x * c + c).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])
    assert c.grad is None


# ---------------------------------------------------------------------- no_grad
def test_no_grad_context_manager_records_nothing_and_restores():
    x = tensor(np.array([1.0]), requires_grad=True)
    assert minicnn.is_grad_enabled()
    with no_grad():
        assert not minicnn.is_grad_enabled()
        y = x * 2
        with no_grad():
            pass
        assert not minicnn.is_grad_enabled()
    assert minicnn.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    assert (x * 2).requires_grad


def test_no_grad_restores_after_an_exception():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("boom")
    assert minicnn.is_grad_enabled()


def test_no_grad_as_decorator():
    x = tensor(np.array([1.0]), requires_grad=True)

    @no_grad()
    def double(t):
        """Doubles."""
        return t * 2

    assert not double(x).requires_grad
    assert double.__doc__ == "Doubles." and double.__name__ == "double"
    assert minicnn.is_grad_enabled() and (x * 2).requires_grad


# ----------------------------------------------------------------------- dtypes
def _pipeline(x, w):
    """Exercises many ops; returns a scalar."""
    h = ops.linear(x, w) + 1.0
    h = ops.gelu(ops.relu(h) - 0.5 * h) / 2.0 + h ** 2
    h = ops.concatenate([h, h.exp().sqrt()], axis=1)[:, ::2].transpose()
    logits = h.reshape(2, -1)[:, :3]
    return ops.cross_entropy(logits, np.array([0, 2])) + ops.softmax(h, dim=0).var() + ops.sigmoid(h).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved_end_to_end(dtype, rng):
    x = tensor(rng.standard_normal((4, 3)).astype(dtype), requires_grad=True)
    w = tensor(rng.standard_normal((5, 3)).astype(dtype), requires_grad=True)
    loss = _pipeline(x, w)
    assert loss.dtype == dtype
    loss.backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype
    assert np.all(np.isfinite(x.grad)) and np.all(np.isfinite(w.grad))


def test_python_scalars_do_not_upcast_float32():
    x = tensor([1.0, 2.0], requires_grad=True)
    for y in (x + 1.5, 1.5 - x, x * 2, 2 / x, x ** 2, 2.0 ** x, -x, x / np.float64(3.0)):
        assert y.dtype == np.float32
