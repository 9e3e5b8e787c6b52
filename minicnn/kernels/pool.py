"""Numba kernels for 2-D pooling over a stack of planes.

Every pooling layer is described by its windows, one per output row and column:

    window(oh, ow) = rows [hlo[oh], hhi[oh]) x columns [wlo[ow], whi[ow])

already clipped to the input (padding never holds a value that could win a max
or add to a sum).  Plain, strided, padded, ceil-mode and adaptive pooling differ
only in those bounds, which ``minicnn.ops.pool`` computes, so one kernel serves
each reduction.  Inputs are stacks of planes ``(P, H, W)``, P = N*C, one parallel
task per plane, so backward passes never race.
"""
from numba import njit, prange


def _max_pool(x, hlo, hhi, wlo, whi, y, argmax):
    """y[p, oh, ow] = max of x[p] over the window; argmax[p, oh, ow] = h*W + w of the
    first maximum in row-major order (NaN counts as the maximum).

    x (P, H, W); y (P, Ho, Wo); argmax int32 (P, Ho, Wo)."""
    P, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            for ow in range(Wo):
                best = plane[hlo[oh], wlo[ow]]
                arg = hlo[oh] * W + wlo[ow]
                for h in range(hlo[oh], hhi[oh]):
                    row = plane[h]
                    for w in range(wlo[ow], whi[ow]):
                        v = row[w]
                        if v > best or (v != v and best == best):
                            best = v
                            arg = h * W + w
                y[p, oh, ow] = best
                argmax[p, oh, ow] = arg


def _max_pool_backward(gy, argmax, gx):
    """gx[p, argmax[p, k]] += gy[p, k]; gy, argmax (P, Ho*Wo); gx (P, H*W) overwritten."""
    P, L = gy.shape
    for p in prange(P):
        g = gx[p]
        g[:] = 0
        src = gy[p]
        idx = argmax[p]
        for k in range(L):
            g[idx[k]] += src[k]


def _avg_pool(x, hlo, hhi, wlo, whi, hdiv, wdiv, y):
    """y[p, oh, ow] = (Σ of x[p] over the window) / (hdiv[oh] * wdiv[ow]).

    The divisors are the window's height and width, counted with or without the
    padding (``count_include_pad``) by the caller.  x (P, H, W); y (P, Ho, Wo)."""
    P = x.shape[0]
    Ho, Wo = y.shape[1], y.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(Ho):
            for ow in range(Wo):
                s = 0.0
                for h in range(hlo[oh], hhi[oh]):
                    row = plane[h]
                    for w in range(wlo[ow], whi[ow]):
                        s += row[w]
                y[p, oh, ow] = s / (hdiv[oh] * wdiv[ow])


def _avg_pool_backward(gy, hlo, hhi, wlo, whi, hdiv, wdiv, gx):
    """gx[p, h, w] = Σ over the windows holding (h, w) of gy[p, oh, ow] / (hdiv[oh] * wdiv[ow]).

    gy (P, Ho, Wo); gx (P, H, W) overwritten."""
    P = gx.shape[0]
    Ho, Wo = gy.shape[1], gy.shape[2]
    for p in prange(P):
        plane = gx[p]
        plane[:, :] = 0
        for oh in range(Ho):
            for ow in range(Wo):
                g = gy[p, oh, ow] / (hdiv[oh] * wdiv[ow])
                for h in range(hlo[oh], hhi[oh]):
                    row = plane[h]
                    for w in range(wlo[ow], whi[ow]):
                        row[w] += g


max_pool = njit(cache=True, parallel=True)(_max_pool)
max_pool_backward = njit(cache=True, parallel=True)(_max_pool_backward)
avg_pool = njit(cache=True, parallel=True)(_avg_pool)
avg_pool_backward = njit(cache=True, parallel=True)(_avg_pool_backward)
