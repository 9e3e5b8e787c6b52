"""Fast pooling: Numba kernels over slices of planes on the worker threads.

The same Functions as the reference ``minicnn.ops.pool`` (same signatures, same
results), registered as its routes.  The math, from there:

x (N, C, H, W) -> y (N, C, Ho, Wo).  Along each axis, with kernel k, stride s
(default k) and padding p (at most k/2, as PyTorch):

    Ho = ⌊(H + 2p - k) / s⌋ + 1            (ceil_mode: ⌈·⌉ + 1, dropping a last
                                            window that would start in the padding)
    window(oh) = [oh·s - p, oh·s - p + k) ∩ [0, H)

    max:  y = max over the window.  dL/dx goes to one argmax per window, the
          first maximum in row-major order (ties: the top-left one wins), as PyTorch.
    avg:  y = Σ window / divisor; divisor = k_h·k_w clipped to the padded input
          (count_include_pad=True, PyTorch's default) or to the input itself.
    adaptive avg to (Ho, Wo): window(oh) = [⌊oh·H/Ho⌋, ⌈(oh+1)·H/Ho⌉); the
          global case (1, 1) is a plain mean over H·W.

The kernels (``minicnn.fast.kernels.pool``) take the windows as bound arrays, so all
variants share one forward and one backward kernel per reduction; 2x2 stride-2 max
pooling has its own kernels, and of a channels-last x (``minicnn.fast.layout``) runs
in that layout.
"""
import numpy as np

from ..ops import dispatch
from ..tensor import Function
from .kernels import pool as K
from .kernels.reduce import column_sums
from .layout import channels_last, nhwc
from .runtime import parallel_slices

# Elements per worker task at least, for the global pool's light passes: about what
# handing a task to the worker threads costs (docs/performance.md, "Pooling").
_MIN_POOL_ELEMENTS = 1 << 19


def _halving(lo, hi):
    """True if the windows along an axis are [2·o, 2·o + 2): 2x2 stride-2 pooling's."""
    return bool(np.all(hi - lo == 2) and np.array_equal(lo, 2 * np.arange(len(lo))))


class MaxPool2d(Function):
    """y = max over each window; the argmax of each window is saved for backward.  2x2
    stride-2 pooling of a channels-last x (``minicnn.fast.layout.nhwc``) runs in that layout,
    and y and dx keep it."""

    @staticmethod
    def forward(ctx, x, windows, out_hw):
        N, C, H, W = x.shape
        halving = _halving(*windows[:2]) and _halving(*windows[2:4])
        xh = nhwc(x) if halving and channels_last(x) else None
        ctx.x_shape, ctx.channels_last = x.shape, xh is not None
        if xh is not None:
            y = np.empty((N,) + out_hw + (C,), x.dtype)
            argmax = np.empty(y.shape, np.int32)
            parallel_slices(N, lambda s: K.max_pool_2x2_nhwc(xh[s], y[s], argmax[s]))
            ctx.save_for_backward(argmax)
            return y.transpose(0, 3, 1, 2)
        y = np.empty((N * C,) + out_hw, x.dtype)
        argmax = np.empty(y.shape, np.int32)
        planes = np.ascontiguousarray(x).reshape(N * C, H, W)
        if halving:
            parallel_slices(N * C, lambda s: K.max_pool_2x2(planes[s], y[s], argmax[s]))
        else:
            parallel_slices(N * C, lambda s: K.max_pool(planes[s], *windows[:4], y[s], argmax[s]))
        ctx.save_for_backward(argmax)
        return y.reshape(N, C, *out_hw)

    @staticmethod
    def backward(ctx, gy):
        (argmax,) = ctx.saved
        N, C, H, W = ctx.x_shape
        if ctx.channels_last:
            gx = np.empty((N, H, W, C), gy.dtype)
            gh = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
            parallel_slices(N, lambda s: K.max_pool_2x2_nhwc_backward(gh[s], argmax[s], gx[s]))
            return gx.transpose(0, 3, 1, 2)
        gx = np.empty((N * C, H * W), gy.dtype)
        L = gy.shape[2] * gy.shape[3]
        gy, argmax = np.ascontiguousarray(gy).reshape(N * C, L), argmax.reshape(N * C, L)
        parallel_slices(N * C, lambda s: K.max_pool_backward(gy[s], argmax[s], gx[s]))
        return gx.reshape(ctx.x_shape)


class AvgPool2d(Function):
    """y = Σ window / divisor, windows and divisors given as bound arrays."""

    @staticmethod
    def forward(ctx, x, windows, out_hw):
        N, C, H, W = x.shape
        y = np.empty((N * C,) + out_hw, x.dtype)
        planes = np.ascontiguousarray(x).reshape(N * C, H, W)
        parallel_slices(N * C, lambda s: K.avg_pool(planes[s], *windows, y[s]))
        ctx.windows, ctx.x_shape = windows, x.shape
        return y.reshape(N, C, *out_hw)

    @staticmethod
    def backward(ctx, gy):
        N, C, H, W = ctx.x_shape
        gx = np.empty((N * C, H, W), gy.dtype)
        gy = np.ascontiguousarray(gy).reshape(N * C, *gy.shape[2:])
        parallel_slices(N * C, lambda s: K.avg_pool_backward(gy[s], *ctx.windows, gx[s]))
        return gx.reshape(ctx.x_shape)


class GlobalAvgPool2d(Function):
    """y[n, c] = mean of x[n, c] over H·W (summed in float64), kept as (N, C, 1, 1);
    dx = dy / (H·W) everywhere.  Numba passes over slices of planes on the worker threads;
    a channels-last x (``minicnn.fast.layout.nhwc``) is reduced in its own layout, and dx keeps it."""

    @staticmethod
    def forward(ctx, x):
        ctx.x_shape = N, C, H, W = x.shape
        xh = nhwc(x) if channels_last(x) else None
        ctx.channels_last = xh is not None
        if xh is not None:
            images, sums = xh.reshape(N, H * W, C), np.empty((N, C))
            parallel_slices(N, lambda s: column_sums(images[s], sums[s]), max(1, _MIN_POOL_ELEMENTS // x[0].size))
            return (sums / (H * W)).astype(x.dtype).reshape(N, C, 1, 1)
        planes = np.ascontiguousarray(x).reshape(N * C, H * W)
        y = np.empty(N * C, x.dtype)
        parallel_slices(N * C, lambda s: K.plane_means(planes[s], y[s]), max(1, _MIN_POOL_ELEMENTS // (H * W)))
        return y.reshape(N, C, 1, 1)

    @staticmethod
    def backward(ctx, gy):
        N, C, H, W = ctx.x_shape
        if ctx.channels_last:
            gx = np.empty((N, H * W, C), gy.dtype)
            gx[...] = gy.reshape(N, 1, C) / (H * W)
            return gx.reshape(N, H, W, C).transpose(0, 3, 1, 2)
        gx = np.empty((N * C, H * W), gy.dtype)
        g = np.ascontiguousarray(gy).reshape(N * C)
        parallel_slices(N * C, lambda s: K.fill_planes(g[s], gx[s]), max(1, _MIN_POOL_ELEMENTS // (H * W)))
        return gx.reshape(ctx.x_shape)


for _op, _fn in (("max_pool2d", MaxPool2d), ("avg_pool2d", AvgPool2d), ("global_avg_pool2d", GlobalAvgPool2d)):
    dispatch.register(_op, lambda key, route, fn=_fn: fn, ("numba",))
