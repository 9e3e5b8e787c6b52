"""Numba kernels for 2-D pooling over a stack of planes.

Every pooling layer is described by its windows, one per output row and column:

    window(oh, ow) = rows [hlo[oh], hhi[oh]) x columns [wlo[ow], whi[ow])

already clipped to the input (padding never holds a value that could win a max
or add to a sum).  Plain, strided, padded, ceil-mode and adaptive pooling differ
only in those bounds, which ``minicnn.ops.pool`` computes, so one kernel serves
each reduction.  Inputs are stacks of planes ``(P, H, W)``, P = N*C.  The kernels
are serial and release the GIL; ``minicnn.ops.pool`` runs slices of planes on the
worker threads (see ``minicnn.fast.runtime``), and since planes are independent the
backward passes never race.
"""
import numpy as np
from numba import njit

from .norm import epilogue

# Never-negative indices are cast to unsigned only where they index (no wraparound
# check, see kernels/conv.py); arithmetic stays signed, as uint64 op int64 is float64.
_u = np.uint64


def _max_pool(x, hlo, hhi, wlo, whi, y, argmax):
    """y[p, oh, ow] = max of x[p] over the window; argmax[p, oh, ow] = h*W + w of the
    first maximum in row-major order (a NaN in the window wins: the last one, as PyTorch).

    x (P, H, W); y (P, Ho, Wo); argmax int32 (P, Ho, Wo)."""
    P, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for p in range(P):
        p_ = _u(p)
        for oh in range(Ho):
            for ow in range(Wo):
                h0, w0 = hlo[oh], wlo[ow]
                best = x[p_, _u(h0), _u(w0)]
                arg = h0 * W + w0
                for h in range(h0, hhi[oh]):
                    for w in range(w0, whi[ow]):
                        v = x[p_, _u(h), _u(w)]
                        if v > best or v != v:   # NaN propagates, as in PyTorch
                            best = v
                            arg = h * W + w
                y[p_, _u(oh), _u(ow)] = best
                argmax[p_, _u(oh), _u(ow)] = arg


