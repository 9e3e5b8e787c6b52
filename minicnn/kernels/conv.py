"""Numba kernels for convolution as a GEMM: im2row, row2im and the layout moves.

A chunk of ``nb`` images is unrolled *pixel-major* into a row matrix

    rows[n*L + oh*Wo + ow, g*kh*kw*Cg + (i*kw + j)*Cg + c]
        = x[n, g*Cg + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]

of shape ``(nb*L, C*kh*kw)``, ``L = Ho*Wo``, zero where the index falls in the
padding (``ph``/``pw`` are the top/left paddings; the bottom/right ones are
implied by ``Ho``/``Wo``, so asymmetric 'same' padding needs no padded copy).
One row per output pixel, the window of each group contiguous, so the GEMMs are

    forward   Yᵀ (nb*L, O)  = rows · Wrᵀ          Wr = w as (O, kh, kw, C/G) per group
    backward  dWr (O, K)    = dYᵀᵀ · rows,    drows = dYᵀ · Wr,    dx = row2im(drows)

with the long pixel axis as the GEMM's M dimension: OpenBLAS runs these narrow
convolutions (16-64 channels) at 80-95 GFLOP/s per core this way, against 35-60
with the pixel axis as N.  The rows are built from an NHWC copy of the chunk, so
each tap copies C/G contiguous values.

The kernels are plain Python functions compiled with ``njit`` below, so
``NUMBA_DISABLE_JIT=1`` runs them as Python.  They are serial and release the GIL:
the parallelism is over chunks of images, one chunk per worker thread at a time
(see ``minicnn._runtime``).  They index the arrays with indices cast to unsigned
(they are never negative): with signed ones Numba checks every access for
negative wraparound, which can stop LLVM from vectorizing (up to ~4x slower here).
"""
import numpy as np
from numba import njit

_u = np.uint64  # never-negative indices skip the wraparound check; arithmetic stays signed


def _nchw_to_nhwc(x, out):
    """out[n, h, w, c] = x[n, c, h, w]; x (nb, C, H, W), out (nb, H, W, C)."""
    nb, C, H, W = x.shape
    for n in range(nb):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    out[_u(n), _u(h), _u(w), _u(c)] = x[_u(n), _u(c), _u(h), _u(w)]


def _nhwc_to_nchw(x, out):
    """out[n, c, h, w] = x[n, h, w, c]; x (nb, H, W, C), out (nb, C, H, W)."""
    nb, H, W, C = x.shape
    for n in range(nb):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    out[_u(n), _u(c), _u(h), _u(w)] = x[_u(n), _u(h), _u(w), _u(c)]


def _im2row(xh, groups, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, rows):
    """xh (nb, H, W, C) -> rows (nb*Ho*Wo, C*kh*kw), see the module docstring."""
    nb, H, W, C = xh.shape
    Cg = C // groups
    for n in range(nb):
        for oh in range(Ho):
            for ow in range(Wo):
                r = _u((n * Ho + oh) * Wo + ow)
                for g in range(groups):
                    for i in range(kh):
                        ih = oh * sh - ph + i * dh
                        for j in range(kw):
                            iw = ow * sw - pw + j * dw
                            k0 = (g * kh * kw + i * kw + j) * Cg
                            if ih < 0 or ih >= H or iw < 0 or iw >= W:
                                for c in range(Cg):
                                    rows[r, _u(k0 + c)] = 0
                            else:
                                for c in range(Cg):
                                    rows[r, _u(k0 + c)] = xh[_u(n), _u(ih), _u(iw), _u(g * Cg + c)]


def _row2im(rows, groups, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, dxh):
    """The adjoint of im2row: dxh (nb, H, W, C) = the sum of the rows entries of every
    window position that read each pixel.  ``dxh`` is overwritten."""
    nb, H, W, C = dxh.shape
    Cg = C // groups
    dxh[...] = 0
    for n in range(nb):
        for oh in range(Ho):
            for ow in range(Wo):
                r = _u((n * Ho + oh) * Wo + ow)
                for g in range(groups):
                    for i in range(kh):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        for j in range(kw):
                            iw = ow * sw - pw + j * dw
                            if iw < 0 or iw >= W:
                                continue
                            k0 = (g * kh * kw + i * kw + j) * Cg
                            for c in range(Cg):
                                dxh[_u(n), _u(ih), _u(iw), _u(g * Cg + c)] += rows[r, _u(k0 + c)]


def _rows_to_nchw(yt, bias, y):
    """y[n, o, l] = yt[n*L + l, o] + bias[o]; yt (nb*L, O), y (nb, O, L), bias (O,) or empty.

    The transpose from the GEMM's pixel-major output to NCHW, fused with the bias add."""
    nb, O, L = y.shape
    has_bias = bias.shape[0] > 0
    for n in range(nb):
        for o in range(O):
            b = bias[o] if has_bias else 0
            for q in range(L):
                y[_u(n), _u(o), _u(q)] = yt[_u(n * L + q), _u(o)] + b


def _nchw_to_rows(gy, gt, gbias):
    """gt[n*L + l, o] = gy[n, o, l] and gbias[o] += Σ_{n,l} gy[n, o, l].

    gy (nb, O, L); gt (nb*L, O); gbias (O,) accumulated in float64, or empty to skip."""
    nb, O, L = gy.shape
    has_bias = gbias.shape[0] > 0
    for n in range(nb):
        for o in range(O):
            s = 0.0
            for q in range(L):
                v = gy[_u(n), _u(o), _u(q)]
                gt[_u(n * L + q), _u(o)] = v
                s += v
            if has_bias:
                gbias[o] += s


nchw_to_nhwc = njit(cache=True, nogil=True)(_nchw_to_nhwc)
nhwc_to_nchw = njit(cache=True, nogil=True)(_nhwc_to_nchw)
im2row = njit(cache=True, nogil=True)(_im2row)
row2im = njit(cache=True, nogil=True)(_row2im)
rows_to_nchw = njit(cache=True, nogil=True)(_rows_to_nchw)
# reassoc: lets the float64 bias-gradient sum vectorize (a different, not worse, rounding order)
nchw_to_rows = njit(cache=True, nogil=True, fastmath={"reassoc"})(_nchw_to_rows)
