"""Every fast route of ``minicnn.fast`` equals its reference in ``minicnn.ops``: forward,
every gradient and every side effect (running statistics), in float64 to 1e-10, on
hypothesis-drawn geometries where the route applies; the fast routes in float32 agree
with the float64 reference to float32 rounding; and the dispatch switch itself
(``reference_mode`` per thread and nested, ``MINICNN_REFERENCE=1``, route errors).

Each case runs an op twice on the same arrays: once as dispatched (a fast route, forced
where the op takes ``route=``) and once on the reference (``route="reference"`` or inside
``minicnn.reference_mode()``); the backward seed is the same fixed random array."""
import contextlib
import os
import subprocess
import sys
import threading
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import minicnn
from minicnn import fast, ops, tensor
from minicnn.fast.conv import ROUTES
from minicnn.fast.conv import plan as plan_mod
from minicnn.fast.kernels.blas import gemm
from minicnn.ops import dispatch
from minicnn.ops.conv import Conv2d, conv_geometry

RTOL = 1e-10


# ----------------------------------------------------------------------------- helpers

def seeded(shape, seed, channels_last=False):
    """Standard normal float64 array; with ``channels_last`` a 4-D one with NHWC memory."""
    a = np.random.default_rng(seed).standard_normal(shape)
    return to_channels_last(a) if channels_last else a


def to_channels_last(a):
    """The same (N, C, H, W) values with NHWC memory behind them."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def distinct(shape, seed, spacing=0.125, avoid_zero=False):
    """Values pairwise ``spacing`` apart (no ties for a max): a shuffled grid around 0; with
    ``avoid_zero`` shifted by a quarter step, so none lies within spacing/4 of 0 (ReLU's kink)."""
    n = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    values = (rng.permutation(n) - n / 2 + 0.5 + 0.25 * avoid_zero) * spacing
    return values.reshape(shape)


def run(fn, arrays, needs, seed_layout=False):
    """fn(*tensors) and the gradient of every input that ``needs`` one, for a fixed seed
    (with ``seed_layout``: a 4-D seed with NHWC memory).  None arrays pass as None."""
    ts = [None if a is None else tensor(a.copy(order="K"), requires_grad=n) for a, n in zip(arrays, needs)]
    y = fn(*ts)
    if any(t is not None and t.requires_grad for t in ts):
        seed = np.random.default_rng(7).standard_normal(y.shape)
        y.backward(to_channels_last(seed) if seed_layout and seed.ndim == 4 else seed)
    return y.data, [None if t is None or not t.requires_grad else t.grad for t in ts]


def assert_same(got, want, rtol=RTOL, scale_atol=1e-12, what="", dtype=None):
    """Forward and every gradient of ``run`` agree: same shapes, ``got`` in ``dtype``
    (default: ``want``'s), values to rtol (plus an absolute floor of ``scale_atol`` times
    the array's largest value, for entries that cancel to about zero)."""
    (y, grads), (y_ref, grads_ref) = got, want
    for name, a, b in [("forward", y, y_ref)] + [(f"gradient of input {i}", a, b)
                                                  for i, (a, b) in enumerate(zip(grads, grads_ref))]:
        assert (a is None) == (b is None), f"{what} {name}: one side has no gradient"
        if a is None:
            continue
        assert a.shape == b.shape, f"{what} {name}: shape {a.shape} != {b.shape}"
        assert a.dtype == (b.dtype if dtype is None else dtype), f"{what} {name}: dtype {a.dtype}"
        atol = scale_atol * max(1.0, float(np.abs(b).max(initial=0)))
        np.testing.assert_allclose(a, b.astype(a.dtype) if a.dtype != b.dtype else b, rtol=rtol, atol=atol,
                                   err_msg=f"{what} {name}")


def on_reference(fn):
    """fn run inside minicnn.reference_mode()."""
    def wrapped(*args):
        with minicnn.reference_mode():
            return fn(*args)
    return wrapped


def uses(op, fast_fn, key=None):
    """Assert that, outside reference mode, ``op`` dispatches to ``fast_fn`` (so the
    comparison below really is fast route against reference)."""
    assert dispatch.implementation(op, None, key) is fast_fn, f"{op} does not run {fast_fn.__name__} here"


# ----------------------------------------------------------------------- convolution

ConvCase = namedtuple("ConvCase", "N C H W O kh kw stride padding dilation groups bias needs chunk "
                                  "channels_last seed_channels_last seed")


def conv_case(N=2, C=3, H=5, W=6, O=4, kh=3, kw=3, stride=1, padding=0, dilation=1, groups=1, bias=True,
              needs=(True, True, True), chunk=None, channels_last=False, seed_channels_last=False, seed=0):
    return ConvCase(N, C, H, W, O, kh, kw, stride, padding, dilation, groups, bias, needs, chunk,
                    channels_last, seed_channels_last, seed)


def min_size(k, d, pad):
    """The smallest input side a kernel of k taps, dilation d fits into with ``pad``."""
    span = d * (k - 1) + 1
    if pad == "same":
        return 1
    p = 0 if pad == "valid" else pad
    return max(1, span - 2 * p)


@st.composite
def conv_cases(draw, route):
    """A geometry that ``route`` applies to, with the run's options."""
    groups, cin, cout = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, dilation = (1, 1), (1, 1)
    padding_choices = st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                                st.sampled_from(["same", "valid"]))
    if route == "pointwise":
        kh = kw = 1
        padding = draw(st.sampled_from([0, "valid", "same"]))
    elif route in ("winograd", "winograd4"):
        kh = kw = 3
        padding = draw(padding_choices)
    else:
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
        dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
        padding = draw(padding_choices)
        if route == "depthwise":           # one input channel per group, a channel multiplier
            groups, cin, cout = draw(st.integers(2, 4)), 1, draw(st.integers(1, 3))
        elif route == "im2row":
            groups = draw(st.integers(1, 3))
    pads = padding if isinstance(padding, tuple) else (padding, padding)
    H = min_size(kh, dilation[0], pads[0]) + draw(st.integers(0, 5))
    W = min_size(kw, dilation[1], pads[1]) + draw(st.integers(0, 5))
    needs = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    return conv_case(N=draw(st.integers(1, 5)), C=groups * cin, H=H, W=W, O=groups * cout, kh=kh, kw=kw,
                     stride=stride, padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()),
                     needs=needs, chunk=draw(st.sampled_from([None, 1, 2])), channels_last=draw(st.booleans()),
                     seed_channels_last=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


