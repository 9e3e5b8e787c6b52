"""Numba kernels for the normalization layers, on rows of a contiguous (R, L) matrix.

Every normalization in minicnn views its input as rows: BatchNorm, InstanceNorm
and GroupNorm use one row per (sample, channel) (``R = N*C``, ``L = H*W``),
LayerNorm one row per sample.  The kernels work per row, in parallel over rows,
with float64 accumulators whatever the input dtype; the per-row results are
small arrays that ``minicnn.ops.norm`` combines into per-group statistics.

    row_moments:    mean_r = Σ x / L,  m2_r = Σ (x - mean_r)²           (one pass)
    normalize_rows: out = (x - mean_r)·scale_r + shift_r
    row_grad_sums:  sg_r = Σ g,  sgx_r = Σ g·(x - mean_r)                (one pass)
    grad_rows:      out = alpha_r·g + beta_r·(x - mean_r) + gamma_r

``row_moments`` accumulates ``d = x - x[r, 0]`` and ``d²`` (the shifted-data
algorithm): one read of the row, and no catastrophic cancellation when the mean
is large against the spread, because the shift lies within the data.

All kernels are plain Python functions compiled with ``njit`` below, so
``NUMBA_DISABLE_JIT=1`` runs them as Python.  ``reassoc`` lets LLVM vectorize the
float64 reductions; results differ from a sequential sum only in rounding.
"""
import numpy as np
from numba import njit, prange

_FLAGS = dict(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})


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


def _normalize_rows(x, mean, scale, shift, out):
    """out[r, i] = (x[r, i] - mean[r])·scale[r] + shift[r];  out may be x."""
    R, L = x.shape
    for r in prange(R):
        m = mean[r]
        a = scale[r]
        b = shift[r]
        for i in range(L):
            out[r, i] = (np.float64(x[r, i]) - m) * a + b


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


row_moments = njit(**_FLAGS)(_row_moments)
normalize_rows = njit(**_FLAGS)(_normalize_rows)
row_grad_sums = njit(**_FLAGS)(_row_grad_sums)
grad_rows = njit(**_FLAGS)(_grad_rows)
