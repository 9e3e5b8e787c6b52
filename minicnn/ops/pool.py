"""2-D pooling: max, average and global average, one output pixel at a time: the reference.

x (N, C, H, W) -> y (N, C, Ho, Wo).  The caller gives each output row oh its
input rows [hlo[oh], hhi[oh]) and each output column ow its input columns
[wlo[ow], whi[ow]), already clipped to the image (padding never wins a max and
adds only zeros to a sum).  With kernel k, stride s and padding p the window of
output row oh is [oh·s - p, oh·s - p + k) ∩ [0, H), and likewise for columns.

    max:  y[n, c, oh, ow] = max of x[n, c, window]
          dL/dx: dL/dy goes to one input per window, its argmax: the first
          maximum in row-major order (ties: the top-left one wins), as PyTorch.
          Overlapping windows that share an argmax add their gradients.
    avg:  y[n, c, oh, ow] = Σ x[n, c, window] / (hdiv[oh]·wdiv[ow])
          dL/dx[window] += dL/dy[n, c, oh, ow] / (hdiv[oh]·wdiv[ow])
          (the divisor counts the zero padding or not: the caller decides.)
    global avg:  y[n, c] = mean of x[n, c] over H·W;  dL/dx = dL/dy / (H·W).

Output size along an axis: Ho = ⌊(H + 2p - k) / s⌋ + 1 (ceil_mode: ⌈·⌉ + 1, dropping a
last window that would start in the padding); adaptive pooling to Ho rows uses the
windows [⌊oh·H/Ho⌋, ⌈(oh+1)·H/Ho⌉).  ``minicnn.fast.pool`` runs the same Functions
on Numba kernels.
"""
import numpy as np

from ..tensor import Function
from . import dispatch
from .checks import as_pair, check_float_input


class MaxPool2d(Function):
    """y = max over each window; the flat index (h·W + w) of each window's argmax is
    kept for backward.  windows = (hlo, hhi, wlo, whi, hdiv, wdiv) (hdiv, wdiv unused)."""

    @staticmethod
    def forward(ctx, x, windows, out_hw):
        hlo, hhi, wlo, whi = windows[:4]
        N, C, H, W = x.shape
        y = np.empty((N, C) + tuple(out_hw), x.dtype)
        argmax = np.empty((N, C) + tuple(out_hw), np.int64)   # flat index into the H·W plane
        for oh in range(out_hw[0]):
            for ow in range(out_hw[1]):
                window = x[:, :, hlo[oh]:hhi[oh], wlo[ow]:whi[ow]]
                width = window.shape[3]
                flat = window.reshape(N, C, window.shape[2] * width)   # row-major order within the window
                k = flat.argmax(axis=2)                        # the first maximum
                y[:, :, oh, ow] = np.take_along_axis(flat, k[:, :, None], axis=2)[:, :, 0]
                argmax[:, :, oh, ow] = (hlo[oh] + k // width) * W + wlo[ow] + k % width
        ctx.save_for_backward(argmax)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, gy):
        (argmax,) = ctx.saved
        N, C, H, W = ctx.x_shape
        gx = np.zeros((N * C, H * W), gy.dtype)
        planes = np.arange(N * C)[:, None]                     # (N·C, 1) row of each plane
        # add.at, not gx[...] += ...: overlapping windows may share an argmax and must add up.
        L = gy.shape[2] * gy.shape[3]
        np.add.at(gx, (planes, argmax.reshape(N * C, L)), gy.reshape(N * C, L))
        return gx.reshape(N, C, H, W)


class AvgPool2d(Function):
    """y = Σ window / (hdiv[oh]·wdiv[ow]); windows = (hlo, hhi, wlo, whi, hdiv, wdiv)."""

    @staticmethod
    def forward(ctx, x, windows, out_hw):
        hlo, hhi, wlo, whi, hdiv, wdiv = windows
        N, C = x.shape[:2]
        y = np.empty((N, C) + tuple(out_hw), x.dtype)
        for oh in range(out_hw[0]):
            for ow in range(out_hw[1]):
                window = x[:, :, hlo[oh]:hhi[oh], wlo[ow]:whi[ow]]
                y[:, :, oh, ow] = window.sum(axis=(2, 3)) / (hdiv[oh] * wdiv[ow])
        ctx.windows, ctx.x_shape = windows, x.shape
        return y

    @staticmethod
    def backward(ctx, gy):
        hlo, hhi, wlo, whi, hdiv, wdiv = ctx.windows
        gx = np.zeros(ctx.x_shape, gy.dtype)
        for oh in range(gy.shape[2]):
            for ow in range(gy.shape[3]):
                share = gy[:, :, oh, ow] / (hdiv[oh] * wdiv[ow])   # (N, C): each input's part
                gx[:, :, hlo[oh]:hhi[oh], wlo[ow]:whi[ow]] += share[:, :, None, None]
        return gx