def conv_arrays(case):
    """x, w and b (or None) of a case, float64; x with NHWC memory if ``case.channels_last``."""
    x = seeded((case.N, case.C, case.H, case.W), case.seed, case.channels_last)
    w = seeded((case.O, case.C // case.groups, case.kh, case.kw), case.seed + 1)
    b = seeded((case.O,), case.seed + 2) if case.bias else None
    return x, w, b


def conv_on(route, case):
    def conv(x, w, b):
        return ops.conv2d(x, w, b, case.stride, case.padding, case.dilation, case.groups, route=route)
    return conv


@contextlib.contextmanager
def chunked(case):
    """A context with ``case.chunk`` images per chunk (None: the default chunking)."""
    with pytest.MonkeyPatch.context() as mp:
        if case.chunk is not None:
            mp.setattr(plan_mod, "chunk_images", lambda n, _: min(n, case.chunk))
        yield


def pooled_on(route, case, activation):
    """The epilogue that passes gradients: pool(act(conv + b)) as one call of conv2d_fused."""
    def conv(x, w, b):
        return fast.conv2d_fused(x, w, b, case.stride, case.padding, case.dilation, case.groups,
                                 activation=activation, pool=2, route=route)
    return conv


def check_route(name, case):
    """Forward, the wanted gradients, the inference epilogue and the pooled epilogue with
    its gradients of route ``name`` equal the reference's for ``case`` (float64)."""
    x, w, b = conv_arrays(case)
    g = conv_geometry(x, w, b, case.stride, case.padding, case.dilation, case.groups)
    assert ROUTES[name].applies(g), f"the strategy drew a geometry {name} does not apply to: {g.describe()}"
    needs = case.needs[:2] + (case.needs[2] and case.bias,)
    with chunked(case):
        got = run(conv_on(name, case), (x, w, b), needs, case.seed_channels_last)
        # the epilogue act(conv·scale + shift + residual) of nn.fuse, inference only
        rng = np.random.default_rng(case.seed + 3)
        scale, shift = rng.standard_normal(case.O), rng.standard_normal(case.O)
        residual = rng.standard_normal(g.out_shape)
        activation = ("relu", "relu6", None)[case.seed % 3]

        def fused(route):
            with minicnn.no_grad():
                return fast.conv2d_fused(tensor(x), tensor(w), shift, case.stride, case.padding, case.dilation,
                                         case.groups, scale=scale, residual=residual,
                                         activation=activation, route=route).data
        fused_fast = fused(name)
        pooled = None
        if min(g.out_hw) >= 2:
            pooled = run(pooled_on(name, case, activation), (x, w, b), needs, case.seed_channels_last)
    want = run(conv_on("reference", case), (x, w, b), needs, case.seed_channels_last)
    assert_same(got, want, what=f"{name} {case}")
    if pooled is not None:
        assert_same(pooled, run(pooled_on("reference", case, activation), (x, w, b), needs, case.seed_channels_last),
                    what=f"{name} pooled epilogue ({activation}), with gradients, {case}")
    np.testing.assert_allclose(fused_fast, fused("reference"), rtol=RTOL,
                               atol=1e-12 * max(1.0, np.abs(fused_fast).max()),
                               err_msg=f"{name} fused epilogue ({activation}) {case}")


@given(case=conv_cases("depthwise"))
@example(case=conv_case(N=3, C=4, O=8, groups=4, kh=2, kw=3, padding=0, chunk=2))          # multiplier 2, 2 rows
@example(case=conv_case(N=5, C=3, O=3, groups=3, stride=2, padding="same", dilation=2,     # asymmetric padding
                        channels_last=True, seed_channels_last=True))
@example(case=conv_case(N=1, C=2, H=1, W=1, O=6, groups=2, padding=1, bias=False))
def test_depthwise_equals_reference(case):
    check_route("depthwise", case)


@given(case=conv_cases("pointwise"))
@example(case=conv_case(N=6, C=5, H=3, W=7, O=3, kh=1, kw=1, chunk=2, channels_last=True))
@example(case=conv_case(N=1, C=1, H=1, W=1, O=1, kh=1, kw=1, bias=False))
@example(case=conv_case(N=4, C=3, H=4, W=4, O=5, kh=1, kw=1, needs=(False, True, True), seed_channels_last=True))
def test_pointwise_equals_reference(case):
    check_route("pointwise", case)


@given(case=conv_cases("winograd"))
@example(case=conv_case(N=3, C=2, H=5, W=7, O=3, padding=0, chunk=2))                       # odd sizes, no padding
@example(case=conv_case(N=4, C=3, H=6, W=6, O=2, padding="same", channels_last=True, seed_channels_last=True))
@example(case=conv_case(N=1, C=1, H=1, W=1, O=1, padding=1, bias=False))                    # one tile, mostly padding
@example(case=conv_case(N=5, C=2, H=4, W=9, O=2, padding=(2, 0), chunk=1, needs=(True, False, True)))
def test_winograd_equals_reference(case):
    check_route("winograd", case)


@given(case=conv_cases("winograd4"))
@example(case=conv_case(N=3, C=2, H=5, W=7, O=3, padding=0, chunk=2))                       # 3x5 output: one tile, cut
@example(case=conv_case(N=2, C=3, H=9, W=10, O=2, padding="same", channels_last=True, seed_channels_last=True))
@example(case=conv_case(N=1, C=1, H=1, W=1, O=1, padding=1, bias=False))                    # one tile, mostly padding
@example(case=conv_case(N=4, C=2, H=10, W=6, O=2, padding=(2, 0), chunk=1, needs=(True, False, True)))
def test_winograd4_equals_reference(case):
    check_route("winograd4", case)


@given(case=conv_cases("im2col"))
@example(case=conv_case(N=4, C=3, H=6, W=5, O=2, kh=2, kw=2, padding=0, chunk=2))
@example(case=conv_case(N=2, C=1, H=7, W=7, O=3, kh=3, kw=2, stride=(2, 3), dilation=(2, 1), padding="same",
                        channels_last=True))
@example(case=conv_case(N=1, C=2, H=2, W=3, O=1, kh=4, kw=1, padding=2, bias=False))
def test_im2col_equals_reference(case):
    check_route("im2col", case)


@given(case=conv_cases("rowtaps"))
@example(case=conv_case(N=4, C=3, H=6, W=7, O=5, kh=2, kw=3, padding=0, chunk=2))             # 2-row kernel
@example(case=conv_case(N=3, C=2, H=7, W=5, O=3, kh=2, kw=2, stride=2, padding="same", seed_channels_last=True))
@example(case=conv_case(N=2, C=2, H=1, W=5, O=2, kh=3, kw=3, padding=1, channels_last=True))  # rows in the padding
@example(case=conv_case(N=5, C=1, H=9, W=4, O=2, kh=4, kw=1, stride=(3, 1), dilation=(2, 1), padding=2, chunk=1))
def test_rowtaps_equals_reference(case):
    if gemm(np.float64) is None:
        pytest.skip("no CBLAS dgemm found in this process: the rowtaps route cannot run here")
    check_route("rowtaps", case)


@given(case=conv_cases("im2row"))
@example(case=conv_case(N=4, C=4, H=5, W=6, O=6, kh=2, kw=3, groups=2, padding=0, chunk=2))
@example(case=conv_case(N=3, C=6, H=7, W=7, O=3, groups=3, stride=2, padding="same", dilation=(1, 2),
                        channels_last=True, seed_channels_last=True))
@example(case=conv_case(N=1, C=2, H=1, W=2, O=2, kh=1, kw=2, padding=0, bias=False, needs=(True, False, False)))
def test_im2row_equals_reference(case):
    check_route("im2row", case)


@given(case=conv_cases("direct"))
@example(case=conv_case(N=3, C=16, H=5, W=11, O=20, padding=1, chunk=2))                     # blocks cut on both axes
@example(case=conv_case(N=2, C=3, H=7, W=6, O=32, kh=2, kw=3, stride=2, dilation=(1, 2), padding="same",
                        channels_last=True, seed_channels_last=True))
@example(case=conv_case(N=1, C=2, H=2, W=3, O=1, kh=1, kw=2, padding=2, bias=False, needs=(True, False, False)))
def test_direct_equals_reference(case):
    check_route("direct", case)


def test_every_conv_route_is_tested():
    tested = {name.removeprefix("test_").removesuffix("_equals_reference") for name in globals()
              if name.endswith("_equals_reference")}
    assert set(ROUTES) <= tested
    assert dispatch.routes("conv2d") == ("reference",) + tuple(ROUTES)


# Float32: each route against the float64 reference, to float32 rounding.
F32_RTOL = 1e-4


@given(case=st.sampled_from(sorted(ROUTES)).flatmap(lambda r: conv_cases(r).map(lambda c: (r, c))))
@example(case=("winograd", conv_case(N=4, C=40, H=9, W=10, O=64, padding=1, chunk=2)))
@example(case=("winograd", conv_case(N=2, C=3, H=5, W=4, O=2, padding="same", channels_last=True)))
@example(case=("winograd4", conv_case(N=4, C=40, H=9, W=10, O=64, padding=1, chunk=2)))
@example(case=("rowtaps", conv_case(N=3, C=16, H=8, W=9, O=8, kh=2, kw=3, padding=0)))
@example(case=("im2row", conv_case(N=2, C=8, H=6, W=6, O=4, groups=2, stride=2, padding=1)))
@example(case=("im2col", conv_case(N=2, C=3, H=8, W=8, O=16, padding=1)))
@example(case=("pointwise", conv_case(N=2, C=32, H=4, W=4, O=24, kh=1, kw=1)))
@example(case=("depthwise", conv_case(N=2, C=8, H=7, W=7, O=16, groups=8, padding="same")))
def test_float32_routes_agree_with_the_float64_reference(case):
    name, case = case
    if name == "rowtaps" and gemm(np.float32) is None:
        pytest.skip("no CBLAS sgemm found in this process: the rowtaps route cannot run here")
    x, w, b = conv_arrays(case)
    needs = case.needs[:2] + (case.needs[2] and case.bias,)
    with chunked(case):
        got = run(conv_on(name, case), [None if a is None else a.astype(np.float32, order="K") for a in (x, w, b)],
                  needs, case.seed_channels_last)
    want = run(conv_on("reference", case), (x, w, b), needs, case.seed_channels_last)
    assert_same(got, want, rtol=F32_RTOL, scale_atol=F32_RTOL, what=f"{name} float32 {case}", dtype=np.float32)


def test_reference_mode_runs_the_reference_conv(rng):
    x, w = rng.standard_normal((2, 8, 6, 6)), rng.standard_normal((8, 8, 3, 3))
    g = conv_geometry(x, w, None, 1, 1, 1, 1)
    with minicnn.reference_mode():
        assert dispatch.implementation("conv2d", Conv2d, g) is Conv2d
        in_mode = ops.conv2d(tensor(x), tensor(w), padding=1).data
    assert dispatch.implementation("conv2d", Conv2d, g) in ROUTES.values()
    np.testing.assert_array_equal(in_mode, ops.conv2d(tensor(x), tensor(w), padding=1, route="reference").data)


# --------------------------------------------------------------------------- pooling

@st.composite
def pool_cases(draw):
    """(shape, kernel, stride, padding, ceil_mode) of a valid max/avg pooling."""
    k = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    H = max(1, k[0] - 2 * p[0]) + draw(st.integers(0, 5))
    W = max(1, k[1] - 2 * p[1]) + draw(st.integers(0, 5))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), H, W)
    return shape, k, stride, p, draw(st.booleans())