def _max_pool_2x2(x, y, argmax):
    """``_max_pool`` for the windows [2·oh, 2·oh + 2) x [2·ow, 2·ow + 2), the common
    2x2 stride-2 pooling, with the same results: the four taps are unrolled and the
    comparisons become selects, which LLVM vectorizes (~4x faster than the loop)."""
    P, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for p in range(P):
        p_ = _u(p)
        for oh in range(Ho):
            h = 2 * oh
            for ow in range(Wo):
                w = _u(2 * ow)
                best = x[p_, _u(h), w]
                arg = h * W + 2 * ow
                for k in range(1, 4):
                    v = x[p_, _u(h + k // 2), w + _u(k % 2)]
                    take = v > best or v != v   # NaN propagates, as in PyTorch
                    best = v if take else best
                    arg = h * W + 2 * ow + (k // 2) * W + k % 2 if take else arg
                y[p_, _u(oh), _u(ow)] = best
                argmax[p_, _u(oh), _u(ow)] = arg


def _max_pool_2x2_nhwc(x, y, argmax):
    """``_max_pool_2x2`` on channels-last memory: x (N, H, W, C); y and argmax (N, Ho, Wo, C),
    argmax the index h*W + w within the plane, as the NCHW kernels.  The channel loop is
    innermost, so the selects vectorize across channels."""
    N, H, W, C = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for n in range(N):
        n_ = _u(n)
        for oh in range(Ho):
            h = _u(2 * oh)
            for ow in range(Wo):
                w = _u(2 * ow)
                base = 2 * oh * W + 2 * ow
                for c in range(C):
                    c_ = _u(c)
                    best = x[n_, h, w, c_]
                    arg = base
                    for k in range(1, 4):
                        v = x[n_, h + _u(k // 2), w + _u(k % 2), c_]
                        take = v > best or v != v   # NaN propagates, as in PyTorch
                        best = v if take else best
                        arg = base + (k // 2) * W + k % 2 if take else arg
                    y[n_, _u(oh), _u(ow), c_] = best
                    argmax[n_, _u(oh), _u(ow), c_] = arg


def _max_pool_2x2_nhwc_backward(gy, argmax, gx):
    """The backward of ``_max_pool_2x2_nhwc``: gx (N, H, W, C) = gy at each window's argmax,
    0 elsewhere (everywhere in a window whose argmax is -1, see ``_max_pool_2x2_epilogue``).
    The windows do not overlap, so every pixel is written once, with a select."""
    N, H, W, C = gx.shape
    Ho, Wo = gy.shape[1], gy.shape[2]
    for n in range(N):
        n_ = _u(n)
        for h in range(2 * Ho, H):           # an odd last row or column lies in no window
            for w in range(W):
                for c in range(C):
                    gx[n_, _u(h), _u(w), _u(c)] = 0
        for h in range(2 * Ho):
            for w in range(2 * Wo, W):
                for c in range(C):
                    gx[n_, _u(h), _u(w), _u(c)] = 0
        for oh in range(Ho):
            for ow in range(Wo):
                base = 2 * oh * W + 2 * ow
                for k in range(4):
                    h, w = _u(2 * oh + k // 2), _u(2 * ow + k % 2)
                    at = base + (k // 2) * W + k % 2
                    for c in range(C):
                        c_ = _u(c)
                        g = gy[n_, _u(oh), _u(ow), c_]
                        gx[n_, h, w, c_] = g if argmax[n_, _u(oh), _u(ow), c_] == at else 0


def _max_pool_backward(gy, argmax, gx):
    """gx[p, argmax[p, k]] += gy[p, k]; gy, argmax (P, Ho*Wo); gx (P, H*W) overwritten."""
    P, L = gy.shape
    for p in range(P):
        p_ = _u(p)
        for k in range(gx.shape[1]):
            gx[p_, _u(k)] = 0
        for k in range(L):
            gx[p_, _u(argmax[p_, _u(k)])] += gy[p_, _u(k)]


def _avg_pool(x, hlo, hhi, wlo, whi, hdiv, wdiv, y):
    """y[p, oh, ow] = (Σ of x[p] over the window) / (hdiv[oh] * wdiv[ow]).

    The divisors are the window's height and width, counted with or without the
    padding (``count_include_pad``) by the caller.  x (P, H, W); y (P, Ho, Wo)."""
    P = x.shape[0]
    Ho, Wo = y.shape[1], y.shape[2]
    for p in range(P):
        p_ = _u(p)
        for oh in range(Ho):
            for ow in range(Wo):
                s = 0.0
                for h in range(hlo[oh], hhi[oh]):
                    for w in range(wlo[ow], whi[ow]):
                        s += x[p_, _u(h), _u(w)]
                y[p_, _u(oh), _u(ow)] = s / (hdiv[oh] * wdiv[ow])


def _avg_pool_backward(gy, hlo, hhi, wlo, whi, hdiv, wdiv, gx):
    """gx[p, h, w] = Σ over the windows holding (h, w) of gy[p, oh, ow] / (hdiv[oh] * wdiv[ow]).

    gy (P, Ho, Wo); gx (P, H, W) overwritten."""
    P, H, W = gx.shape
    Ho, Wo = gy.shape[1], gy.shape[2]
    for p in range(P):
        p_ = _u(p)
        for h in range(H):
            for w in range(W):
                gx[p_, _u(h), _u(w)] = 0
        for oh in range(Ho):
            for ow in range(Wo):
                g = gy[p_, _u(oh), _u(ow)] / (hdiv[oh] * wdiv[ow])
                for h in range(hlo[oh], hhi[oh]):
                    for w in range(wlo[ow], whi[ow]):
                        gx[p_, _u(h), _u(w)] += g


def _plane_means(x, y):
    """y[p] = Σ x[p] / L, summed in float64 (whatever x's dtype); x (P, L), y (P,).

    The global average pool's forward; ``reassoc`` (below) lets LLVM vectorize the sum."""
    P, L = x.shape
    for p in range(P):
        s = 0.0
        for i in range(L):
            s += x[_u(p), _u(i)]
        y[_u(p)] = s / L


def _fill_planes(gy, gx):
    """gx[p, :] = gy[p] / L: the global average pool's backward; gy (P,), gx (P, L)."""
    P, L = gx.shape
    for p in range(P):
        g = gy[_u(p)] / L
        for i in range(L):
            gx[_u(p), _u(i)] = g


def _max_pool_2x2_epilogue(pre, scale, shift, res, lo, hi, y, argmax, gate):
    """A convolution's epilogue with the pooling after it: y = 2x2 max pooling (stride 2,
    floor) of act(pre·scale + shift + res), act the clamp to [lo, hi] (ReLU: [0, inf)),
    all channels-last: pre, res (n, H, W, C) (res may be empty), y (n, H // 2, W // 2, C);
    scale, shift (C,) float64.  The activation runs before the max because the scale may
    be negative; a NaN wins, as in ``_max_pool_2x2_nhwc``.

    For training, ``argmax`` (y's shape, int32; empty: not wanted) gets each window's
    winner as ``_max_pool_2x2_nhwc`` gives it (h·W + w), or -1 where ``gate`` and the
    winner is clamped (not lo < y < hi, NaN included): the activation passes no gradient
    there, as ReLU's and ReLU6's backward (dy/dx = [lo < x < hi]), so the pooling's
    backward (``_max_pool_2x2_nhwc_backward``) writes 0 for that window.

    Without a residual and with every scale > 0, the epilogue is non-decreasing in pre (so
    is its rounding), so it runs on each window's maximum only: the same y, and the same
    winners where the gradient passes (with scale 1 and shift 0, as in training, the
    epilogue is exact up to the clamp)."""
    record = argmax.size > 0
    first = res.size == 0
    for c in range(scale.shape[0]):
        first = first and scale[c] > 0
    for i in range(pre.shape[0]):
        if first and record:
            pooled_image(pre[i], scale, shift, res, lo, hi, y[i], argmax[i], gate, False, True, True)
        elif first:
            pooled_image(pre[i], scale, shift, res, lo, hi, y[i], argmax, gate, False, False, True)
        elif res.size > 0 and record:
            pooled_image(pre[i], scale, shift, res[i], lo, hi, y[i], argmax[i], gate, True, True, False)
        elif res.size > 0:
            pooled_image(pre[i], scale, shift, res[i], lo, hi, y[i], argmax, gate, True, False, False)
        elif record:
            pooled_image(pre[i], scale, shift, res, lo, hi, y[i], argmax[i], gate, False, True, False)
        else:
            pooled_image(pre[i], scale, shift, res, lo, hi, y[i], argmax, gate, False, False, False)


def _pooled_image(pre, scale, shift, res, lo, hi, y, argmax, gate, add, record, first):
    """One image of max_pool_2x2_epilogue, adding res if ``add``, writing argmax if
    ``record``, and with ``first`` the epilogue on each window's maximum only (literals:
    the loops stay branch-free)."""
    Ho, Wo, C = y.shape
    W = pre.shape[1]
    for oh in range(Ho):
        for ow in range(Wo):
            base = 2 * oh * W + 2 * ow
            for c in range(C):
                c_ = _u(c)
                best = 0.0
                arg = base
                for k in range(4):
                    h, w = _u(2 * oh + k // 2), _u(2 * ow + k % 2)
                    v = np.float64(pre[h, w, c_])
                    if not first:
                        v = epilogue(v * scale[c_] + shift[c_], np.float64(res[h, w, c_]) if add else 0.0, lo, hi)
                    take = k == 0 or v > best or v != v
                    best = v if take else best
                    arg = base + (k // 2) * W + k % 2 if take else arg
                if first:
                    best = epilogue(best * scale[c_] + shift[c_], 0.0, lo, hi)
                y[_u(oh), _u(ow), c_] = best
                if record:
                    argmax[_u(oh), _u(ow), c_] = arg if not gate or lo < best < hi else -1


pooled_image = njit(cache=True, inline="always")(_pooled_image)
max_pool_2x2_epilogue = njit(cache=True, nogil=True)(_max_pool_2x2_epilogue)
max_pool = njit(cache=True, nogil=True)(_max_pool)
max_pool_2x2 = njit(cache=True, nogil=True)(_max_pool_2x2)
max_pool_backward = njit(cache=True, nogil=True)(_max_pool_backward)
max_pool_2x2_nhwc = njit(cache=True, nogil=True)(_max_pool_2x2_nhwc)
max_pool_2x2_nhwc_backward = njit(cache=True, nogil=True)(_max_pool_2x2_nhwc_backward)
avg_pool = njit(cache=True, nogil=True)(_avg_pool)
avg_pool_backward = njit(cache=True, nogil=True)(_avg_pool_backward)
plane_means = njit(cache=True, nogil=True, fastmath={"reassoc"})(_plane_means)
fill_planes = njit(cache=True, nogil=True)(_fill_planes)
