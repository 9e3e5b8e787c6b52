"""conv2d and Conv2d: forward vs a naive loop reference, gradients vs finite differences
(float64), the chunked and 1x1 paths, 'same'/'valid' padding, errors, the module, the
worker threads (same bits for any thread count), and (where torch is installed)
forward and every gradient vs torch in float64 to 1e-10."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import nn, ops, tensor
from minicnn.gradcheck import gradcheck
from minicnn.testing import Conv2dCase, conv2d_cases
from minicnn.fast.kernels import conv as kernels
from minicnn.fast import conv as fast_conv
from minicnn.fast.conv import plan as plan_mod
from minicnn.ops import conv as conv_mod
from minicnn.ops.checks import as_pair


def reference_conv(x, w, b, stride, pads, dilation, groups):
    """Nested loops over output pixels and kernel taps on an explicitly padded copy."""
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, pads, dilation
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    Ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    Og = O // groups
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            g = o // Og
            for oh in range(Ho):
                for ow in range(Wo):
                    acc = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                acc += w[o, c, i, j] * xp[n, g * Cg + c, oh * sh + i * dh, ow * sw + j * dw]
                    y[n, o, oh, ow] = acc
    return y


def conv_cases(max_side=7, winograd=False):
    """conv2d_cases; ``winograd``: only 3x3, stride 1, undilated, ungrouped (the Winograd route)."""
    if winograd:
        return conv2d_cases(max_side, kernel_sizes=(3,), strides=(1,), dilations=(1,), groups=(1,))
    return conv2d_cases(max_side)


def edge(n, c, h, w, o, kh, kw, stride=1, padding=0, bias=True, seed=0):
    """An explicit case at a geometry where the routes' bookkeeping is at its edges."""
    rng = np.random.default_rng(seed)
    s = as_pair(stride, "", "", 1)
    pads = conv_mod.conv_padding(padding, (h, w), (kh, kw), s, (1, 1))
    return Conv2dCase(rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, kh, kw)),
                      rng.standard_normal(o) if bias else None,
                      dict(stride=stride, padding=padding, dilation=1, groups=1), (s, pads, (1, 1)))


# Kernels of 2 rows (a row-taps residue class of its own), no padding, several images per chunk
# (the chunking fixture's 2-image chunks), strides that skip rows, a kernel as tall as the input.
EDGES = [edge(3, 2, 5, 6, 2, 2, 3), edge(4, 2, 4, 4, 3, 2, 2, bias=False), edge(3, 1, 6, 5, 2, 2, 2, stride=(2, 1)),
         edge(2, 2, 3, 4, 2, 3, 1), edge(3, 2, 5, 5, 2, 2, 3, padding=(1, 0)), edge(2, 3, 4, 4, 2, 3, 3, padding=1)]


def with_edges(test):
    for case in EDGES:
        test = example(case=case)(test)
    return test


@pytest.fixture(params=[None, 1, 2], ids=["one-chunk", "chunk-1-image", "chunk-2-images"])
def chunking(request, monkeypatch):
    """Run with the default chunk size, or with chunks of 1 or 2 images (ragged last chunk)."""
    if request.param is not None:
        monkeypatch.setattr(plan_mod, "chunk_images", lambda n, _: min(n, request.param))
    return request.param


ROUTE_NAMES = ["reference", "im2col", "im2row", "rowtaps", "winograd", "pointwise", "depthwise"]


@pytest.fixture(params=ROUTE_NAMES)
def route(request):
    """conv2d on the route of this name wherever it applies, and on the default choice elsewhere."""
    return routed(request.param)


def routed(name):
    def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        g = conv_mod.conv_geometry(x.data, w.data, None if b is None else b.data, stride, padding, dilation, groups)
        applies = name == "reference" or fast_conv.ROUTES[name].applies(g)
        return ops.conv2d(x, w, b, stride, padding, dilation, groups, route=name if applies else None)
    return conv2d


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the routing holds for all examples
@with_edges
@given(case=st.one_of(conv_cases(), conv_cases(winograd=True)))
def test_forward_matches_loops(route, case):
    x, w, b, kw, (s, pads, d) = case
    expected = reference_conv(x, w, b, s, pads, d, kw["groups"])
    y = route(tensor(x), tensor(w), None if b is None else tensor(b), **kw)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)
    y32 = route(tensor(x.astype(np.float32)), tensor(w.astype(np.float32)),
                None if b is None else tensor(b.astype(np.float32)), **kw)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32.data, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("chunking")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # chunks and routing hold for all examples