@given(case=pool_cases(), channels_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(case=((2, 3, 6, 8), (2, 2), None, (0, 0), False), channels_last=True, seed=0)     # 2x2, channels-last
@example(case=((3, 2, 4, 6), (2, 2), None, (0, 0), False), channels_last=False, seed=1)    # 2x2 on planes
@example(case=((1, 2, 5, 7), (2, 2), None, (0, 0), True), channels_last=True, seed=2)      # ceil: not halving
@example(case=((2, 3, 7, 6), (3, 3), (2, 2), (1, 1), True), channels_last=False, seed=3)   # overlapping windows
def test_max_pool_equals_reference(case, channels_last, seed):
    shape, k, stride, p, ceil_mode = case
    x = distinct(shape, seed)
    x = to_channels_last(x) if channels_last else x
    uses("max_pool2d", fast.pool.MaxPool2d)

    def pool(t):
        return ops.max_pool2d(t, k, stride, p, ceil_mode)
    assert_same(run(pool, [x], [True], channels_last), run(on_reference(pool), [x], [True], channels_last),
                what=f"max_pool2d {case}")


@given(case=pool_cases(), count_include_pad=st.booleans(), channels_last=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
@example(case=((2, 3, 5, 7), (3, 2), (2, 1), (1, 1), True), count_include_pad=False, channels_last=True, seed=0)
@example(case=((1, 1, 1, 1), (1, 1), None, (0, 0), False), count_include_pad=True, channels_last=False, seed=1)
def test_avg_pool_equals_reference(case, count_include_pad, channels_last, seed):
    shape, k, stride, p, ceil_mode = case
    x = seeded(shape, seed, channels_last)
    uses("avg_pool2d", fast.pool.AvgPool2d)

    def pool(t):
        return ops.avg_pool2d(t, k, stride, p, ceil_mode, count_include_pad)
    assert_same(run(pool, [x], [True]), run(on_reference(pool), [x], [True]), what=f"avg_pool2d {case}")


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
       size=st.tuples(st.one_of(st.none(), st.integers(1, 5)), st.one_of(st.none(), st.integers(1, 5))),
       channels_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(shape=(2, 3, 7, 5), size=(3, 2), channels_last=True, seed=0)       # uneven, overlapping windows
@example(shape=(2, 3, 7, 5), size=(1, 1), channels_last=True, seed=1)       # global, channels-last
@example(shape=(3, 2, 4, 4), size=(1, 1), channels_last=False, seed=2)      # global, planes
@example(shape=(1, 2, 3, 4), size=(5, None), channels_last=False, seed=3)   # more outputs than inputs
def test_adaptive_and_global_avg_pool_equal_reference(shape, size, channels_last, seed):
    x = seeded(shape, seed, channels_last)
    resolved = tuple(n if s is None else s for s, n in zip(size, shape[2:]))
    if resolved == (1, 1):
        uses("global_avg_pool2d", fast.pool.GlobalAvgPool2d)
    else:
        uses("avg_pool2d", fast.pool.AvgPool2d)

    def pool(t):
        return ops.adaptive_avg_pool2d(t, size)
    assert_same(run(pool, [x], [True], channels_last), run(on_reference(pool), [x], [True], channels_last),
                what=f"adaptive_avg_pool2d {shape} -> {size}")


# ------------------------------------------------------------------------ normalization

def affine(C, seed, present):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(C) if present else None, rng.standard_normal(C) if present else None)


def running_stats(C, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(C), rng.uniform(0.5, 2.0, C)


def check_norm_with_running(call, x, weight, bias, running, needs, what):
    """call(x, w, b, running_mean, running_var) fast and reference from the same running
    statistics: outputs, gradients and the updated statistics agree."""
    results = []
    for fn in (call, on_reference(call)):
        rm, rv = (None, None) if running is None else (running[0].copy(), running[1].copy())
        out = run(lambda *t: fn(*t, rm, rv), (x, weight, bias), needs)
        results.append((out, rm, rv))
    (got, rm, rv), (want, rm_ref, rv_ref) = results
    assert_same(got, want, what=what)
    if running is not None:
        np.testing.assert_allclose(rm, rm_ref, rtol=RTOL, atol=1e-12, err_msg=f"{what} running_mean")
        np.testing.assert_allclose(rv, rv_ref, rtol=RTOL, atol=1e-12, err_msg=f"{what} running_var")


@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=5).map(tuple), training=st.booleans(),
       with_running=st.booleans(), with_affine=st.booleans(), channels_last=st.booleans(),
       needs=st.tuples(st.booleans(), st.booleans(), st.booleans()), seed=st.integers(0, 2**32 - 1))
