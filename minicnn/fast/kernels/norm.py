"""Numba kernels for the normalization layers, on the rows (or columns) of a contiguous matrix.

Every normalization in minicnn views its input as rows: BatchNorm, InstanceNorm
and GroupNorm use one row per (sample, channel) (``R = N*C``, ``L = H*W``),
LayerNorm one row per sample.  The kernels work per row, in parallel over rows,
with float64 accumulators whatever the input dtype; the per-row results are
small arrays that ``minicnn.fast.norm`` combines into per-group statistics.

    row_moments:    mean_r = Σ x / L,  m2_r = Σ (x - mean_r)²           (one pass)
    normalize_rows: out = (x - mean_r)·scale_r + shift_r  [+ res]  [clamped: ReLU, ReLU6]
    row_grad_sums:  sg_r = Σ g,  sgx_r = Σ g·(x - mean_r)                (one pass)
    grad_rows:      out = alpha_r·g + beta_r·(x - mean_r) + gamma_r

``row_moments`` accumulates ``d = x - x[r, 0]`` and ``d²`` (the shifted-data
algorithm): one read of the row, and no catastrophic cancellation when the mean
is large against the spread, because the shift lies within the data.

Batch norm of a channels-last input (``minicnn.fast.layout.nhwc``) has its channels
as the columns of a (P, C) matrix, P = N·H·W, instead:

    col_sums:       s1_c = Σ (u - k_c),  s2_c = Σ (u - k_c)·(x - m_c)   (the moments, or Σg and Σg·(x - mean))
    normalize_cols / grad_cols: as the row kernels, with per-column coefficients

All kernels are plain Python functions compiled with ``njit`` below, so
``NUMBA_DISABLE_JIT=1`` runs them as Python.  ``reassoc`` lets LLVM vectorize the
float64 reductions; results differ from a sequential sum only in rounding.
"""
import math
import types

import numpy as np
from numba import njit, prange

_FLAGS = dict(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})


# The activations that fused epilogues apply (batch norm's, the convolution's), as
# clamping bounds [lo, hi] of :func:`epilogue`.
CLAMPS = {None: (-math.inf, math.inf), "relu": (0.0, math.inf), "relu6": (0.0, 6.0)}


def _row_moments(x, mean, m2):
    """x (R, L) -> mean (R,), m2 (R,) = Σ (x - mean)², both float64; L >= 1."""
    R, L = x.shape
    for r in prange(R):
        shift = np.float64(x[r, 0])
        s = 0.0
        ss = 0.0
        for i in range(L):
            d = np.float64(x[r, i]) - shift
            s += d
            ss += d * d
        mean[r] = shift + s / L
        m2[r] = max(ss - s * s / L, 0.0)


def _epilogue(v, res, lo, hi):
    """v + res (res = 0.0 when there is no residual), clamped to [lo, hi] with NaN kept
    (as PyTorch): ReLU is (0, inf), ReLU6 (0, 6), no activation (-inf, inf)."""
    v += res
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def _normalize_rows(x, mean, scale, shift, res, lo, hi, out):
    """out[r, i] = (x[r, i] - mean[r])·scale[r] + shift[r], plus res[r, i] if res is not
    empty, clamped to [lo, hi]; out may be x."""
    R, L = x.shape
    add = res.size > 0
    for r in prange(R):
        m = mean[r]
        a = scale[r]
        b = shift[r]
        for i in range(L):
            out[r, i] = epilogue((np.float64(x[r, i]) - m) * a + b, np.float64(res[r, i]) if add else 0.0, lo, hi)


def _row_grad_sums(g, x, mean, sg, sgx):
    """g, x (R, L) -> sg (R,) = Σ g,  sgx (R,) = Σ g·(x - mean), float64."""
    R, L = x.shape
    for r in prange(R):
        m = mean[r]
        s = 0.0
        sx = 0.0
        for i in range(L):
            gi = np.float64(g[r, i])
            s += gi
            sx += gi * (np.float64(x[r, i]) - m)
        sg[r] = s
        sgx[r] = sx