@with_edges
@given(case=st.one_of(conv_cases(max_side=5), conv_cases(max_side=5, winograd=True)))
def test_gradients_match_finite_differences(route, case):
    x, w, b, kw, _ = case
    inputs = [tensor(x, requires_grad=True), tensor(w, requires_grad=True)]
    if b is not None:
        inputs.append(tensor(b, requires_grad=True))
    assert gradcheck(lambda *t: route(*t, **kw), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("need", ["x", "w", "b", "xb", "wb"])
@pytest.mark.parametrize("stride", [(2, 1), 1])
def test_partial_gradients(need, stride, chunking, route):
    """Each subset of inputs requiring grad gets exactly its gradients (the others are skipped)."""
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 4, 6, 5)), rng.standard_normal((6, 4, 3, 3)), rng.standard_normal(6)
    kw = dict(stride=stride, padding="same", dilation=1, groups=1)
    full = [tensor(a, requires_grad=True) for a in (x, w, b)]
    gy = rng.standard_normal(route(*full, **kw).shape)
    route(*full, **kw).backward(gy)
    part = [tensor(a, requires_grad=k in need) for a, k in zip((x, w, b), "xwb")]
    route(*part, **kw).backward(gy)
    for f, p, k in zip(full, part, "xwb"):
        if k in need:
            np.testing.assert_allclose(p.grad, f.grad, rtol=1e-12, atol=1e-12)
        else:
            assert p.grad is None


@settings(deadline=None)
@given(st.data())
def test_im2col_same_width_fast_path_matches_a_padded_reference(data):
    """Stride 1 with Wo == W takes im2col's shifted-plane copy: every tap's columns equal
    the zero-padded image read at the tap's offset, for any kernel, dilation and padding
    (including more padding than the kernel reaches, and unequal top/bottom, left/right)."""
    kh, kw, dh, dw = (data.draw(st.integers(1, 3)) for _ in range(4))
    H, W = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    pw = data.draw(st.integers(0, dw * (kw - 1)))                    # left; right makes Wo == W
    ph, pb = data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4))
    Ho = H + ph + pb - dh * (kh - 1)
    if Ho < 1:
        pb += 1 - Ho
        Ho = 1
    x = np.random.default_rng(data.draw(st.integers(0, 999))).standard_normal((2, 2, H, W))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, pb), (pw, dw * (kw - 1) - pw)))
    want = np.stack([xp[:, :, i * dh:i * dh + Ho, j * dw:j * dw + W] for i in range(kh) for j in range(kw)], axis=2)
    cols = np.full((2, 2 * kh * kw, Ho * W), np.nan)
    kernels.im2col(x, kh, kw, 1, 1, ph, pw, dh, dw, Ho, W, cols)
    np.testing.assert_array_equal(cols, want.reshape(2, 2 * kh * kw, Ho * W))


@settings(deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 6), st.integers(-8, 8), st.integers(-6, 6))
def test_shifted_plane_stays_in_bounds_for_any_shift(H, W, Ho, row_shift, col_shift):
    """The im2col fast path's per-tap copy, shifts larger than the plane included: out[oh, ow]
    = x[oh + row_shift, ow + col_shift] or 0 outside, and nothing written past out's end."""
    x = np.arange(1.0, H * W + 1).reshape(H, W)
    xp = np.pad(x, ((8, 8 + Ho), (6, 6)))
    want = xp[8 + row_shift:8 + row_shift + Ho, 6 + col_shift:6 + col_shift + W]
    buf = np.full(Ho * W + 2 * W * 8, np.nan)
    kernels.shifted_plane(x.reshape(-1), row_shift, col_shift, Ho, W, buf[:Ho * W])
    np.testing.assert_array_equal(buf[:Ho * W].reshape(Ho, W), want)
    assert np.isnan(buf[Ho * W:]).all()