@example(shape=(3, 4, 5, 6), training=True, with_running=True, with_affine=True, channels_last=True,
         needs=(True, True, True), seed=0)
@example(shape=(3, 4, 5, 6), training=False, with_running=True, with_affine=True, channels_last=True,
         needs=(True, True, True), seed=1)
@example(shape=(5, 3), training=True, with_running=True, with_affine=False, channels_last=False,
         needs=(True, False, False), seed=2)
@example(shape=(1, 2, 1, 3), training=True, with_running=True, with_affine=True, channels_last=False,
         needs=(True, True, True), seed=3)
def test_batch_norm_equals_reference(shape, training, with_running, with_affine, channels_last, needs, seed):
    if training and np.prod(shape) // shape[1] < 2:
        shape = (2,) + shape[1:]            # training needs two values per channel
    channels_last = channels_last and len(shape) == 4
    x = seeded(shape, seed, channels_last)
    C = shape[1]
    weight, bias = affine(C, seed + 1, with_affine)
    running = running_stats(C, seed + 2) if with_running or not training else None
    uses("batch_norm", fast.norm.BatchNorm)

    def bn(t, w, b, rm, rv):
        return ops.batch_norm(t, rm, rv, w, b, training=training, momentum=0.3)
    check_norm_with_running(bn, x, weight, bias, running, needs,
                            f"batch_norm {shape} training={training} channels_last={channels_last}")


