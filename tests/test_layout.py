"""Channels-last memory behind NCHW shapes (``minicnn.fast.layout.nhwc``): the GEMM
convolutions write their output and input gradient that way, and convolution, batch
norm, ReLU, 2x2 max pooling, global average pooling, padding and indexing work in it.
The layout must never change a value beyond rounding: each op is checked against the
same op on a C-ordered copy of its input, bit for bit where the arithmetic is the same
and to float64 rounding where only the summation order differs."""
import numpy as np
import pytest

from minicnn import ops, tensor
from minicnn.fast import conv2d_fused
from minicnn.fast.conv import plan as plan_mod
from minicnn.fast.layout import channels_last, nhwc


def as_channels_last(a):
    """The same (N, C, H, W) values in channels-last memory."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def run(fn, x, g, *params):
    """fn's output and the gradients of x and params for the output gradient g."""
    xt = tensor(x, requires_grad=True)
    pt = [tensor(p, requires_grad=True) for p in params]
    y = fn(xt, *pt)
    y.backward(g)
    return y.data, [xt.grad] + [p.grad for p in pt]


def test_layout_helpers():
    x = np.zeros((2, 3, 4, 5))
    assert nhwc(x) is None and not channels_last(x)
    cl = as_channels_last(x)
    assert nhwc(cl).shape == (2, 4, 5, 3) and channels_last(cl)
    assert channels_last(cl[:, :, ::2, ::2]) and nhwc(cl[:, :, ::2, ::2]) is None   # strided, not dense


@pytest.mark.parametrize("route", ["im2row", "rowtaps", "winograd", "pointwise", "im2col", "depthwise"])
@pytest.mark.parametrize("g_layout", ["C", "channels-last"])
def test_conv_same_bits_in_either_layout(route, g_layout, monkeypatch, rng):
    """Input in C order or channels-last, output gradient in either: the same values and
    gradients, bit for bit (the GEMMs see the same operands) -- except im2col's weight
    gradient from a channels-last output gradient, which BLAS gets as a transposed operand
    and so sums in another order: there to float32 rounding.  Output and input gradient
    are channels-last except for depthwise convolutions (and im2col's NCHW input gradient)."""
    C, O, k, groups = {"im2row": (4, 6, 3, 1), "rowtaps": (4, 6, 3, 1), "winograd": (4, 6, 3, 1),
                       "pointwise": (4, 6, 1, 1),
                       "im2col": (2, 5, 3, 1), "depthwise": (4, 4, 3, 4)}[route]
    monkeypatch.setattr(plan_mod, "chunk_images", lambda n, _: 2)      # several chunks, one ragged
    x = rng.standard_normal((5, C, 7, 6)).astype(np.float32)
    w = rng.standard_normal((O, C // groups, k, k)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    conv = lambda x, w, b: ops.conv2d(x, w, b, padding=k // 2, groups=groups, route=route)  # noqa: E731
    g = rng.standard_normal((5, O, 7, 6)).astype(np.float32)
    g2 = as_channels_last(g) if g_layout == "channels-last" else g
    y_c, grads_c = run(conv, x, g, w, b)
    y_l, grads_l = run(conv, as_channels_last(x), g2, w, b)
    np.testing.assert_array_equal(y_l, y_c)
    for i, (got, want) in enumerate(zip(grads_l, grads_c)):
        if route == "im2col" and g_layout == "channels-last" and i == 1:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        else:
            np.testing.assert_array_equal(got, want)
    assert channels_last(y_c) == (route != "depthwise")
    assert channels_last(grads_c[0]) == (route not in ("depthwise", "im2col"))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_channels_last_matches_c_order(training, rng):
    """The column kernels (channels-last) against the row kernels: float64 values and
    gradients to rounding, the running statistics too; the output stays channels-last."""
    x = rng.standard_normal((6, 5, 7, 9)) * 3 + 10            # an offset the shifted sums must absorb
    g = rng.standard_normal(x.shape)
    weight, bias = rng.standard_normal(5), rng.standard_normal(5)
    results = []
    for data, grad in ((x, g), (as_channels_last(x), as_channels_last(g))):
        rm, rv = np.linspace(0, 1, 5), np.linspace(1, 2, 5)
        fn = lambda x, w, b: ops.batch_norm(x, rm, rv, w, b, training=training)  # noqa: E731
        y, grads = run(fn, data, grad, weight, bias)
        results.append((y, grads, rm, rv))
    (y_c, grads_c, rm_c, rv_c), (y_l, grads_l, rm_l, rv_l) = results
    assert channels_last(y_l) and not channels_last(y_c)
    np.testing.assert_allclose(y_l, y_c, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_l, grads_c):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(rm_l, rm_c, rtol=1e-13)
    np.testing.assert_allclose(rv_l, rv_c, rtol=1e-13)


def test_batch_norm_channels_last_float32_large_offset(rng):
    """float32 channels-last input far from zero: the statistics still come out right."""
    x = (rng.standard_normal((8, 3, 16, 16)) + 1000).astype(np.float32)
    y = ops.batch_norm(tensor(as_channels_last(x)), None, None, training=True).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=2e-3)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1, atol=2e-3)


