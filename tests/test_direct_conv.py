"""The direct convolution route (``minicnn.fast.conv.direct``) at its edges, against the
reference: output widths that are not whole blocks of 8 pixels, channel counts that are
not whole blocks of 16 (8 for the weight gradient's input channels), the 32-channel
blocks, paddings wider than the kernel reaches, strides (the input gradient then goes
through im2row), dilation, empty batches, float32; and its micro-kernel, compiled and
as plain Python, against the formula.  ``tests/test_routes.py`` draws the general
geometries."""
import numpy as np
import pytest
from test_routes import F32_RTOL, assert_same, check_route, conv_arrays, conv_case, conv_on, run

from minicnn.fast.conv import ROUTES
from minicnn.fast.kernels import direct as K
from minicnn.ops.conv import conv_geometry

EDGES = {
    "width not whole blocks": conv_case(N=3, C=16, H=5, W=13, O=16, padding=1),
    "no padding, odd sizes": conv_case(N=2, C=5, H=7, W=9, O=17, kh=2, kw=3, padding=0),
    "padding 2, 32-channel blocks": conv_case(N=2, C=9, H=6, W=6, O=32, padding=2, chunk=1),
    "narrow blocks past 32": conv_case(N=2, C=3, H=4, W=10, O=40, kh=3, kw=1, padding=(1, 0)),
    "wide blocks, cut": conv_case(N=2, C=16, H=5, W=7, O=50, padding="same", channels_last=True,
                                  seed_channels_last=True),
    "padding beyond the kernel": conv_case(N=2, C=2, H=3, W=4, O=3, kh=1, kw=2, padding=2),
    "stride 2": conv_case(N=3, C=16, H=9, W=9, O=32, stride=2, padding=1, chunk=2),
    "stride (1, 2), dilation 2": conv_case(N=2, C=4, H=8, W=11, O=16, stride=(1, 2), dilation=2, padding="same"),
    "dilation, no input gradient": conv_case(N=2, C=3, H=9, W=9, O=5, dilation=(2, 1), padding=1,
                                             needs=(False, True, True)),
    "input gradient only": conv_case(N=2, C=6, H=6, W=5, O=8, kh=4, kw=4, padding=1, bias=False,
                                     needs=(True, False, False)),
    "one pixel": conv_case(N=1, C=1, H=1, W=1, O=1, padding=1),
}


@pytest.mark.parametrize("case", EDGES.values(), ids=EDGES.keys())
def test_direct_equals_reference_at_the_edges(case):
    check_route("direct", case)


@pytest.mark.parametrize("case", [EDGES["width not whole blocks"], EDGES["padding 2, 32-channel blocks"],
                                  EDGES["stride 2"], EDGES["wide blocks, cut"]], ids=str)
def test_direct_float32_agrees_with_the_float64_reference(case):
    x, w, b = conv_arrays(case)
    got = run(conv_on("direct", case), [a.astype(np.float32, order="K") for a in (x, w, b)], case.needs,
              case.seed_channels_last)
    want = run(conv_on("reference", case), (x, w, b), case.needs, case.seed_channels_last)
    assert_same(got, want, rtol=F32_RTOL, scale_atol=F32_RTOL, what=f"direct float32 {case}", dtype=np.float32)


def test_direct_runs_an_empty_batch():
    case = conv_case(N=0, C=3, H=5, W=5, O=16, padding=1)
    x, w, b = conv_arrays(case)
    got = run(conv_on("direct", case), (x, w, b), case.needs)
    assert got[0].shape == (0, 16, 5, 5)
    assert_same(got, run(conv_on("reference", case), (x, w, b), case.needs), what="direct, empty batch")


def test_direct_applies_to_ungrouped_convolutions_only():
    x, w = np.zeros((1, 4, 5, 5)), np.zeros((4, 2, 3, 3))
    assert not ROUTES["direct"].applies(conv_geometry(x, w, None, 1, 1, 1, 2))
    assert ROUTES["direct"].applies(conv_geometry(x, np.zeros((4, 4, 3, 3)), None, 2, 1, 2, 1))


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_micro_kernel_adds_the_block_products(wide, dtype):
    """acc[a0 + p·astride + v·av + l] += Σ_k x[x0 + p·xs + k·xk] · w[w0 + k·wk + v·wv + l],
    compiled and as Python, on strided offsets (a second weight vector before the first,
    as for a pair of output rows) that a wrong index in either would read differently."""
    rng = np.random.default_rng(5)
    vectors = 2 if wide else 1
    x, w = rng.standard_normal(400).astype(dtype), rng.standard_normal(900).astype(dtype)
    acc = rng.standard_normal(K.PIXELS * 40 + 10).astype(dtype)
    x0, xs, xk, w0, wk, wv, n, a0, astride, av = 3, 7, 5, 111, 40, -90, 19, 4, 40, 20
    want = acc.copy()
    for p in range(K.PIXELS):
        xv = x[x0 + p * xs + xk * np.arange(n)]
        for v in range(vectors):
            ws = w[w0 + v * wv + wk * np.arange(n)[:, None] + np.arange(K.LANES)]
            want[a0 + p * astride + v * av:][:K.LANES] += (xv[:, None] * ws).sum(axis=0)
    compiled, python = acc.copy(), acc.copy()
    K.block(wide, x, x0, xs, xk, w, w0, wk, wv, n, compiled, a0, astride, av)
    K.python_block(vectors)(x, x0, xs, xk, w, w0, wk, wv if wide else 0, n, python, a0, astride, av if wide else 0)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(compiled, want, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(python, want, rtol=rtol, atol=rtol)