@given(shape=st.lists(st.integers(1, 4), min_size=3, max_size=5).map(tuple), use_input_stats=st.booleans(),
       with_running=st.booleans(), with_affine=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(shape=(3, 4, 5, 6), use_input_stats=True, with_running=True, with_affine=True, seed=0)
@example(shape=(2, 3, 4), use_input_stats=False, with_running=True, with_affine=True, seed=1)
def test_instance_norm_equals_reference(shape, use_input_stats, with_running, with_affine, seed):
    if use_input_stats and np.prod(shape[2:]) < 2:
        shape = shape[:2] + (2,) + shape[3:]
    x = seeded(shape, seed)
    weight, bias = affine(shape[1], seed + 1, with_affine)
    running = running_stats(shape[1], seed + 2) if with_running or not use_input_stats else None
    uses("instance_norm", fast.norm.InstanceNorm)

    def inorm(t, w, b, rm, rv):
        return ops.instance_norm(t, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.2)
    check_norm_with_running(inorm, x, weight, bias, running, (True, True, True),
                            f"instance_norm {shape} use_input_stats={use_input_stats}")


@given(n=st.integers(1, 3), groups=st.integers(1, 4), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), max_size=2).map(tuple), with_affine=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
@example(n=2, groups=3, per_group=2, spatial=(4, 5), with_affine=True, seed=0)
@example(n=1, groups=4, per_group=1, spatial=(3,), with_affine=False, seed=1)
def test_group_norm_equals_reference(n, groups, per_group, spatial, with_affine, seed):
    if per_group * int(np.prod(spatial)) < 2:
        spatial = spatial + (2,)
    shape = (n, groups * per_group) + spatial
    x = seeded(shape, seed)
    weight, bias = affine(shape[1], seed + 1, with_affine)
    uses("group_norm", fast.norm.GroupNorm)

    def gn(t, w, b):
        return ops.group_norm(t, groups, w, b)
    assert_same(run(gn, (x, weight, bias), (True, True, True)),
                run(on_reference(gn), (x, weight, bias), (True, True, True)), what=f"group_norm {shape} G={groups}")


