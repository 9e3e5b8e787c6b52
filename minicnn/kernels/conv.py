"""Numba kernels for convolution as a GEMM: im2col, col2im and the layout moves.

A chunk of ``nb`` images is unrolled into a column matrix

    cols[(c*kh + i)*kw + j, n*L + oh*Wo + ow] = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]

of shape ``(C*kh*kw, nb*L)`` with ``L = Ho*Wo`` (zero where the index falls in the
padding).  Rows are ordered by input channel, so the rows of group ``g`` form one
contiguous block and ``W.reshape(G, O/G, C/G*kh*kw) @ cols.reshape(G, ., nb*L)``
is a single batched GEMM whose output ``(O, nb*L)`` holds the chunk channel-major.
Columns of all images of the chunk sit side by side so the GEMM is wide even when
``L`` is small (the deep ResNet stages have ``L = 64``).

``ph``/``pw`` are the top/left paddings only; the bottom/right padding is implied
by ``Ho``/``Wo``, which is how asymmetric ('same') padding is handled without a
padded copy of ``x``.

All kernels are plain Python functions compiled with ``njit`` below, so
``NUMBA_DISABLE_JIT=1`` runs them as Python.  Inside the parallel loops they index
the arrays directly with indices cast to unsigned (they are never negative): with
signed ones Numba checks every access for negative wraparound, which stops LLVM
from vectorizing (~4x slower here), and slicing a view per row costs reference
counting on every slice.
"""
import numpy as np
from numba import njit, prange

_u = np.uint64  # index type that skips Numba's negative-index wraparound check


def _valid_range(o_count, stride, pad, offset, size):
    """The ``o`` in ``[lo, hi)`` with ``0 <= o*stride - pad + offset < size``."""
    lo = 0
    start = pad - offset
    if start > 0:
        lo = (start + stride - 1) // stride
    hi = 0
    last = size - 1 + pad - offset
    if last >= 0:
        hi = last // stride + 1
    if hi > o_count:
        hi = o_count
    if lo > hi:
        lo = hi
    return lo, hi


def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, cols):
    """x (nb, C, H, W) -> cols (C*kh*kw, nb*Ho*Wo), see the module docstring."""
    nb, C, H, W = x.shape
    L = Ho * Wo
    kk = kh * kw
    # One task per (channel, image) plane, which stays in L1 while its kh*kw rows
    # are written.  See the module docstring for the unsigned indices.
    for t in prange(C * nb):
        c = t // nb
        n = t - c * nb
        for i in range(kh):
            for j in range(kw):
                r = _u(c * kk + i * kw + j)
                lo, hi = valid_range(Wo, sw, pw, j * dw, W)
                iw0 = lo * sw - pw + j * dw
                for oh in range(Ho):
                    d = n * L + oh * Wo
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        lo_row, hi_row = Wo, Wo
                    else:
                        lo_row, hi_row = lo, hi
                    for q in range(lo_row):
                        cols[r, _u(d + q)] = 0
                    for q in range(hi_row - lo_row):
                        cols[r, _u(d + lo + q)] = x[_u(n), _u(c), _u(ih), _u(iw0 + q * sw)]
                    for q in range(hi_row, Wo):
                        cols[r, _u(d + q)] = 0


def _col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, dx):
    """The adjoint of im2col: dx (nb, C, H, W) = sum of cols (C*kh*kw, nb*Ho*Wo) entries
    over every window position that read each pixel.  ``dx`` is overwritten."""
    nb, C, H, W = dx.shape
    L = Ho * Wo
    kk = kh * kw
    # One task per (channel, image) plane: the rows of channel c only touch dx[:, c],
    # so tasks never write the same memory.
    for t in prange(C * nb):
        c = t // nb
        n = t - c * nb
        for h in range(H):
            for w in range(W):
                dx[_u(n), _u(c), _u(h), _u(w)] = 0
        for i in range(kh):
            for j in range(kw):
                r = _u(c * kk + i * kw + j)
                lo, hi = valid_range(Wo, sw, pw, j * dw, W)
                iw0 = lo * sw - pw + j * dw
                for oh in range(Ho):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    d = n * L + oh * Wo + lo
                    for q in range(hi - lo):
                        dx[_u(n), _u(c), _u(ih), _u(iw0 + q * sw)] += cols[r, _u(d + q)]


def _cols_to_nchw(ycols, bias, y):
    """y[n, o, l] = ycols[o, n*L + l] + bias[o]; y (nb, O, L), bias (O,) or empty for none.

    The transpose that turns the chunk's GEMM output into NCHW, fused with the bias add
    so it costs one pass over memory that the bias needed anyway."""
    nb, O, L = y.shape
    has_bias = bias.shape[0] > 0
    for t in prange(O * nb):
        o = t // nb
        n = t - o * nb
        b = bias[o] if has_bias else 0
        for q in range(L):
            y[_u(n), _u(o), _u(q)] = ycols[_u(o), _u(n * L + q)] + b


def _nchw_to_cols(gy, gcols, gbias):
    """gcols[o, n*L + l] = gy[n, o, l] and gbias[o] += sum_{n,l} gy[n, o, l].

    gy (nb, O, L); gcols (O, nb*L); gbias (O,) accumulated in float64, or empty to skip."""
    nb, O, L = gy.shape
    has_bias = gbias.shape[0] > 0
    for o in prange(O):
        s = 0.0
        for n in range(nb):
            for q in range(L):
                v = gy[_u(n), _u(o), _u(q)]
                gcols[_u(o), _u(n * L + q)] = v
                s += v
        if has_bias:
            gbias[o] += s


valid_range = njit(cache=True, inline="always")(_valid_range)
im2col = njit(cache=True, parallel=True)(_im2col)
col2im = njit(cache=True, parallel=True)(_col2im)
cols_to_nchw = njit(cache=True, parallel=True)(_cols_to_nchw)
# reassoc: lets the float64 bias-gradient sum vectorize (a different, not worse, rounding order)
nchw_to_cols = njit(cache=True, parallel=True, fastmath={"reassoc"})(_nchw_to_cols)
