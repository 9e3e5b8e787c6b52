"""max_pool2d, avg_pool2d, adaptive_avg_pool2d and their modules: forward vs naive loops,
gradients vs finite differences (float64, inputs without ties), the argmax tie rule,
errors, and (where torch is installed) forward and gradients vs torch in float64."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import nn, ops, tensor
from minicnn.gradcheck import gradcheck
from minicnn.testing import pool2d_cases
from minicnn.fast.kernels import pool as pool_kernels


def _axis(size, k, s, p, ceil_mode):
    """PyTorch's output length and window starts along one axis."""
    n = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n - 1) * s >= size + p:
        n -= 1
    return [o * s - p for o in range(n)]


def reference_pool(x, k, s, p, ceil_mode, kind, count_include_pad=True):
    """Loops over every output pixel; max also returns where each window's maximum is."""
    N, C, H, W = x.shape
    hs, ws = _axis(H, k[0], s[0], p[0], ceil_mode), _axis(W, k[1], s[1], p[1], ceil_mode)
    y = np.zeros((N, C, len(hs), len(ws)))
    grad_to = {}
    for n in range(N):
        for c in range(C):
            for a, h0 in enumerate(hs):
                for b, w0 in enumerate(ws):
                    cells = [(h, w) for h in range(max(h0, 0), min(h0 + k[0], H))
                             for w in range(max(w0, 0), min(w0 + k[1], W))]
                    vals = [x[n, c, h, w] for h, w in cells]
                    if kind == "max":
                        y[n, c, a, b] = max(vals)
                        grad_to[n, c, a, b] = cells[int(np.argmax(vals))]
                    else:
                        hp = min(h0 + k[0], H + p[0]) - h0
                        wp = min(w0 + k[1], W + p[1]) - w0
                        y[n, c, a, b] = sum(vals) / (hp * wp if count_include_pad else len(cells))
    return y, grad_to


def reference_adaptive(x, out_hw):
    N, C, H, W = x.shape
    Ho, Wo = out_hw
    y = np.zeros((N, C, Ho, Wo))
    for a in range(Ho):
        for b in range(Wo):
            h0, h1 = (a * H) // Ho, -(-(a + 1) * H // Ho)
            w0, w1 = (b * W) // Wo, -(-(b + 1) * W // Wo)
            y[:, :, a, b] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def _stride(stride, k):
    if stride is None:
        return k
    return (stride, stride) if isinstance(stride, int) else stride


@given(pool2d_cases())
def test_max_pool_forward_and_argmax_routing(case):
    x, k, stride, padding, ceil_mode, _ = case
    expected, grad_to = reference_pool(x, k, _stride(stride, k), padding, ceil_mode, "max")
    t = tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, k, stride, padding, ceil_mode)
    np.testing.assert_array_equal(y.data, expected)
    gy = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(gy)
    gx = np.zeros_like(x)
    for (n, c, a, b), (h, w) in grad_to.items():
        gx[n, c, h, w] += gy[n, c, a, b]
    np.testing.assert_allclose(t.grad, gx, rtol=1e-15, atol=0)


@given(pool2d_cases())
def test_avg_pool_forward(case):
    x, k, stride, padding, ceil_mode, include = case
    expected, _ = reference_pool(x, k, _stride(stride, k), padding, ceil_mode, "avg", include)
    y = ops.avg_pool2d(tensor(x), k, stride, padding, ceil_mode, include)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-14)
    y32 = ops.avg_pool2d(tensor(x.astype(np.float32)), k, stride, padding, ceil_mode, include)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32.data, expected, rtol=1e-5, atol=1e-6)


@given(pool2d_cases())
def test_gradients_match_finite_differences(case):
    x, k, stride, padding, ceil_mode, include = case
    t = tensor(x, requires_grad=True)
    # eps far below the 0.1 spacing, so no difference crosses a tie of the max
    assert gradcheck(lambda t: ops.max_pool2d(t, k, stride, padding, ceil_mode), [t], eps=1e-6, atol=1e-8)
    assert gradcheck(lambda t: ops.avg_pool2d(t, k, stride, padding, ceil_mode, include), [t], eps=1e-6, atol=1e-8)


@given(st.integers(1, 9), st.integers(1, 9), st.one_of(st.integers(1, 5), st.tuples(
    st.one_of(st.none(), st.integers(1, 5)), st.one_of(st.none(), st.integers(1, 5)))), st.integers(0, 2**32 - 1))
def test_adaptive_avg_pool(H, W, output_size, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, H, W))
    size = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    out_hw = (H if size[0] is None else size[0], W if size[1] is None else size[1])
    t = tensor(x, requires_grad=True)
    y = ops.adaptive_avg_pool2d(t, output_size)
    np.testing.assert_allclose(y.data, reference_adaptive(x, out_hw), rtol=1e-12, atol=1e-14)
    assert gradcheck(lambda t: ops.adaptive_avg_pool2d(t, output_size), [t], atol=1e-8)


