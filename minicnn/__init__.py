"""minicnn: a convolutional-network engine written from scratch on NumPy and Numba."""
from . import _runtime  # noqa: F401  (thread-pool settings; must run before numpy starts)
from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor
from .random import manual_seed
from . import ops, nn, optim  # noqa: E402

__version__ = "0.1.0"
