"""Arithmetic, elementwise math, matmul and reductions: forward vs NumPy, gradient vs
finite differences (float64), and forward + gradients vs torch where installed."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import ops, tensor
from minicnn.gradcheck import gradcheck
from minicnn.testing import arrays, broadcastable_shapes, distinct_arrays, magnitudes, reduction_axes, shapes

# name -> (minicnn op, NumPy formula, torch op, strategy for a, strategy for b)
BINARY = {
    "add": (ops.add, np.add, lambda a, b: a + b, arrays, arrays),
    "sub": (ops.sub, np.subtract, lambda a, b: a - b, arrays, arrays),
    "mul": (ops.mul, np.multiply, lambda a, b: a * b, arrays, arrays),
    "div": (ops.div, np.divide, lambda a, b: a / b, arrays, magnitudes),
    "pow": (ops.pow, np.power, lambda a, b: a ** b,
            lambda s: magnitudes(s, 0.5, 2.0, signed=False), lambda s: arrays(s, -2.0, 2.0)),
}


def _draw_binary(data, name):
    _, _, _, a_values, b_values = BINARY[name]
    sa, sb = data.draw(broadcastable_shapes(), label="shapes")
    return data.draw(a_values(sa), label="a"), data.draw(b_values(sb), label="b")


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_op_broadcasts_forward_and_gradient(name, data):
    op, formula = BINARY[name][:2]
    a, b = _draw_binary(data, name)
    ta, tb = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    out = op(ta, tb)
    assert out.shape == np.broadcast_shapes(a.shape, b.shape)
    np.testing.assert_array_equal(out.data, formula(a, b))
    assert gradcheck(op, [ta, tb])


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_op_vs_torch(name, data, against_torch):
    op, _, torch_op = BINARY[name][:3]
    against_torch(op, torch_op, *_draw_binary(data, name))


def test_operators_dispatch_to_the_ops(rng):
    a, b = rng.uniform(0.5, 2, (2, 3)), rng.uniform(0.5, 2, (3,))
    ta, tb = tensor(a), tensor(b)
    for result, expected in [(ta + tb, a + b), (ta - tb, a - b), (ta * tb, a * b), (ta / tb, a / b),
                             (ta ** tb, a ** b), (-ta, -a), (ta @ tb, a @ b), (ta.T, a.T)]:
        np.testing.assert_array_equal(result.data, expected)


# Scalars on either side: (expression, NumPy formula); x is drawn in [0.5, 2].
SCALAR_FORMS = [
    (lambda x: x + 2.5, lambda x: x + 2.5), (lambda x: 2.5 + x, lambda x: 2.5 + x),
    (lambda x: x - 2.5, lambda x: x - 2.5), (lambda x: 2.5 - x, lambda x: 2.5 - x),
    (lambda x: x * 2.5, lambda x: x * 2.5), (lambda x: 2.5 * x, lambda x: 2.5 * x),
    (lambda x: x / 2.5, lambda x: x / 2.5), (lambda x: 2.5 / x, lambda x: 2.5 / x),
    (lambda x: x ** 3, lambda x: x ** 3), (lambda x: 2.5 ** x, lambda x: 2.5 ** x),
    (lambda x: x ** -0.5, lambda x: x ** -0.5),
]


@pytest.mark.parametrize("form", range(len(SCALAR_FORMS)))
@given(x=arrays(shapes(), 0.5, 2.0))
def test_scalar_operand_on_either_side(form, x):
    expr, formula = SCALAR_FORMS[form]
    t = tensor(x, requires_grad=True)
    np.testing.assert_allclose(expr(t).data, formula(x), rtol=1e-15)
    assert gradcheck(expr, [t])


# name -> (minicnn op, NumPy formula, torch op, value strategy)
UNARY = {
    "neg": (ops.neg, np.negative, lambda x: -x, arrays),
    "exp": (ops.exp, np.exp, lambda x: x.exp(), arrays),
    "log": (ops.log, np.log, lambda x: x.log(), lambda s: magnitudes(s, 0.1, 5.0, signed=False)),
    "sqrt": (ops.sqrt, np.sqrt, lambda x: x.sqrt(), lambda s: magnitudes(s, 0.1, 5.0, signed=False)),
    "abs": (ops.abs, np.abs, lambda x: x.abs(), distinct_arrays),
    "clip": (lambda x: ops.clip(x, -0.3, 0.4), lambda x: np.clip(x, -0.3, 0.4),
             lambda x: x.clamp(-0.3, 0.4), lambda s: distinct_arrays(s, avoid=(-0.3, 0.4))),
    "clip_min_only": (lambda x: ops.clip(x, min=0.2), lambda x: np.maximum(x, 0.2),
                      lambda x: x.clamp(min=0.2), lambda s: distinct_arrays(s, avoid=(0.2,))),
    "clip_max_only": (lambda x: x.clip(max=-0.1), lambda x: np.minimum(x, -0.1),
                      lambda x: x.clamp(max=-0.1), lambda s: distinct_arrays(s, avoid=(-0.1,))),
}


@pytest.mark.parametrize("name", UNARY)
@given(data=st.data())
def test_unary_op_forward_and_gradient(name, data):
    op, formula, _, values = UNARY[name]
    x = data.draw(values(data.draw(shapes())))
    t = tensor(x, requires_grad=True)
    np.testing.assert_array_equal(op(t).data, formula(x))
    assert gradcheck(op, [t])


@pytest.mark.parametrize("name", UNARY)
@given(data=st.data())
def test_unary_op_vs_torch(name, data, against_torch):
    op, _, torch_op, values = UNARY[name]
    against_torch(op, torch_op, data.draw(values(data.draw(shapes()))))


def test_abs_and_clip_gradients_at_the_kinks_follow_torch():
    x = tensor(np.array([0.0, -0.3, 0.4, 1.0]), requires_grad=True)
    ops.abs(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, -1.0, 1.0, 1.0])   # sign, 0 at 0
    x.grad = None
    ops.clip(x, -0.3, 0.4).sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0, 0.0])    # bounds are inside


@given(data=st.data())
def test_where_broadcasts_and_routes_the_gradient(data):
    sc, sa, sb = data.draw(broadcastable_shapes(3))
    cond = data.draw(arrays(sc)) > 0
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    ta, tb = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    out = ops.where(tensor(cond), ta, tb)
    np.testing.assert_array_equal(out.data, np.where(cond, a, b))
    assert gradcheck(lambda p, q: ops.where(cond, p, q), [ta, tb])


def test_where_vs_torch(against_torch, rng, torch):
    cond = rng.random((3, 1)) > 0.5
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    against_torch(lambda p, q: ops.where(cond, p, q), lambda p, q: torch.where(torch.tensor(cond), p, q), a, b)


def test_where_with_a_scalar_branch(rng):
    x = tensor(rng.standard_normal(5), requires_grad=True)
    y = ops.where(x.data > 0, x, 0.0)
    np.testing.assert_array_equal(y.data, np.maximum(x.data, 0))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, (x.data > 0).astype(float))


def test_astype_converts_value_and_gradient_dtypes(rng):
    x = tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
    y = x.astype(np.float64)
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 2 * x.data, rtol=1e-6)


# ------------------------------------------------------------------------ matmul
@st.composite
def matmul_operands(draw):
    """(a, b) for a @ b: batched with broadcasting batch dims, or 1-D on one side
    (1-D on both sides is :func:`test_vector_dot_vector`)."""
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(max_dims=2, max_side=3))
    kind = draw(st.sampled_from(["batched", "vector_left", "vector_right"]))
    shape_a = (k,) if kind == "vector_left" else batch_a + (m, k)
    shape_b = (k,) if kind == "vector_right" else batch_b + (k, n)
    return draw(arrays(shape_a)), draw(arrays(shape_b))


@given(ab=matmul_operands())
def test_matmul_forward_and_gradient(ab):
    a, b = ab
    ta, tb = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    np.testing.assert_allclose((ta @ tb).data, np.matmul(a, b), rtol=1e-12, atol=1e-12)
    assert gradcheck(ops.matmul, [ta, tb])


@given(ab=matmul_operands())
def test_matmul_vs_torch(ab, against_torch):
    against_torch(ops.matmul, lambda a, b: a @ b, *ab)


def test_vector_dot_vector(rng):
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    ta, tb = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    out = ta @ tb
    assert out.shape == ()
    np.testing.assert_allclose(out.data, a @ b, rtol=1e-14)
    assert gradcheck(ops.matmul, [ta, tb])


# -------------------------------------------------------------------- reductions
def _torch_dims(axis, ndim):
    """A reduction axis as torch's ``dim``, always explicit (torch reads ``dim=None`` differently per op)."""
    if axis is None:
        return tuple(range(ndim))
    return (axis,) if isinstance(axis, int) else axis


