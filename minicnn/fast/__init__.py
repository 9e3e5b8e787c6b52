"""Speed, as plug-ins: everything in minicnn that exists only to be fast.

Each module registers routes for the reference ops of ``minicnn.ops`` (through
``minicnn.ops.dispatch``), computing the same functions faster; each route is tested
equal to its reference.  Importing ``minicnn`` imports this package, so the routes run
by default; ``minicnn.reference_mode()`` switches them off.

    conv/       convolution routes (im2row, pointwise, im2col, row taps, Winograd, depthwise)
    norm        batch/instance/group/layer norm on Numba kernels; fused batch norm + ReLU
    pool        max/average pooling on Numba kernels
    activation  ReLU on the worker threads;  linear  large linear layers on two workers
    layout      channels-last memory behind NCHW shapes
    runtime     the worker threads, and the process settings the routes need
    kernels/    the Numba kernels (plain functions compiled with ``njit``) and the BLAS binding
"""
from . import activation, conv, linear, norm, pool
from .conv import conv2d_fused
from .norm import batch_norm_fused
from .runtime import configure, settings

__all__ = ["activation", "batch_norm_fused", "configure", "conv", "conv2d_fused", "linear", "norm", "pool",
           "settings"]
