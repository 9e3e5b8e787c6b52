"""Reductions: sum, mean, max, min, var over an axis, a tuple of axes, or all.

The backward of every reduction broadcasts the output gradient back over the
reduced axes (:func:`expand_reduced`).
"""
import numpy as np

from ..tensor import Function
from .util import expand_reduced, normalize_axes


class Sum(Function):
    """y = Σ_axes x.   dy/dx = 1."""
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.shape, ctx.keepdims = normalize_axes(axis, x.ndim), x.shape, keepdims
        return np.asarray(x.sum(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        return expand_reduced(g, ctx.axes, ctx.shape, ctx.keepdims)


class Mean(Function):
    """y = (1/n) Σ_axes x, n = number of reduced elements.   dy/dx = 1/n."""
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.shape, ctx.keepdims = normalize_axes(axis, x.ndim), x.shape, keepdims
        ctx.n = int(np.prod([x.shape[a] for a in ctx.axes]))
        return np.asarray(x.mean(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        return expand_reduced(g / ctx.n, ctx.axes, ctx.shape, ctx.keepdims)


class Extremum(Function):
    """y = max (or min) over axes.  The gradient is shared equally among tied maxima
    (as ``torch.amax``): dy/dx_i = [x_i == y] / #ties."""
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False, largest=True):
        axes = normalize_axes(axis, x.ndim)
        y = (x.max if largest else x.min)(axis=axes, keepdims=True)
        ctx.save_for_backward(x, y)
        ctx.axes, ctx.keepdims = axes, keepdims
        return np.asarray(y if keepdims else np.squeeze(y, axes))

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved
        mask = x == y
        share = mask / mask.sum(axis=ctx.axes, keepdims=True)
        return expand_reduced(g, ctx.axes, x.shape, ctx.keepdims) * share.astype(x.dtype)


class Var(Function):
    """y = Σ_axes (x - x̄)² / (n - ddof).   dy/dx = 2 (x - x̄) / (n - ddof)."""
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False, ddof=0):
        axes = normalize_axes(axis, x.ndim)
        centred = x - x.mean(axis=axes, keepdims=True)
        ctx.save_for_backward(centred)
        ctx.axes, ctx.keepdims = axes, keepdims
        ctx.denom = int(np.prod([x.shape[a] for a in axes])) - ddof
        return np.asarray((centred * centred).sum(axis=axes, keepdims=keepdims) / ctx.denom)

    @staticmethod
    def backward(ctx, g):
        centred, = ctx.saved
        return expand_reduced(g, ctx.axes, centred.shape, ctx.keepdims) * (2 / ctx.denom) * centred


def sum(x, axis=None, keepdims=False): return Sum.apply(x, axis=axis, keepdims=keepdims)  # noqa: A001
def mean(x, axis=None, keepdims=False): return Mean.apply(x, axis=axis, keepdims=keepdims)
def max(x, axis=None, keepdims=False): return Extremum.apply(x, axis=axis, keepdims=keepdims, largest=True)  # noqa: A001
def min(x, axis=None, keepdims=False): return Extremum.apply(x, axis=axis, keepdims=keepdims, largest=False)  # noqa: A001
def var(x, axis=None, keepdims=False, ddof=0): return Var.apply(x, axis=axis, keepdims=keepdims, ddof=ddof)
