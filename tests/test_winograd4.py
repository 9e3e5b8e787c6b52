"""Winograd F(4x4, 3x3) (``minicnn.fast.conv.winograd4``) and the tile-transform kernels it
shares with F(2x2, 3x3) (``minicnn.fast.kernels.winograd``).

The route equals the reference in float64 on hypothesis geometries in ``test_routes.py``
(as every route); here: the matrices compute a convolution, each kernel is the exact
adjoint of its partner (so the backward pass is the forward's transpose, edges included),
and float32 stays within a stated error of the float64 reference at realistic widths."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import ops, tensor
from minicnn.fast.conv import ROUTES, autotune, choices
from minicnn.fast.conv.winograd import F2x2, Transform
from minicnn.fast.conv.winograd4 import F4x4
from minicnn.fast.kernels import winograd as KW

TRANSFORMS = {"F(2x2,3x3)": F2x2, "F(4x4,3x3)": F4x4}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_matrices_compute_the_correlation(name, rng):
    """1-D: Aᵀ[(G g) ⊙ (Bᵀ d)] = y, y[i] = Σ_k g[k]·d[i + k]; the 2-D transforms are its outer product."""
    t = TRANSFORMS[name]
    for _ in range(5):
        d, g = rng.standard_normal(t.n), rng.standard_normal(3)
        y = t.AT @ ((t.G @ g) * (t.BT @ d))
        np.testing.assert_allclose(y, [d[i:i + 3] @ g for i in range(t.m)], rtol=0, atol=1e-13)


def test_weight_grad_is_the_adjoint_of_weight(rng):
    w, du = rng.standard_normal((5, 3, 3, 3)), rng.standard_normal((36, 3, 5))
    lhs = np.vdot(F4x4.weight(w), du)
    np.testing.assert_allclose(lhs, np.vdot(w, F4x4.weight_grad(du, w.shape)), rtol=1e-12)


def test_a_transform_with_too_many_terms_is_refused():
    dense = np.ones((8, 8))
    with pytest.raises(ValueError, match="row 0 has 8 nonzero terms, the kernels take at most 6"):
        Transform(BT=dense, G=np.ones((8, 3)), AT=np.ones((6, 8)))


@given(name=st.sampled_from(sorted(TRANSFORMS)), nb=st.integers(1, 2), C=st.sampled_from([1, 2, 3, 5, 48, 72]),
       H=st.integers(1, 11), W=st.integers(1, 11), ph=st.integers(0, 2), pw=st.integers(0, 2),
       seed=st.integers(0, 2**32 - 1))
def test_kernels_are_exact_adjoints(name, nb, C, H, W, ph, pw, seed):
    """<tiles(x), v> = <x, untile(v)> and <untile(m), g> = <m, tiles(g)> in float64,
    for tiles that run past the image and the output on every side (48 and 72 channels:
    a tile row in blocks of 2 and 1 tiles, kernels.winograd.BLOCK)."""
    t, rng = TRANSFORMS[name], np.random.default_rng(seed)
    tables = t.tables[np.dtype(np.float64)]
    Ho, Wo = H + 2 * ph - 2, W + 2 * pw - 2
    if Ho < 1 or Wo < 1:
        return
    th, tw = -(-Ho // t.m), -(-Wo // t.m)
    x, v = rng.standard_normal((nb, H, W, C)), rng.standard_normal((t.n ** 2, nb * th * tw, C))
    vx, xv = np.empty_like(v), np.empty_like(x)
    KW.winograd_tiles(x, ph, pw, th, tw, t.n, *tables["input"], vx)
    KW.winograd_untile(v, ph, pw, th, tw, *tables["input_grad"], np.empty(0), True, xv)
    np.testing.assert_allclose(np.vdot(vx, v), np.vdot(x, xv), rtol=1e-12, atol=1e-12)
    m, g = rng.standard_normal((t.n ** 2, nb * th * tw, C)), rng.standard_normal((nb, Ho, Wo, C))
    gm, mg = np.empty_like(g), np.empty_like(m)
    KW.winograd_untile(m, 0, 0, th, tw, *tables["output"], np.empty(0), False, gm)
    KW.winograd_tiles(g, 0, 0, th, tw, t.m, *tables["output_grad"], mg)
    np.testing.assert_allclose(np.vdot(gm, g), np.vdot(m, mg), rtol=1e-12, atol=1e-12)


def relative_errors(route, x, w, gy):
    """max|a32 - a64| / max|a64| of the forward, dx and dw of ``route`` in float32 against the reference in float64."""
    def run(route, x, w):
        xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
        y = ops.conv2d(xt, wt, None, 1, 1, route=route)
        y.backward(gy.astype(x.dtype))
        return y.data, xt.grad, wt.grad
    got = run(route, x.astype(np.float32), w.astype(np.float32))
    return [np.abs(a - b).max() / np.abs(b).max() for a, b in zip(got, run("reference", x, w))]


def test_float32_error_at_realistic_widths(rng):
    """Standard normal x, Kaiming-scaled w, 128 channels.  Measured on this geometry (and up to
    256 channels): winograd4 ~1e-5 forward, ~2e-6 for dx and dw; winograd and im2row ~5e-7.
    F(4x4)'s larger error is the algorithm's (entries up to 8 in Aᵀ, 5 in Bᵀ, 1/24 in G);
    it stays 10x inside the 1e-4 float32 bound of test_routes.py."""
    x = rng.standard_normal((2, 128, 8, 8))
    w = rng.standard_normal((128, 128, 3, 3)) * np.sqrt(2 / (9 * 128))
    gy = rng.standard_normal((2, 128, 8, 8))
    errors = relative_errors("winograd4", x, w, gy)
    assert max(errors) < 3e-5, errors
    assert max(relative_errors("winograd", x, w, gy)) < 3e-6


def test_the_autotuner_times_winograd4(monkeypatch, tmp_path, rng):
    """A 3x3 stride-1 geometry has winograd4 among its timed candidates, and choices() lists its timing."""
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MINICNN_AUTOTUNE", "1")
    autotune.clear()
    try:
        x = tensor(rng.standard_normal((4, 32, 8, 8)).astype(np.float32), requires_grad=True)
        w = tensor(rng.standard_normal((32, 32, 3, 3)).astype(np.float32), requires_grad=True)
        ops.conv2d(x, w, padding=1).sum().backward()
        [row] = choices()
    finally:
        autotune.clear()
    assert row.source == "measured" and row.timings_ms["winograd4"] is not None and row.route in ROUTES