def test_pointwise_path_matches_loops():
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((7, 5, 1, 1)), rng.standard_normal(7)
    y = ops.conv2d(tensor(x), tensor(w), tensor(b))
    np.testing.assert_allclose(y.data, reference_conv(x, w, b, (1, 1), ((0, 0), (0, 0)), (1, 1), 1), rtol=1e-12)
    inputs = [tensor(a, requires_grad=True) for a in (x, w, b)]
    assert gradcheck(lambda *t: ops.conv2d(*t), inputs, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("H,k,s,d", [(7, 2, 1, 1), (7, 3, 2, 1), (8, 3, 2, 1), (9, 4, 3, 1), (6, 3, 1, 2), (5, 1, 2, 1)])
def test_same_padding_rule(H, k, s, d):
    """Output ⌈H/s⌉; the total padding (TensorFlow's rule) is split with the extra pixel after."""
    (pt, pb), _ = conv_mod.conv_padding("same", (H, H), (k, k), (s, s), (d, d))
    assert (H + pt + pb - d * (k - 1) - 1) // s + 1 == -(-H // s)
    assert pb - pt in (0, 1) and pt + pb == max((-(-H // s) - 1) * s + (k - 1) * d + 1 - H, 0)
    x = np.random.default_rng(0).standard_normal((1, 2, H, H))
    w = np.random.default_rng(1).standard_normal((3, 2, k, k))
    y = ops.conv2d(tensor(x), tensor(w), None, s, "same", d)
    np.testing.assert_allclose(y.data, reference_conv(x, w, None, (s, s), ((pt, pb), (pt, pb)), (d, d), 1),
                               rtol=1e-12, atol=1e-12)


def test_valid_padding_is_zero_padding():
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    assert ops.conv2d(tensor(x), tensor(w), padding="valid").shape == (1, 1, 3, 3)


def test_float32_stays_float32_in_every_gradient():
    rng = np.random.default_rng(3)
    ts = [tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in ((2, 3, 5, 5), (4, 3, 3, 3), (4,))]
    ops.conv2d(*ts, padding=1).sum().backward()
    assert all(t.grad.dtype == np.float32 and t.grad.shape == t.shape for t in ts)


@pytest.mark.parametrize("x_shape,w_shape,kw,err,match", [
    ((2, 3, 8, 8), (4, 2, 3, 3), {}, ValueError, "3 channels"),
    ((2, 4, 8, 8), (6, 2, 3, 3), {"groups": 4}, ValueError, "groups=4 must divide"),
    ((2, 3, 2, 8), (4, 3, 3, 3), {}, ValueError, "larger|more than the padded input"),
    ((2, 3, 4, 4), (4, 3, 3, 3), {"dilation": 3, "padding": 1}, ValueError, "more than the padded input"),
    ((3, 8, 8), (4, 3, 3, 3), {}, ValueError, "4-D input"),
    ((2, 3, 8, 8), (4, 3, 3), {}, ValueError, "4-D weight"),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"padding": "full"}, ValueError, "'valid' or 'same'"),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"stride": 0}, ValueError, "stride must be >= 1"),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"stride": (1, 2, 3)}, TypeError, "pair"),
])
def test_errors_name_the_problem(x_shape, w_shape, kw, err, match):
    with pytest.raises(err, match=match):
        ops.conv2d(tensor(np.ones(x_shape, np.float32)), tensor(np.ones(w_shape, np.float32)), **kw)