@given(lead=st.lists(st.integers(1, 3), max_size=3).map(tuple),
       normalized=st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple), with_affine=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
@example(lead=(2, 3), normalized=(4, 5), with_affine=True, seed=0)
@example(lead=(), normalized=(7,), with_affine=False, seed=1)
def test_layer_norm_equals_reference(lead, normalized, with_affine, seed):
    if int(np.prod(normalized)) < 2:
        normalized = normalized[:-1] + (2,)
    x = seeded(lead + normalized, seed)
    rng = np.random.default_rng(seed + 1)
    weight = rng.standard_normal(normalized) if with_affine else None
    bias = rng.standard_normal(normalized) if with_affine else None
    uses("layer_norm", fast.norm.LayerNorm)

    def ln(t, w, b):
        return ops.layer_norm(t, normalized, w, b)
    assert_same(run(ln, (x, weight, bias), (True, True, True)),
                run(on_reference(ln), (x, weight, bias), (True, True, True)), what=f"layer_norm {lead}+{normalized}")


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       training=st.booleans(), with_residual=st.booleans(), relu=st.booleans(), channels_last=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
@example(shape=(2, 3, 4, 5), training=True, with_residual=True, relu=True, channels_last=True, seed=0)
@example(shape=(2, 3, 4, 5), training=False, with_residual=True, relu=True, channels_last=False, seed=1)
# Larger than one block of the channels-last kernels (64 values, 3 when C = 24), over several
# slices, with and without the residual's gradient written out.
@example(shape=(5, 24, 9, 7), training=True, with_residual=True, relu=True, channels_last=True, seed=2)
@example(shape=(4, 16, 8, 8), training=True, with_residual=False, relu=True, channels_last=True, seed=3)
@example(shape=(3, 16, 6, 6), training=True, with_residual=True, relu=False, channels_last=True, seed=4)
@example(shape=(3, 16, 6, 6), training=True, with_residual=True, relu=True, channels_last=False, seed=5)
def test_fused_batch_norm_equals_the_separate_reference_ops(shape, training, with_residual, relu, channels_last,
                                                            seed):
    """relu(batch_norm(x) + residual) in one pass equals the three reference ops."""
    if training and np.prod(shape) // shape[1] < 2:
        shape = (2,) + shape[1:]
    x = seeded(shape, seed, channels_last)
    res = seeded(shape, seed + 3, channels_last) if with_residual else None
    weight, bias = affine(shape[1], seed + 1, True)
    running = running_stats(shape[1], seed + 2)
    stats = [(running[0].copy(), running[1].copy()) for _ in range(2)]

    def fused(t, w, b, r):
        return fast.batch_norm_fused(t, *stats[0], w, b, training=training, residual=r, relu=relu)

    def separate(t, w, b, r):
        y = ops.batch_norm(t, *stats[1], w, b, training=training)
        y = y if r is None else y + r
        return ops.relu(y) if relu else y
    needs = (True, True, True, with_residual)
    assert_same(run(fused, (x, weight, bias, res), needs), run(on_reference(separate), (x, weight, bias, res), needs),
                what=f"batch_norm_fused {shape} training={training}")
    for got, want in zip(stats[0], stats[1]):
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg="running statistics")