@pytest.mark.parametrize("op", ["relu", "max_pool_2x2", "global_avg", "pad", "getitem"])
def test_layout_preserving_ops_match_c_order(op, rng):
    """The same values and gradients from a channels-last input (bit for bit; the global
    mean to rounding, its sum runs in another order), with ties, zeros and a NaN in the
    max pool's windows; the output keeps the channels-last layout."""
    x = rng.integers(-3, 4, (3, 4, 7, 6)).astype(np.float64)     # ties and zeros
    x[0, 1, 2, 3] = np.nan
    fns = {"relu": ops.relu, "max_pool_2x2": lambda x: ops.max_pool2d(x, 2),
           "global_avg": lambda x: ops.adaptive_avg_pool2d(x, 1),
           "pad": lambda x: ops.pad(x, ((0, 0), (1, 2), (0, 0), (0, 0)), value=0.5),
           "getitem": lambda x: x[:, :, ::2, ::2]}
    fn = fns[op]
    shape = fn(tensor(x)).shape
    g = rng.standard_normal(shape)
    y_c, (gx_c,) = run(fn, x, g)
    y_l, (gx_l,) = run(fn, as_channels_last(x), as_channels_last(g) if len(shape) == 4 and shape[2] > 1 else g)
    if op == "global_avg":
        np.testing.assert_allclose(y_l, y_c, rtol=1e-15)
    else:
        np.testing.assert_array_equal(y_l, y_c)
        assert channels_last(y_l)
    np.testing.assert_array_equal(gx_l, gx_c)
    assert channels_last(gx_l)


def test_relu_gradient_in_the_other_layout(rng):
    """A C-ordered output gradient for a channels-last ReLU (and the reverse) is moved, not misread."""
    x = rng.standard_normal((2, 3, 4, 5))
    g = rng.standard_normal(x.shape)
    _, (want,) = run(ops.relu, x, g)
    _, (got,) = run(ops.relu, as_channels_last(x), g)
    np.testing.assert_array_equal(got, want)
    _, (got,) = run(ops.relu, x, as_channels_last(g))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("route", ["im2row", "rowtaps", "winograd", "pointwise", "im2col", "depthwise"])
@pytest.mark.parametrize("res_layout", ["C", "channels-last"])
def test_conv_inference_epilogue_equals_separate_ops(route, res_layout, monkeypatch, rng):
    """conv2d(..., scale, residual, activation) applies act(conv·scale + bias + residual) per
    chunk in cache (the raw result in a worker's scratch): the separate ops' values in
    float64, on every route, with the residual in either layout, each part optional."""
    C, O, k, groups = {"im2row": (4, 6, 3, 1), "rowtaps": (4, 6, 3, 1), "winograd": (4, 6, 3, 1),
                       "pointwise": (4, 6, 1, 1),
                       "im2col": (2, 5, 3, 1), "depthwise": (4, 4, 3, 4)}[route]
    monkeypatch.setattr(plan_mod, "chunk_images", lambda n, _: 2)      # several chunks, one ragged
    x = as_channels_last(rng.standard_normal((5, C, 7, 6)))
    w, b, s = rng.standard_normal((O, C // groups, k, k)), rng.standard_normal(O), rng.standard_normal(O)
    r = rng.standard_normal((5, O, 7, 6))
    r = as_channels_last(r) if res_layout == "channels-last" else r
    w = w * 3                                    # outputs beyond 6, for ReLU6
    y = ops.conv2d(tensor(x), tensor(w), padding=k // 2, groups=groups, route="reference").data
    clamp = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0), "relu6": lambda v: np.clip(v, 0, 6)}
    cases = [(s, b, r, "relu"), (s, None, None, None), (None, b, r, "relu6"), (None, None, None, "relu")]
    for scale, bias, res, act in cases:
        want = y * (1 if scale is None else scale[:, None, None]) + (0 if bias is None else b[:, None, None])
        want = clamp[act](want + (0 if res is None else res))
        got = conv2d_fused(tensor(x), tensor(w), None if bias is None else tensor(bias), padding=k // 2,
                           groups=groups, scale=scale, residual=res, activation=act, route=route).data
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert channels_last(got) == (route != "depthwise")