def test_dtype_errors():
    x, w = np.ones((1, 2, 4, 4), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.conv2d(tensor(x.astype(np.int64)), tensor(w))
    with pytest.raises(TypeError, match="weight dtype float64 differs"):
        ops.conv2d(tensor(x), tensor(w.astype(np.float64)))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        ops.conv2d(tensor(x), tensor(w), tensor(np.ones(2, np.float32)))


def test_inference_epilogue_errors():
    x, w = np.ones((1, 2, 4, 4), np.float32), np.ones((3, 2, 3, 3), np.float32)
    fused = minicnn.fast.conv2d_fused
    with pytest.raises(RuntimeError, match="epilogue is for inference and passes no gradient"):
        fused(tensor(x, requires_grad=True), tensor(w), activation="relu")
    with pytest.raises(ValueError, match="activation must be None, 'relu' or 'relu6', got 'gelu'"):
        fused(tensor(x), tensor(w), activation="gelu")
    with pytest.raises(ValueError, match=r"scale must have shape \(3,\), got \(2,\)"):
        fused(tensor(x), tensor(w), scale=np.ones(2))
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(1, 3, 2, 2\), got \(1, 3, 4, 4\)"):
        fused(tensor(x), tensor(w), residual=np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(TypeError, match="residual dtype float64 differs from input dtype float32"):
        fused(tensor(x), tensor(w), residual=np.ones((1, 3, 2, 2)))
    for extra in ({"scale": np.ones(3)}, {"residual": np.ones((1, 3, 2, 2), np.float32)}):
        with pytest.raises(RuntimeError, match=r"gradients flow only through pool\(act\(conv \+ bias\)\)"):
            fused(tensor(x), tensor(w, requires_grad=True), activation="relu", pool=2, **extra)
    with minicnn.no_grad():                        # no gradient wanted: fine
        assert fused(tensor(x, requires_grad=True), tensor(w), activation="relu").shape == (1, 3, 2, 2)
    assert fused(tensor(x, requires_grad=True), tensor(w), pool=2).requires_grad     # pooled: gradients flow


@pytest.mark.parametrize("scales, residual", [("mixed", True), ("mixed", False), ("positive", False)])
@pytest.mark.parametrize("pool", [None, 2])
@pytest.mark.parametrize("route", ["reference", "im2row", "rowtaps", "depthwise"])
def test_inference_epilogue_on_any_route_equals_the_separate_steps(route, pool, scales, residual, rng):
    """pool(act(conv(x)·scale + bias + residual)) on a route with the fused epilogue, and on
    the reference (which runs the steps one by one), equal the steps written out; with
    negative scales, pooling before the affine map would differ (the epilogue then runs
    on every value); with positive ones and no residual it runs on each window's maximum
    only; 5x5 outputs pool to 2x2 (floor)."""
    groups, C = (4, 4) if route == "depthwise" else (1, 3)
    x = rng.standard_normal((2, C, 5, 5))
    w, b, scale = rng.standard_normal((4, C // groups, 3, 3)), rng.standard_normal(4), rng.standard_normal(4)
    res = rng.standard_normal((2, 4, 5, 5)) if residual else None
    if scales == "positive":
        scale = np.abs(scale) * 4 + 0.5      # * 4: some values beyond ReLU6's 6
    want = np.clip(ops.conv2d(tensor(x), tensor(w), padding=1, groups=groups, route="reference").data
                   * scale[:, None, None] + b[:, None, None] + (0 if res is None else res), 0, 6)
    if pool:
        want = want[:, :, :4, :4].reshape(2, 4, 2, 2, 2, 2).max(axis=(3, 5))
    got = minicnn.fast.conv2d_fused(tensor(x), tensor(w), tensor(b), padding=1, groups=groups, scale=scale,
                                    residual=res, activation="relu6", pool=pool, route=route)
    np.testing.assert_allclose(got.data, want, rtol=1e-12, atol=1e-12)


def test_pooled_epilogue_propagates_nan_and_checks_its_arguments():
    x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((2, 1, 1, 1), np.float32)
    x[0, 0, 1, 2] = np.nan
    got = minicnn.fast.conv2d_fused(tensor(x), tensor(w), activation="relu", pool=2, route="im2row").data
    assert got.shape == (1, 2, 2, 2)
    assert np.isnan(got[0, :, 0, 1]).all() and not np.isnan(got[0, :, :, 0]).any()
    with pytest.raises(ValueError, match="pool must be None or 2"):
        minicnn.fast.conv2d_fused(tensor(x), tensor(w), pool=3)
    with pytest.raises(ValueError, match=r"needs an output of at least 2x2 pixels, got \(1, 4\)"):
        minicnn.fast.conv2d_fused(tensor(x[:, :, :1]), tensor(w), pool=2)


def test_route_argument_errors():
    x, w = tensor(np.ones((1, 2, 4, 4))), tensor(np.ones((3, 2, 3, 3)))
    with pytest.raises(ValueError, match="unknown route 'fft'; available: reference, "):
        ops.conv2d(x, w, route="fft")
    with pytest.raises(ValueError, match="route 'winograd' cannot run this convolution"):
        ops.conv2d(x, w, stride=2, route="winograd")


def test_module_init_shapes_and_repr():
    minicnn.manual_seed(0)
    conv = nn.Conv2d(16, 64, 3, padding="same", groups=2)
    assert conv.weight.shape == (64, 8, 3, 3) and conv.weight.dtype == np.float32
    assert np.all(conv.bias.data == 0)
    std = np.sqrt(2.0 / (8 * 9))                          # Kaiming normal, fan_in, ReLU gain
    assert abs(conv.weight.data.std() / std - 1) < 0.05
    assert set(conv.state_dict()) == {"weight", "bias"}
    assert conv(tensor(np.ones((2, 16, 5, 5), np.float32))).shape == (2, 64, 5, 5)
    assert "groups=2" in repr(conv)
    assert nn.Conv2d(3, 4, (1, 3), bias=False).bias is None
    with pytest.raises(ValueError, match="groups=3 must divide"):
        nn.Conv2d(4, 6, 3, groups=3)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(conv_cases(), conv_cases(winograd=True)))
def test_matches_torch(torch, against_torch, route, case):
    x, w, b, kw, (s, ((pt, pb), (pl, pr)), d) = case
    F = torch.nn.functional

    def torch_conv(x, w, b=None):       # explicit pad: torch's 'same' needs stride 1
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, s, 0, d, kw["groups"])

    args = (x, w) if b is None else (x, w, b)
    against_torch(lambda *t: route(*t, **kw), torch_conv, *args)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_matches_torch_same_at_stride_1(torch, against_torch):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 4, 3)), rng.standard_normal(4)
    against_torch(lambda *t: ops.conv2d(*t, padding="same", dilation=(1, 2)),
                  lambda *t: torch.nn.functional.conv2d(*t, padding="same", dilation=(1, 2)), x, w, b)