# ------------------------------------------------------------------- ReLU and linear

@given(shape=st.lists(st.integers(1, 6), max_size=4).map(tuple), channels_last=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
@example(shape=(2, 3, 4, 5), channels_last=True, seed=0)
@example(shape=(), channels_last=False, seed=1)
@example(shape=(3, 7, 80, 80), channels_last=True, seed=2)         # several slices on the workers
def test_relu_equals_reference(shape, channels_last, seed):
    channels_last = channels_last and len(shape) == 4
    x = distinct(shape, seed, avoid_zero=True)
    x = to_channels_last(x) if channels_last else x
    uses("relu", fast.activation.ReLU)
    assert_same(run(ops.relu, [x], [True], channels_last), run(on_reference(ops.relu), [x], [True], channels_last),
                rtol=0, scale_atol=0, what=f"relu {shape}")


@given(lead=st.lists(st.integers(1, 4), max_size=3).map(tuple), in_features=st.integers(1, 9),
       out_features=st.integers(1, 9), with_bias=st.booleans(),
       needs=st.tuples(st.booleans(), st.booleans(), st.booleans()), seed=st.integers(0, 2**32 - 1))
@example(lead=(3,), in_features=4, out_features=7, with_bias=True, needs=(True, True, True), seed=0)   # odd halves
@example(lead=(2, 3, 2), in_features=5, out_features=2, with_bias=False, needs=(True, True, False), seed=1)
@example(lead=(), in_features=3, out_features=5, with_bias=True, needs=(False, True, True), seed=2)
def test_linear_halves_equal_reference(lead, in_features, out_features, with_bias, needs, seed):
    """The 'halves' route forced at every size (its threshold set to one multiply-add)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (in_features,))
    w = rng.standard_normal((out_features, in_features))
    b = rng.standard_normal(out_features) if with_bias else None
    needs = needs[:2] + (needs[2] and with_bias,)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast.linear, "MIN_PARALLEL", 1)
        uses("linear", fast.linear.Linear, (int(np.prod(lead)), out_features, in_features))
        got = run(ops.linear, (x, w, b), needs)
    assert_same(got, run(on_reference(ops.linear), (x, w, b), needs),
                what=f"linear {lead}x{in_features}->{out_features}")


def test_linear_halves_at_the_natural_threshold(rng):
    """From 2^20 multiply-adds the 'halves' route runs unforced (64 x 128 -> 129)."""
    x, w, b = rng.standard_normal((64, 128)), rng.standard_normal((129, 128)), rng.standard_normal(129)
    uses("linear", fast.linear.Linear, (64, 129, 128))
    needs = (True, True, True)
    assert_same(run(ops.linear, (x, w, b), needs), run(on_reference(ops.linear), (x, w, b), needs), what="linear")


# Float32 of the other fast routes: against the float64 reference, to float32 rounding.
F32_CASES = {
    "max_pool2d": (lambda t: ops.max_pool2d(t, 3, 2, 1), (2, 3, 7, 8), True),
    "max_pool2d 2x2 channels-last": (lambda t: ops.max_pool2d(t, 2), (2, 3, 6, 8), "channels_last"),
    "avg_pool2d": (lambda t: ops.avg_pool2d(t, 3, 2, 1, count_include_pad=False), (2, 3, 7, 8), False),
    "global_avg_pool2d": (lambda t: ops.adaptive_avg_pool2d(t, 1), (2, 3, 7, 8), "channels_last"),
    "batch_norm": (lambda t: ops.batch_norm(t, None, None, training=True), (4, 3, 5, 6), "channels_last"),
    "instance_norm": (lambda t: ops.instance_norm(t), (2, 3, 5, 6), False),
    "group_norm": (lambda t: ops.group_norm(t, 2), (2, 4, 5, 6), False),
    "layer_norm": (lambda t: ops.layer_norm(t, (5, 6)), (2, 4, 5, 6), False),
    "relu": (ops.relu, (2, 3, 5, 6), True),
}


@pytest.mark.parametrize("name", sorted(F32_CASES))
def test_float32_fast_ops_agree_with_the_float64_reference(name):
    fn, shape, values = F32_CASES[name]
    x = distinct(shape, 0, avoid_zero=True) if values is True else seeded(shape, 0, values == "channels_last")
    got = run(fn, [x.astype(np.float32, order="K")], [True])
    assert_same(got, run(on_reference(fn), [x], [True]), rtol=F32_RTOL, scale_atol=F32_RTOL, what=f"{name} float32",
                dtype=np.float32)


def test_float32_linear_halves_agree_with_the_float64_reference(monkeypatch, rng):
    monkeypatch.setattr(fast.linear, "MIN_PARALLEL", 1)
    x, w, b = rng.standard_normal((6, 33)), rng.standard_normal((17, 33)), rng.standard_normal(17)
    got = run(ops.linear, [a.astype(np.float32) for a in (x, w, b)], (True, True, True))
    assert_same(got, run(on_reference(ops.linear), (x, w, b), (True, True, True)), rtol=F32_RTOL,
                scale_atol=F32_RTOL, what="linear float32", dtype=np.float32)


# ------------------------------------------------------------------------- the switch

def test_reference_mode_is_the_dispatch_switch():
    assert minicnn.reference_mode is dispatch.reference_mode


def test_reference_mode_nests_and_restores(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    assert not dispatch.reference_enabled()
    with minicnn.reference_mode():
        assert dispatch.reference_enabled()
        with minicnn.reference_mode(False):
            assert not dispatch.reference_enabled()
            with minicnn.reference_mode():
                assert dispatch.reference_enabled()
            assert not dispatch.reference_enabled()
        assert dispatch.reference_enabled()
        with pytest.raises(KeyError):
            with minicnn.reference_mode(False):
                raise KeyError("restored on the way out of an error too")
        assert dispatch.reference_enabled()
    assert not dispatch.reference_enabled()


def test_reference_mode_is_per_thread(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def worker():
        seen["worker, main in reference mode"] = dispatch.reference_enabled()
        with minicnn.reference_mode():
            entered.set()
            release.wait(10)
            seen["worker in its own mode"] = dispatch.reference_enabled()

    with minicnn.reference_mode():
        t = threading.Thread(target=worker)
        t.start()
        assert entered.wait(10)
    seen["main, worker in reference mode"] = dispatch.reference_enabled()
    release.set()
    t.join(10)
    assert seen == {"worker, main in reference mode": False, "main, worker in reference mode": False,
                    "worker in its own mode": True}


def test_environment_variable_turns_reference_mode_on(monkeypatch):
    code = ("import minicnn.ops.dispatch as d\n"
            "print(d.reference_enabled())\n"
            "with d.reference_mode(False):\n"
            "    print(d.reference_enabled())\n")
    env = dict(os.environ, MINICNN_REFERENCE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"], out.stdout
    for value, expected in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("MINICNN_REFERENCE", value)
        assert dispatch.reference_enabled() is expected, f"MINICNN_REFERENCE={value!r}"


def test_unknown_route_lists_the_routes(rng):
    x, w = tensor(rng.standard_normal((1, 2, 5, 5))), tensor(rng.standard_normal((3, 2, 3, 3)))
    listed = ", ".join(dispatch.routes("conv2d"))
    assert listed.startswith("reference, ") and all(name in listed for name in ROUTES)
    with pytest.raises(ValueError, match=f"unknown route 'nope'; available: {listed}$"):
        ops.conv2d(x, w, route="nope")


def test_route_that_does_not_apply_names_the_geometry(rng):
    x, w = tensor(rng.standard_normal((1, 2, 5, 5))), tensor(rng.standard_normal((3, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"route 'winograd' cannot run this convolution \(input \(1, 2, 5, 5\), "
                                         r"weight \(3, 2, 3, 3\), stride \(2, 2\), .*routes that can: .*im2row"):
        ops.conv2d(x, w, stride=2, route="winograd")
    with pytest.raises(ValueError, match=r"route 'depthwise' cannot run .*groups 1"):
        ops.conv2d(x, w, route="depthwise")
