"""Shape ops: reshape, transpose/permute, flatten, squeeze/unsqueeze, indexing,
concatenate/stack, pad.  Forward vs NumPy, gradient vs finite differences, and a
few cases vs torch."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minicnn import ops, tensor
from minicnn.gradcheck import gradcheck
from minicnn.testing import arrays, shapes


def _check(fn, x, expected):
    """fn(tensor(x)) equals ``expected`` exactly, and its gradient passes gradcheck."""
    t = tensor(x, requires_grad=True)
    out = fn(t)
    assert out.shape == np.shape(expected)
    np.testing.assert_array_equal(out.data, expected)
    assert gradcheck(fn, [t])


@st.composite
def reshape_case(draw):
    x = draw(arrays(shapes(max_dims=4)))
    n = x.size
    target = draw(st.sampled_from([(-1,), (1, -1), x.shape[::-1], (n, 1), (1,) + x.shape + (1,)]))
    return x, target


@given(case=reshape_case())
def test_reshape(case):
    x, target = case
    _check(lambda t: t.reshape(*target), x, x.reshape(target))
    _check(lambda t: ops.reshape(t, target), x, x.reshape(target))


@given(data=st.data())
def test_transpose_and_permute(data):
    x = data.draw(arrays(shapes(max_dims=4)))
    axes = tuple(data.draw(st.permutations(range(x.ndim))))
    _check(lambda t: t.permute(*axes), x, x.transpose(axes))
    _check(lambda t: ops.transpose(t, axes), x, x.transpose(axes))
    _check(lambda t: t.T, x, x.T)


@given(data=st.data())
def test_flatten(data):
    x = data.draw(arrays(shapes(min_dims=1, max_dims=4)))
    start = data.draw(st.integers(0, x.ndim - 1))
    end = data.draw(st.integers(start, x.ndim - 1))
    expected = x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])
    _check(lambda t: t.flatten(start, end), x, expected)
    _check(lambda t: ops.flatten(t, start - x.ndim, end - x.ndim), x, expected)  # negative dims


@given(x=arrays(shapes(max_dims=4, max_side=2)), data=st.data())
def test_squeeze_and_unsqueeze(x, data):
    _check(lambda t: t.squeeze(), x, np.squeeze(x))
    ones = [i for i, n in enumerate(x.shape) if n == 1]
    if ones:
        axis = data.draw(st.sampled_from(ones))
        _check(lambda t: t.squeeze(axis), x, np.squeeze(x, axis))
    axis = data.draw(st.integers(-x.ndim - 1, x.ndim))
    _check(lambda t: t.unsqueeze(axis), x, np.expand_dims(x, axis))


def test_squeeze_of_a_non_unit_axis_is_a_value_error():
    with pytest.raises(ValueError, match="cannot squeeze axis 1 of size 3"):
        tensor(np.ones((1, 3))).squeeze(1)


# ---------------------------------------------------------------------- indexing
@given(data=st.data())
def test_getitem_basic_indices(data):
    x = data.draw(arrays(shapes(min_dims=1, max_dims=3)))
    index = data.draw(hnp.basic_indices(x.shape, allow_newaxis=True, allow_ellipsis=True))
    _check(lambda t: t[index], x, x[index])


@given(data=st.data())
def test_getitem_integer_arrays_with_repeats(data):
    x = data.draw(arrays(shapes(min_dims=2, max_dims=3)))
    rows = np.array(data.draw(st.lists(st.integers(-x.shape[0], x.shape[0] - 1), min_size=1, max_size=6)))
    cols = np.array(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(rows), max_size=len(rows))))
    _check(lambda t: t[rows], x, x[rows])
    _check(lambda t: t[rows, cols], x, x[rows, cols])
    _check(lambda t: t[:, cols], x, x[:, cols])
    _check(lambda t: t[rows, 1:], x, x[rows, 1:])
    _check(lambda t: t[list(rows)], x, x[list(rows)])


def test_repeated_indices_accumulate_their_gradient():
    x = tensor(np.arange(4.0), requires_grad=True)
    x[np.array([0, 0, 2, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0, 0.0])


def test_getitem_with_a_bool_mask_and_with_tensor_indices(rng):
    x = rng.standard_normal((3, 4))
    mask = x > 0
    _check(lambda t: t[mask], x, x[mask])
    _check(lambda t: t[tensor(mask)], x, x[mask])
    idx = np.array([2, 0])
    _check(lambda t: t[tensor(idx), 1:3], x, x[idx, 1:3])


def test_getitem_vs_torch(against_torch, rng):
    x = rng.standard_normal((4, 5))
    idx = np.array([3, 0, 3])
    against_torch(lambda t: t[idx, 1:4], lambda t: t[idx, 1:4], x)
    against_torch(lambda t: t[1:, None, ..., 2], lambda t: t[1:, None, ..., 2], x)


# --------------------------------------------------------------- join and pad
@st.composite
def concatenate_case(draw):
    base = draw(shapes(min_dims=1, max_dims=3))
    axis = draw(st.integers(-len(base), len(base) - 1))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    parts = [draw(arrays(base[:axis % len(base)] + (n,) + base[axis % len(base) + 1:])) for n in sizes]
    return parts, axis


@given(case=concatenate_case())
def test_concatenate(case):
    parts, axis = case
    tensors = [tensor(p, requires_grad=True) for p in parts]
    out = ops.concatenate(tensors, axis=axis)
    np.testing.assert_array_equal(out.data, np.concatenate(parts, axis=axis))
    assert gradcheck(lambda *ts: ops.concatenate(ts, axis=axis), tensors)


@given(data=st.data())
def test_stack(data):
    shape = data.draw(shapes(max_dims=3))
    parts = [data.draw(arrays(shape)) for _ in range(data.draw(st.integers(1, 3)))]
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    tensors = [tensor(p, requires_grad=True) for p in parts]
    out = ops.stack(tensors, axis=axis)
    np.testing.assert_array_equal(out.data, np.stack(parts, axis=axis))
    assert gradcheck(lambda *ts: ops.stack(ts, axis=axis), tensors)


def test_concatenate_and_stack_vs_torch(against_torch, torch, rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 1))
    against_torch(lambda p, q: ops.concatenate([p, q, p], axis=-1), lambda p, q: torch.cat([p, q, p], -1), a, b)
    against_torch(lambda p, q: ops.stack([p, q], axis=1), lambda p, q: torch.stack([p, q], 1), a, a * 2)


@given(data=st.data())
def test_pad(data):
    x = data.draw(arrays(shapes(min_dims=1, max_dims=3)))
    widths = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(x.ndim))
    value = data.draw(st.floats(-2, 2))
    _check(lambda t: t.pad(widths, value), x, np.pad(x, widths, constant_values=value))
    _check(lambda t: ops.pad(t, 1), x, np.pad(x, 1))


def test_pad_vs_torch(against_torch, torch, rng):
    x = rng.standard_normal((2, 3, 4))
    # torch lists (lo, hi) from the last axis backwards
    against_torch(lambda t: ops.pad(t, ((0, 0), (1, 2), (2, 0)), value=0.5),
                  lambda t: torch.nn.functional.pad(t, (2, 0, 1, 2), value=0.5), x)


def test_shape_ops_vs_torch(against_torch, rng):
    x = rng.standard_normal((2, 1, 3, 4))
    against_torch(lambda t: t.reshape(4, -1), lambda t: t.reshape(4, -1), x)
    against_torch(lambda t: t.permute(3, 0, 2, 1), lambda t: t.permute(3, 0, 2, 1), x)
    against_torch(lambda t: t.flatten(1), lambda t: t.flatten(1), x)
    against_torch(lambda t: t.squeeze(1).unsqueeze(-1), lambda t: t.squeeze(1).unsqueeze(-1), x)


def test_stack_defaults_to_a_new_first_axis():
    a, b = tensor(np.zeros((2, 3))), tensor(np.ones((2, 3)))
    np.testing.assert_array_equal(ops.stack([a, b]).data, np.stack([a.data, b.data]))
