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

Behind a fused ReLU (``minicnn.fast.norm``'s epilogue) the backward kernels take the
incoming gradient g and the ReLU's output y, and use g·[y > 0] as they read it: the
masked gradient is never a separate pass (the sums kernels write it out only where
the caller needs it, as a residual's gradient).

``row_moments`` accumulates ``d = x - x[r, 0]`` and ``d²`` (the shifted-data
algorithm): one read of the row, and no catastrophic cancellation when the mean
is large against the spread, because the shift lies within the data.

Batch norm of a channels-last input (``minicnn.fast.layout.nhwc``) has its channels
as the columns of a (P, C) matrix, P = N·H·W, instead, walked flat in blocks of B
values with the per-column coefficients tiled to B:

    tile_sums:      s1_j = Σ (u - k_j),  s2_j = Σ (u - k_j)·(x - m_j)   (the moments, or Σg and Σg·(x - mean))
    normalize_tiles / grad_tiles: as the row kernels, with tiled coefficients

All kernels are plain Python functions compiled with ``njit`` below, so
``NUMBA_DISABLE_JIT=1`` runs them as Python.  ``reassoc`` lets LLVM vectorize the
float64 reductions; results differ from a sequential sum only in rounding.
"""
import math
import types

import numpy as np
from numba import njit, prange

_FLAGS = dict(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})
_u = np.uint64  # never-negative indices skip the wraparound check (see kernels/conv.py)


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


def _row_grad_sums(g, mask, x, mean, sg, sgx, gm):
    """g, x (R, L) -> sg (R,) = Σ v,  sgx (R,) = Σ v·(x - mean), float64, with v = g·[mask > 0]
    (the gradient through a fused ReLU whose output is ``mask``; v = g if it is empty);
    ``gm`` gets v if it is not empty."""
    R, L = x.shape
    masked, keep = mask.size > 0, gm.size > 0
    for r in prange(R):
        if keep:
            sg[r], sgx[r] = row_sums(g[r], mask[r], x[r], mean[r], gm[r], True, True)
        elif masked:
            sg[r], sgx[r] = row_sums(g[r], mask[r], x[r], mean[r], gm, True, False)
        else:
            sg[r], sgx[r] = row_sums(g[r], mask, x[r], mean[r], gm, False, False)


def _row_sums(g, mask, x, m, gm, masked, keep):
    """(Σ v, Σ v·(x - m)) of one row, v = g·[mask > 0] if ``masked`` else g, stored in gm if ``keep``."""
    s = 0.0
    sx = 0.0
    for i in range(x.size):
        v = g[i]
        if masked and not mask[i] > 0:
            v = g.dtype.type(0)
        if keep:
            gm[i] = v
        s += np.float64(v)
        sx += np.float64(v) * (np.float64(x[i]) - m)
    return s, sx


def _grad_rows(g, mask, x, mean, alpha, beta, gamma, out):
    """out[r, i] = alpha[r]·v + beta[r]·(x[r, i] - mean[r]) + gamma[r], v = g[r, i]·[mask[r, i] > 0]
    (g if ``mask`` is empty);  out may be g."""
    for r in prange(x.shape[0]):
        if mask.size > 0:
            grad_row(g[r], mask[r], x[r], mean[r], alpha[r], beta[r], gamma[r], out[r], True)
        else:
            grad_row(g[r], mask, x[r], mean[r], alpha[r], beta[r], gamma[r], out[r], False)


def _grad_row(g, mask, x, m, a, b, c, out, masked):
    """One row of grad_rows, v = g·[mask > 0] if ``masked`` else g."""
    for i in range(x.size):
        v = np.float64(g[i])
        if masked and not mask[i] > 0:
            v = 0.0
        out[i] = a * v + b * (np.float64(x[i]) - m) + c


# Channels-last batch norm: x as a (P, C) matrix, one column per channel (P = N·H·W).
# The matrix is walked as one flat array in blocks of B values, B a multiple of C, and
# every per-column coefficient comes tiled to length B (``minicnn.fast.norm.tile``):
# element j of a block belongs to column j mod C.  The inner loop then runs over B
# contiguous values and B coefficients instead of over one row of C (16 channels: a
# loop of 16 restarted 8,192 times per image batch, 1.5-2x slower; docs/performance.md,
# "Batch norm").  The sums are taken per slice t of the blocks (T = the first axis of
# the partial sums, independent of the thread count, so the bits are too) and per
# block position j; the caller folds them into columns.

def tile(coef, C):
    """Per-column coefficients (C,) repeated to a block of B = C·max(1, 64 // C) values, float64."""
    return np.tile(np.asarray(coef, np.float64), max(1, 64 // C))


def fold(partial, C):
    """tile_sums' partial sums (T, B) folded into per-column totals (C,)."""
    return partial.reshape(-1, C).sum(axis=0)


def _tile_sums(u, k, x, m, mask, s1, s2, um):
    """Partial sums of flat (P·C,) arrays per slice t and block position j, float64 (T, B):

        s1[t, j] = Σ (v - k[j]),   s2[t, j] = Σ (v - k[j])·(x - m[j]),   v = u·[mask > 0]

    (v = u if ``mask`` is empty); ``um`` gets v if it is not empty.  The moments are
    u = x, k = m = a tiled shift (the shifted-data algorithm, as row_moments); the
    gradient sums Σg and Σg·(x - mean) are u = g, k = 0, m = mean, with the mask of a
    fused ReLU (its output y) applied on the way."""
    n, B, T = u.size, k.size, s1.shape[0]
    blocks = n // B
    masked, keep = mask.size > 0, um.size > 0
    for t in prange(T):
        i0 = t * blocks // T * B
        i1 = n if t == T - 1 else (t + 1) * blocks // T * B      # the last slice takes the rest
        a1 = np.zeros(B)
        a2 = np.zeros(B)
        base = i0
        while base < i1:
            count = min(B, i1 - base)
            if keep:
                block_sums(u, k, x, m, mask, um, base, count, a1, a2, True, True)
            elif masked:
                block_sums(u, k, x, m, mask, um, base, count, a1, a2, True, False)
            else:
                block_sums(u, k, x, m, mask, um, base, count, a1, a2, False, False)
            base += B
        s1[t, :] = a1
        s2[t, :] = a2


def _block_sums(u, k, x, m, mask, um, base, count, a1, a2, masked, keep):
    """tile_sums' work on the ``count`` values from ``base``, into the running sums a1, a2 (B,)."""
    for j in range(count):
        i, j_ = _u(base + j), _u(j)
        v = u[i]
        if masked and not mask[i] > 0:
            v = u.dtype.type(0)
        if keep:
            um[i] = v
        d = np.float64(v) - k[j_]
        a1[j_] += d
        a2[j_] += d * (np.float64(x[i]) - m[j_])


def _normalize_tiles(x, mean, scale, shift, res, lo, hi, out):
    """out = (x - mean)·scale + shift, plus res if it is not empty, clamped to [lo, hi];
    x, res, out flat (P·C,), the coefficients tiled (B,)."""
    n, B = x.size, mean.size
    for b in prange(-(-n // B)):
        base = b * B
        if res.size > 0:
            normalize_block(x, mean, scale, shift, res, lo, hi, out, base, min(B, n - base), True)
        else:
            normalize_block(x, mean, scale, shift, res, lo, hi, out, base, min(B, n - base), False)


def _normalize_block(x, mean, scale, shift, res, lo, hi, out, base, count, add):
    """normalize_tiles on the ``count`` values from ``base``, adding res if ``add``."""
    for j in range(count):
        i, j_ = _u(base + j), _u(j)
        out[i] = epilogue((np.float64(x[i]) - mean[j_]) * scale[j_] + shift[j_], np.float64(res[i]) if add else 0.0,
                          lo, hi)


def _grad_tiles(g, mask, x, mean, alpha, beta, gamma, out):
    """out = alpha·v + beta·(x - mean) + gamma, v = g·[mask > 0] (g if ``mask`` is empty);
    flat (P·C,) arrays, tiled coefficients (B,);  out may be g."""
    n, B = x.size, mean.size
    for b in prange(-(-n // B)):
        base = b * B
        if mask.size > 0:
            grad_block(g, mask, x, mean, alpha, beta, gamma, out, base, min(B, n - base), True)
        else:
            grad_block(g, mask, x, mean, alpha, beta, gamma, out, base, min(B, n - base), False)


def _grad_block(g, mask, x, mean, alpha, beta, gamma, out, base, count, masked):
    """grad_tiles on the ``count`` values from ``base``, v = g·[mask > 0] if ``masked`` else g."""
    for j in range(count):
        i, j_ = _u(base + j), _u(j)
        v = np.float64(g[i])
        if masked and not mask[i] > 0:
            v = 0.0
        out[i] = alpha[j_] * v + beta[j_] * (np.float64(x[i]) - mean[j_]) + gamma[j_]


# The inline helpers: called with literal flags, each inlined copy is a branch-free loop
# that LLVM vectorizes (with the flags as loop-invariant tests it did not: 3-5x slower).
epilogue = njit(cache=True, inline="always")(_epilogue)
row_sums = njit(cache=True, inline="always")(_row_sums)
grad_row = njit(cache=True, inline="always")(_grad_row)
block_sums = njit(cache=True, inline="always")(_block_sums)
normalize_block = njit(cache=True, inline="always")(_normalize_block)
grad_block = njit(cache=True, inline="always")(_grad_block)
row_moments = njit(**_FLAGS)(_row_moments)
normalize_rows = njit(**_FLAGS)(_normalize_rows)
row_grad_sums = njit(**_FLAGS)(_row_grad_sums)
grad_rows = njit(**_FLAGS)(_grad_rows)
tile_sums = njit(**_FLAGS)(_tile_sums)
normalize_tiles = njit(**_FLAGS)(_normalize_tiles)
grad_tiles = njit(**_FLAGS)(_grad_tiles)


def _serial(fn):
    """``fn`` compiled without ``parallel`` (prange runs as range), GIL released: for callers
    already on a worker thread (the convolution's epilogue, per chunk).  Cached under its own
    name, as Numba's cache key ignores the compile options."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    return njit(cache=True, nogil=True, fastmath=_FLAGS["fastmath"])(twin)


normalize_tiles_serial = _serial(_normalize_tiles)