class GlobalAvgPool2d(Function):
    """y[n, c] = mean of x[n, c] over H·W, kept as (N, C, 1, 1); dL/dx = dL/dy / (H·W)."""

    @staticmethod
    def forward(ctx, x):
        ctx.x_shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        H, W = ctx.x_shape[2:]
        return np.broadcast_to(gy / (H * W), ctx.x_shape).copy()


def _axis_windows(size, k, s, p, ceil_mode):
    """Output length and (lo, hi, padded length) bound arrays of a pooling axis."""
    span = size + 2 * p - k
    n = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n - 1) * s >= size + p:
        n -= 1
    start = np.arange(n) * s - p
    end = np.minimum(start + k, size + p)
    lo, hi = np.maximum(start, 0), np.minimum(end, size)
    return n, lo.astype(np.int64), hi.astype(np.int64), (end - start).astype(np.int64)


def _pool_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad, layer):
    check_float_input(x, layer)
    k = as_pair(kernel_size, "kernel_size", layer, 1)
    s = k if stride is None else as_pair(stride, "stride", layer, 1)
    p = as_pair(padding, "padding", layer, 0)
    H, W = x.shape[2:]
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{layer}: padding {p} must be at most half the kernel size {k}")
    if H + 2 * p[0] < k[0] or W + 2 * p[1] < k[1]:
        raise ValueError(f"{layer}: kernel {k} is larger than the padded input "
                         f"{(H + 2 * p[0], W + 2 * p[1])} of input {tuple(x.shape)}")
    Ho, hlo, hhi, hpad = _axis_windows(H, k[0], s[0], p[0], ceil_mode)
    Wo, wlo, whi, wpad = _axis_windows(W, k[1], s[1], p[1], ceil_mode)
    if count_include_pad:
        hdiv, wdiv = hpad, wpad
    else:
        hdiv, wdiv = hhi - hlo, whi - wlo
    return (hlo, hhi, wlo, whi, hdiv.astype(x.dtype), wdiv.astype(x.dtype)), (Ho, Wo)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling as ``torch.nn.functional.max_pool2d`` (no dilation).

    x (N, C, H, W) -> (N, C, Ho, Wo); ``stride`` defaults to ``kernel_size``; the
    gradient goes to the first maximum of each window in row-major order."""
    windows, out_hw = _pool_windows(x, kernel_size, stride, padding, ceil_mode, True, "max_pool2d")
    return _run("max_pool2d", MaxPool2d, x, windows=windows, out_hw=out_hw)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling as ``torch.nn.functional.avg_pool2d``.

    x (N, C, H, W) -> (N, C, Ho, Wo); ``stride`` defaults to ``kernel_size``;
    ``count_include_pad`` divides by the window size including the zero padding."""
    windows, out_hw = _pool_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad, "avg_pool2d")
    return _run("avg_pool2d", AvgPool2d, x, windows=windows, out_hw=out_hw)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling as ``torch.nn.functional.adaptive_avg_pool2d``.

    x (N, C, H, W) -> (N, C, Ho, Wo) with ``output_size`` an int or a pair (None keeps
    that input size); output row oh averages rows [⌊oh·H/Ho⌋, ⌈(oh+1)·H/Ho⌉)."""
    layer = "adaptive_avg_pool2d"
    check_float_input(x, layer)
    H, W = x.shape[2:]
    size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(size) != 2:
        raise TypeError(f"{layer}: output_size must be an int or a pair, got {output_size!r}")
    Ho, Wo = as_pair(tuple(n if s is None else s for s, n in zip(size, (H, W))), "output_size", layer, 1)
    if (Ho, Wo) == (1, 1):
        return _run("global_avg_pool2d", GlobalAvgPool2d, x)
    windows = []
    for n_in, n_out in ((H, Ho), (W, Wo)):
        o = np.arange(n_out)
        lo, hi = (o * n_in) // n_out, -((-(o + 1) * n_in) // n_out)
        windows.append((lo, hi, (hi - lo).astype(x.dtype)))
    (hlo, hhi, hdiv), (wlo, whi, wdiv) = windows
    return _run("avg_pool2d", AvgPool2d, x, windows=(hlo, hhi, wlo, whi, hdiv, wdiv), out_hw=(Ho, Wo))


def _run(op, reference, x, **options):
    return dispatch.implementation(op, reference, None).apply(x, **options)
