"""Dropout (inverted): zero each unit, or each whole channel, with probability p.

    y = x·m / (1 - p),   m ~ Bernoulli(1 - p)     dL/dx = g·m / (1 - p)

The kept units are scaled by 1/(1 - p) in training so that E[y] = x and eval
mode is the identity.  Masks are drawn from ``minicnn.random.default_rng()``,
so ``minicnn.manual_seed`` makes them reproducible.
"""
import numpy as np

from ..random import default_rng
from ..tensor import Function


class Dropout(Function):
    """y = x·mask, with ``mask`` (broadcastable to x) already holding 0 or 1/(1 - p).   dy/dx = mask."""
    @staticmethod
    def forward(ctx, x, mask=None):
        ctx.mask = mask
        return x * mask

    @staticmethod
    def backward(ctx, g):
        return g * ctx.mask


def _dropout(x, p, training, mask_shape, name):
    if not 0 <= p <= 1:
        raise ValueError(f"{name}: probability p must be in [0, 1], got {p}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name}: expected a floating-point input, got dtype {x.dtype}")
    if not training or p == 0:
        return x
    keep = default_rng().random(mask_shape, dtype=np.float32) >= p     # never true for p = 1
    scale = 1 / (1 - p) if p < 1 else 0.0
    return Dropout.apply(x, mask=keep.astype(x.dtype) * x.dtype.type(scale))


def dropout(x, p=0.5, training=True):
    """Zero each element of ``x`` with probability ``p`` and scale the rest by 1/(1 - p);
    the identity when not ``training`` or p = 0.  As ``torch.nn.functional.dropout``."""
    return _dropout(x, p, training, x.shape, "dropout")


def dropout2d(x, p=0.5, training=True):
    """Zero each whole channel of ``x`` (N, C, H, W) with probability ``p`` and scale the
    rest by 1/(1 - p): one draw per (sample, channel).  As ``torch.nn.functional.dropout2d``."""
    if x.ndim != 4:
        raise ValueError(f"dropout2d: expected input of shape (N, C, H, W), got shape {tuple(x.shape)}")
    return _dropout(x, p, training, x.shape[:2] + (1, 1), "dropout2d")
