"""Numba kernel for sums over the pixels of channels-last data, in float64.

Used where the reduced axis is not the contiguous one: the bias gradient of a
convolution whose output gradient is channels-last (Σ over images and pixels per
channel), and the global average pool of a channels-last input (per image).  NumPy's
``a.sum(axis=0, dtype=np.float64)`` on a float32 (M, C) matrix casts through small
buffers and ran at half the speed of this kernel here.
"""
import numpy as np
from numba import njit

_u = np.uint64  # never-negative indices skip the wraparound check (see kernels/conv.py)


def _column_sums(x, out):
    """out[n, c] = Σ_l x[n, l, c], summed in float64; x (N, L, C), out (N, C) float64.

    Four pixels per pass over the channels, so the running sums are loaded and stored
    once per four pixels (the channel loop, innermost, vectorizes)."""
    N, L, C = x.shape
    for n in range(N):
        n_ = _u(n)
        for c in range(C):
            out[n_, _u(c)] = 0
        q = 0
        while q + 4 <= L:
            for c in range(C):
                c_ = _u(c)
                out[n_, c_] += ((np.float64(x[n_, _u(q), c_]) + np.float64(x[n_, _u(q + 1), c_]))
                                + (np.float64(x[n_, _u(q + 2), c_]) + np.float64(x[n_, _u(q + 3), c_])))
            q += 4
        for r in range(q, L):
            for c in range(C):
                out[n_, _u(c)] += x[n_, _u(r), _u(c)]


column_sums = njit(cache=True, nogil=True)(_column_sums)