def _grad_rows(g, x, mean, alpha, beta, gamma, out):
    """out[r, i] = alpha[r]·g[r, i] + beta[r]·(x[r, i] - mean[r]) + gamma[r];  out may be g."""
    R, L = x.shape
    for r in prange(R):
        m = mean[r]
        a = alpha[r]
        b = beta[r]
        c = gamma[r]
        for i in range(L):
            out[r, i] = a * np.float64(g[r, i]) + b * (np.float64(x[r, i]) - m) + c


# Channels-last batch norm: x as a (P, C) matrix, one column per channel (P = N·H·W).
# The rows are split into a fixed number of slices (T = the first axis of the partial
# sums, independent of the thread count, so the bits are too); each slice sums four
# rows at a time, so that each partial sum is loaded and stored once per four rows.

def _col_sums(u, k, x, m, s1, s2):
    """Partial column sums of (P, C) matrices per slice t of rows, float64 (T, C):

        s1[t, c] = Σ (u[p, c] - k[c]),   s2[t, c] = Σ (u[p, c] - k[c])·(x[p, c] - m[c])

    the moments with u = x, k = m = a shift (the shifted-data algorithm, as
    row_moments), the gradient sums Σg and Σg·(x - mean) with u = g, k = 0, m = mean."""
    P, C = x.shape
    T = s1.shape[0]
    for t in prange(T):
        p0, p1 = t * P // T, (t + 1) * P // T
        s1[t, :] = 0
        s2[t, :] = 0
        p = p0
        while p + 4 <= p1:
            for c in range(C):
                a, b = np.float64(u[p, c]) - k[c], np.float64(u[p + 1, c]) - k[c]
                d, e = np.float64(u[p + 2, c]) - k[c], np.float64(u[p + 3, c]) - k[c]
                mc = m[c]
                s1[t, c] += (a + b) + (d + e)
                s2[t, c] += ((a * (np.float64(x[p, c]) - mc) + b * (np.float64(x[p + 1, c]) - mc))
                             + (d * (np.float64(x[p + 2, c]) - mc) + e * (np.float64(x[p + 3, c]) - mc)))
            p += 4
        for q in range(p, p1):
            for c in range(C):
                a = np.float64(u[q, c]) - k[c]
                s1[t, c] += a
                s2[t, c] += a * (np.float64(x[q, c]) - m[c])


def _normalize_cols(x, mean, scale, shift, res, lo, hi, out):
    """out[p, c] = (x[p, c] - mean[c])·scale[c] + shift[c], plus res[p, c] if res is not
    empty, clamped to [lo, hi];  x, res, out (P, C)."""
    P, C = x.shape
    add = res.size > 0
    for p in prange(P):
        for c in range(C):
            out[p, c] = epilogue((np.float64(x[p, c]) - mean[c]) * scale[c] + shift[c],
                                 np.float64(res[p, c]) if add else 0.0, lo, hi)


def _grad_cols(g, x, mean, alpha, beta, gamma, out):
    """out[p, c] = alpha[c]·g[p, c] + beta[c]·(x[p, c] - mean[c]) + gamma[c];  out may be g."""
    P, C = x.shape
    for p in prange(P):
        for c in range(C):
            out[p, c] = alpha[c] * np.float64(g[p, c]) + beta[c] * (np.float64(x[p, c]) - mean[c]) + gamma[c]


epilogue = njit(cache=True, inline="always")(_epilogue)
row_moments = njit(**_FLAGS)(_row_moments)
normalize_rows = njit(**_FLAGS)(_normalize_rows)
row_grad_sums = njit(**_FLAGS)(_row_grad_sums)
grad_rows = njit(**_FLAGS)(_grad_rows)
col_sums = njit(**_FLAGS)(_col_sums)
normalize_cols = njit(**_FLAGS)(_normalize_cols)
grad_cols = njit(**_FLAGS)(_grad_cols)


def _serial(fn):
    """``fn`` compiled without ``parallel`` (prange runs as range), GIL released: for callers
    already on a worker thread (the convolution's epilogue, per chunk).  Cached under its own
    name, as Numba's cache key ignores the compile options."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    return njit(cache=True, nogil=True, fastmath=_FLAGS["fastmath"])(twin)


normalize_cols_serial = _serial(_normalize_cols)
