"""Channels-last memory behind NCHW shapes, as PyTorch's ``channels_last`` memory format.

The GEMM convolution routes write their output, and their input gradient, with NHWC
memory behind the (N, C, H, W) shape: shapes, values and every API stay NCHW, only the
strides differ (``y.transpose(0, 2, 3, 1)`` is contiguous).  The fast routes that work
in that layout (convolution, batch norm, ReLU, max pooling) ask for it here and so skip
two layout moves per convolution; every other op sees a non-contiguous NCHW array.
"""
import numpy as np

# Empty arrays of each dtype and rank for kernel arguments that are absent ("no bias",
# "no gradient wanted", "no residual", "no argmax"): EMPTY[dtype][ndim].
EMPTY = {np.dtype(t): {d: np.empty((0,) * d, t) for d in (1, 2, 3, 4)} for t in (np.float32, np.float64, np.int32)}


def nhwc(a):
    """The memory of a channels-last (N, C, H, W) array as a C-contiguous (N, H, W, C) view, or None."""
    if a.ndim == 4:
        t = a.transpose(0, 2, 3, 1)
        if t.flags.c_contiguous:
            return t
    return None


def channels_last(a):
    """True if the strides of a 4-D array (N, C, H, W) order its memory as (N, H, W, C),
    dense or not (e.g. ``x[:, :, ::2, ::2]`` of a channels-last x), and it is not C-contiguous."""
    return a.ndim == 4 and not a.flags.c_contiguous and a.strides[1] < a.strides[3] < a.strides[2] < a.strides[0]
