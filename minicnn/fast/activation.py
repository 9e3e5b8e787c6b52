"""Fast ReLU: Numba passes over slices on the worker threads, in the input's own layout.

The same function as ``minicnn.ops.activation.ReLU``, registered as its route; a
channels-last x (``minicnn.fast.layout``) is worked on in its own memory order and y
keeps that layout.
"""
import numpy as np

from ..ops import dispatch
from ..tensor import Function
from .kernels import activation as K
from .layout import nhwc
from .runtime import parallel_slices

_SLICE = 1 << 16   # elements per worker task at least: below that, threads cost more than they save


class ReLU(Function):
    """y = max(x, 0), dy/dx = [x > 0], in slices on the worker threads (see the module docstring)."""
    @staticmethod
    def forward(ctx, x):
        ctx.channels_last = not x.flags.c_contiguous and nhwc(x) is not None
        x = nhwc(x) if ctx.channels_last else np.asarray(x, order="C")  # (ascontiguousarray makes 0-d 1-d)
        y = np.empty_like(x)
        xf, yf = x.reshape(-1), y.reshape(-1)
        parallel_slices(x.size, lambda s: K.relu(xf[s], yf[s]), _SLICE)
        ctx.save_for_backward(y)
        return y.transpose(0, 3, 1, 2) if ctx.channels_last else y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved                   # in the memory order the forward pass worked in
        g = np.ascontiguousarray(g.transpose(0, 2, 3, 1)) if ctx.channels_last else np.asarray(g, order="C")
        gx = relu_grad(g, y)
        return gx.transpose(0, 3, 1, 2) if ctx.channels_last else gx


def relu_grad(g, y):
    """g where y > 0, else 0 (PyTorch's threshold_backward), as a new array; g and y
    C-contiguous of one shape.  Large arrays run in slices on the worker threads."""
    gx = np.empty_like(g)
    gf, yf, gxf = g.reshape(-1), y.reshape(-1), gx.reshape(-1)
    parallel_slices(g.size, lambda s: K.relu_backward(gf[s], yf[s], gxf[s]), _SLICE)
    return gx



dispatch.register("relu", lambda key, route: ReLU, ("numba",))