REDUCTIONS = {
    # name -> (minicnn op, NumPy formula, torch op, value strategy)
    "sum": (ops.sum, np.sum, lambda t, x, d, k: t.sum(x, d, keepdim=k), arrays),
    "mean": (ops.mean, np.mean, lambda t, x, d, k: t.mean(x, d, keepdim=k), arrays),
    "max": (ops.max, np.max, lambda t, x, d, k: t.amax(x, d, keepdim=k), distinct_arrays),
    "min": (ops.min, np.min, lambda t, x, d, k: t.amin(x, d, keepdim=k), distinct_arrays),
}


@st.composite
def reduction_case(draw, values):
    """(x, axis, keepdims), 0-d inputs included."""
    shape = draw(shapes(min_dims=0))
    return draw(values(shape)), draw(reduction_axes(len(shape))), draw(st.booleans())


@pytest.mark.parametrize("name", REDUCTIONS)
@given(data=st.data())
def test_reduction_forward_and_gradient(name, data):
    op, formula, _, values = REDUCTIONS[name]
    x, axis, keepdims = data.draw(reduction_case(values))
    t = tensor(x, requires_grad=True)
    out = op(t, axis=axis, keepdims=keepdims)
    expected = formula(x, axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(out.data, expected, rtol=1e-14, atol=1e-14)
    assert out.shape == np.shape(expected)
    assert gradcheck(lambda v: op(v, axis=axis, keepdims=keepdims), [t])


@pytest.mark.parametrize("name", REDUCTIONS)
@given(data=st.data())
def test_reduction_vs_torch(name, data, against_torch, torch):
    op, _, torch_op, values = REDUCTIONS[name]
    x, axis, keepdims = data.draw(reduction_case(values))
    dims = _torch_dims(axis, x.ndim)
    against_torch(lambda v: op(v, axis, keepdims), lambda v: torch_op(torch, v, dims, keepdims), x)


@st.composite
def var_case(draw):
    x, axis, keepdims = draw(reduction_case(arrays))
    count = x.size // max(np.prod(np.mean(x, axis=axis, keepdims=True).shape), 1)
    ddof = draw(st.integers(0, 1 if count > 1 else 0))
    return x, axis, keepdims, ddof


@given(case=var_case())
def test_var_forward_and_gradient(case):
    x, axis, keepdims, ddof = case
    t = tensor(x, requires_grad=True)
    np.testing.assert_allclose(t.var(axis, keepdims, ddof).data, np.var(x, axis=axis, keepdims=keepdims, ddof=ddof),
                               rtol=1e-12, atol=1e-14)
    assert gradcheck(lambda v: ops.var(v, axis, keepdims, ddof), [t])


@given(case=var_case())
def test_var_vs_torch(case, against_torch, torch):
    x, axis, keepdims, ddof = case
    dims = _torch_dims(axis, x.ndim)
    against_torch(lambda v: ops.var(v, axis, keepdims, ddof),
                  lambda v: torch.var(v, dims, correction=ddof, keepdim=keepdims), x)


def test_max_shares_the_gradient_among_ties_like_amax(against_torch, torch):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    out = against_torch(lambda v: ops.max(v, axis=1), lambda v: torch.amax(v, 1), x)
    np.testing.assert_array_equal(out.data, [3.0, 2.0])
    t = tensor(x, requires_grad=True)
    ops.min(t).backward()
    np.testing.assert_array_equal(t.grad, [[1.0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("name", [*REDUCTIONS, "var"])
def test_reduction_of_a_0d_tensor(name):
    x = tensor(np.array(1.5), requires_grad=True)
    out = getattr(ops, name)(x)
    assert out.shape == ()
    out.backward()
    np.testing.assert_array_equal(x.grad, 0.0 if name == "var" else 1.0)


def test_reduction_axis_out_of_range_is_a_value_error():
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        ops.sum(tensor(np.ones((2, 3))), axis=2)
    with pytest.raises(ValueError, match="axis -3"):
        tensor(np.ones((2, 3))).mean(axis=-3)
