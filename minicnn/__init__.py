"""minicnn: a convolutional-network engine written from scratch on NumPy and Numba.

``import minicnn`` registers the fast routes of ``minicnn.fast`` for the reference ops
of ``minicnn.ops``; it changes nothing in the process.  The first fast route that runs
applies the thread and allocator settings described in ``minicnn.fast.runtime``.
"""
from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor
from .random import manual_seed
from . import ops, fast, nn, optim  # noqa: E402
from .ops.dispatch import reference_mode

__version__ = "0.1.0"