def test_static_choice_of_routes(monkeypatch):
    """Without autotuning, the rules of fast.conv.select pick the routes: depthwise and 1x1
    by their shape, Winograd for wide 3x3 stride-1 layers, im2col for thin ones, the row
    taps where each image has enough output pixels and a kernel row's weight is small."""
    monkeypatch.setenv("MINICNN_AUTOTUNE", "0")
    def chosen(x_shape, w_shape, stride=1, padding=1, groups=1):
        g = conv_mod.conv_geometry(np.empty(x_shape, np.float32), np.empty(w_shape, np.float32), None,
                                   stride, padding, 1, groups)
        return fast_conv.choose(g).name
    assert chosen((2, 8, 8, 8), (8, 1, 3, 3), groups=8) == "depthwise"
    assert chosen((2, 8, 8, 8), (16, 8, 1, 1), padding=0) == "pointwise"
    assert chosen((2, 32, 14, 14), (64, 32, 3, 3)) == "winograd"
    assert chosen((2, 1, 28, 28), (32, 1, 3, 3)) == "im2col"                   # 9 taps per window
    assert chosen((2, 16, 16, 16), (16, 16, 3, 3)) == "rowtaps"                # 256 pixels, 768 weights
    assert chosen((2, 16, 7, 7), (16, 16, 3, 3)) == "im2row"                   # 49 pixels per image
    assert chosen((2, 16, 8, 8), (16, 8, 3, 3), groups=2) == "im2row"          # grouped