def test_max_pool_ties_go_to_the_first_in_row_major_order():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, 3.0, 2.0, 2.0],
                    [5.0, 5.0, 5.0, 5.0],
                    [5.0, 5.0, 5.0, 5.0]]]])
    t = tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, 2)
    np.testing.assert_array_equal(y.data, [[[[3.0, 3.0], [5.0, 5.0]]]])
    y.sum().backward()
    np.testing.assert_array_equal(t.grad, [[[[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_2x2_kernel_matches_the_general_one(dtype):
    """The unrolled 2x2 stride-2 kernel gives the general kernel's maxima and argmaxes,
    ties (small integers) and NaNs included."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (6, 8, 8)).astype(dtype)
    x[rng.random(x.shape) < 0.05] = np.nan
    lo = 2 * np.arange(4)
    results = []
    for kernel, windows in ((pool_kernels.max_pool, (lo, lo + 2, lo, lo + 2)), (pool_kernels.max_pool_2x2, ())):
        y, argmax = np.empty((6, 4, 4), dtype), np.empty((6, 4, 4), np.int32)
        kernel(x, *windows, y, argmax)
        results.append((y, argmax))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_max_pool_propagates_nan():
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0, 1, 0] = np.nan
    assert np.isnan(ops.max_pool2d(tensor(x), 2).data).all()


def test_global_average_is_the_mean():
    x = np.random.default_rng(1).standard_normal((4, 5, 6, 7)).astype(np.float32)
    t = tensor(x, requires_grad=True)
    y = nn.GlobalAvgPool2d()(t)
    assert y.shape == (4, 5, 1, 1) and y.dtype == np.float32
    np.testing.assert_allclose(y.data[..., 0, 0], x.astype(np.float64).mean(axis=(2, 3)), rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(t.grad, np.full(x.shape, 1 / 42, np.float32))


def test_global_average_sums_float32_in_float64():
    # 4096 values near 1000: a float32 running sum drifts by ~1e-2 in the mean, while the
    # float64 sum gives the float32 mean correctly rounded (within one spacing).
    x = (1000 + np.random.default_rng(3).standard_normal((2, 3, 64, 64))).astype(np.float32)
    y = ops.adaptive_avg_pool2d(tensor(x), 1).data[..., 0, 0]
    exact = x.astype(np.float64).mean(axis=(2, 3))
    assert np.all(np.abs(y - exact) <= np.spacing(np.float32(1000)))


def test_modules():
    x = tensor(np.random.default_rng(2).standard_normal((2, 3, 9, 9)).astype(np.float32))
    assert nn.MaxPool2d(3, 2, 1)(x).shape == (2, 3, 5, 5)
    assert nn.MaxPool2d(2, ceil_mode=True)(x).shape == (2, 3, 5, 5)
    assert nn.AvgPool2d(2)(x).shape == (2, 3, 4, 4)
    assert nn.AdaptiveAvgPool2d((3, None))(x).shape == (2, 3, 3, 9)
    assert "ceil_mode=True" in repr(nn.MaxPool2d(2, ceil_mode=True))
    assert nn.MaxPool2d(2).state_dict() == {}


@pytest.mark.parametrize("fn,shape,err,match", [
    (lambda x: ops.max_pool2d(x, 2, padding=2), (1, 1, 4, 4), ValueError, "at most half"),
    (lambda x: ops.avg_pool2d(x, 5), (1, 1, 4, 4), ValueError, "larger than the padded input"),
    (lambda x: ops.max_pool2d(x, 2), (1, 4, 4), ValueError, "4-D input"),
    (lambda x: ops.max_pool2d(x, 0), (1, 1, 4, 4), ValueError, "kernel_size must be >= 1"),
    (lambda x: ops.adaptive_avg_pool2d(x, (1, 2, 3)), (1, 1, 4, 4), TypeError, "output_size"),
    (lambda x: ops.adaptive_avg_pool2d(x, 0), (1, 1, 4, 4), ValueError, "output_size must be >= 1"),
])
def test_errors_name_the_problem(fn, shape, err, match):
    with pytest.raises(err, match=match):
        fn(tensor(np.ones(shape, np.float32)))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.max_pool2d(tensor(np.ones((1, 1, 4, 4), np.int32)), 2)


@given(pool2d_cases())
def test_matches_torch(torch, against_torch, case):
    x, k, stride, padding, ceil_mode, include = case
    F = torch.nn.functional
    s = k if stride is None else stride
    against_torch(lambda t: ops.max_pool2d(t, k, stride, padding, ceil_mode),
                  lambda t: F.max_pool2d(t, k, s, padding, ceil_mode=ceil_mode), x)
    against_torch(lambda t: ops.avg_pool2d(t, k, stride, padding, ceil_mode, include),
                  lambda t: F.avg_pool2d(t, k, s, padding, ceil_mode, include), x)
    for size in [(1, 1), (2, 3), (x.shape[2], None)]:
        against_torch(lambda t: ops.adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size), x)


def test_defaults_are_torchs():
    """stride = kernel_size, no padding, floor (not ceil) of the output size (a 5x5 input pools
    2x2 windows to 2x2), padding counted in averages."""
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(ops.max_pool2d(tensor(x), 2).data, [[[[6, 8], [16, 18]]]])
    np.testing.assert_array_equal(ops.avg_pool2d(tensor(x), 2).data, [[[[3, 5], [13, 15]]]])
    np.testing.assert_array_equal(nn.AvgPool2d(2)(tensor(x)).data, [[[[3, 5], [13, 15]]]])
    np.testing.assert_array_equal(nn.MaxPool2d(2)(tensor(x)).data, [[[[6, 8], [16, 18]]]])
    corner = (0 + 1 + 5 + 6) / 9                         # zero padding counted: 4 values over 9 cells
    assert ops.avg_pool2d(tensor(x), 3, padding=1).data[0, 0, 0, 0] == corner
    assert nn.AvgPool2d(3, padding=1)(tensor(x)).data[0, 0, 0, 0] == corner


@pytest.mark.parametrize("shape", [(1, 1, 2, 8), (1, 1, 8, 2)])
def test_a_kernel_larger_than_one_side_is_an_error(shape):
    for pool in (ops.max_pool2d, ops.avg_pool2d):
        with pytest.raises(ValueError, match=r"kernel \(3, 3\) is larger than the padded input"):
            pool(tensor(np.ones(shape)), 3)