def test_row_taps_need_blas_gemm(monkeypatch, rng):
    """Without a CBLAS gemm in the process (another BLAS, not Linux) the row taps do not
    apply, and the same convolution runs on im2row with the same values and gradients."""
    from minicnn.fast.conv import rowtaps
    if rowtaps.gemm(np.float32) is None:     # found wherever NumPy's wheels run on Linux (test_kernels_blas)
        pytest.skip("no CBLAS gemm found in this process's BLAS: the row taps never apply")
    x = rng.standard_normal((3, 8, 16, 9)).astype(np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    results = []
    for gemm in (rowtaps.gemm, lambda dtype: None):
        monkeypatch.setattr(rowtaps, "gemm", gemm)
        xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
        y = ops.conv2d(xt, wt, stride=(2, 1), padding=1)
        assert y.shape == (3, 4, 8, 9)
        y.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape))
        results.append((y.data, xt.grad, wt.grad))
    g = conv_mod.conv_geometry(x, w, None, (2, 1), 1, 1, 1)
    assert not fast_conv.ROUTES["rowtaps"].applies(g) and fast_conv.choose(g).name == "im2row"
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_same_bits_with_one_or_two_worker_threads(route, monkeypatch):
    """Chunks are summed in chunk order, so the thread count does not change the rounding
    (on one route: the autotuner may pick another route at another thread count)."""
    monkeypatch.setenv("MINICNN_AUTOTUNE", "0")
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((9, 6, 11, 10), (8, 6, 3, 3), (8,))]
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("MINICNN_NUM_THREADS", threads)
        ts = [tensor(a, requires_grad=True) for a in arrays]
        y = route(*ts, padding=1)
        y.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape))
        results.append([y.data] + [t.grad for t in ts])
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_parallel_for_runs_each_task_once_and_raises(monkeypatch):
    from minicnn.fast import runtime as _runtime
    monkeypatch.setenv("MINICNN_NUM_THREADS", "2")
    seen = []
    _runtime.parallel_for(37, seen.append)
    assert sorted(seen) == list(range(37))

    def fail(k):
        if k == 5:
            raise KeyError("task 5")
    with pytest.raises(KeyError, match="task 5"):
        _runtime.parallel_for(9, fail)


@pytest.mark.parametrize("workers_env", [None, "2"])
def test_blas_made_single_threaded_when_numpy_came_first(workers_env):
    """The conv workers get a single-threaded BLAS (or, where its thread count cannot be
    set, run as one worker), also when MINICNN_NUM_THREADS sets the worker count; nothing
    is applied at import, only when a fast route first runs."""
    code = ("import numpy, minicnn\nfrom minicnn.fast import runtime as _runtime\n"
            "assert _runtime.settings() is None\n"
            "workers = _runtime.num_threads()\n"
            "print(_runtime.settings()['serial_blas'], workers)")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MINICNN_NUM_THREADS")}
    if workers_env is not None:
        env["MINICNN_NUM_THREADS"] = workers_env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env).stdout.split()
    serial, workers = out[0] == "True", int(out[1])
    assert serial or workers == 1


_FAULTS = ("import resource, numpy as np, minicnn\nfrom minicnn.fast import runtime as _runtime\n"
           "_runtime.configure()\n"
           "x = np.ones(2 << 20, np.float32)\n"
           "y = x * 2\ndel y\n"  # the first one maps its pages
           "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
           "for _ in range(20):\n    y = x * 2\n    del y\n"
           "print(_runtime.settings()['malloc_tuned'], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_activations_are_reused_without_page_faults():
    """20 temporaries of 8 MiB after a first one: with minicnn's malloc settings its pages
    are reused (no page faults); an exported MALLOC_MMAP_THRESHOLD_ wins over them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    tuned, faults = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                                   env=env).stdout.split()
    if tuned != "True":
        pytest.skip("not glibc: the allocator is left alone")
    assert int(faults) < 100  # without the settings: hundreds per temporary
    user, faults = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                                  env=dict(env, MALLOC_MMAP_THRESHOLD_="131072")).stdout.split()
    assert user == "False" and int(faults) > 20 * 100
