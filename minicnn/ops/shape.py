"""Shape ops: reshape, transpose/permute, flatten, squeeze/unsqueeze, indexing,
concatenate/stack and constant padding.  None of them change values, so each
backward just moves the gradient back to where the values came from."""
import numpy as np

from ..tensor import Function, Tensor
from .util import empty_in_order, memory_order, normalize_axes


class Reshape(Function):
    """y = x viewed with a new shape (one -1 allowed)."""
    @staticmethod
    def forward(ctx, x, shape=None):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Transpose(Function):
    """y = x with its axes permuted (reversed when ``axes`` is None)."""
    @staticmethod
    def forward(ctx, x, axes=None):
        axes = tuple(reversed(range(x.ndim))) if axes is None else axes
        ctx.inverse = tuple(np.argsort(axes))
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(ctx.inverse)


class GetItem(Function):
    """y = x[index] for slices, ints, None, Ellipsis, bool masks and integer arrays.

    Integer-array indexing may pick an element more than once, so the backward
    scatters with ``np.add.at`` (duplicates accumulate); basic slicing assigns.
    """
    @staticmethod
    def forward(ctx, x, index=None):
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        ctx.order = memory_order(x)              # the gradient keeps x's layout
        return np.asarray(x[index])

    @staticmethod
    def backward(ctx, g):
        gx = empty_in_order(ctx.shape, ctx.dtype, ctx.order)
        gx[...] = 0
        parts = ctx.index if isinstance(ctx.index, tuple) else (ctx.index,)
        if any(isinstance(p, (np.ndarray, list)) for p in parts):
            np.add.at(gx, ctx.index, g)
        else:
            gx[ctx.index] = g
        return gx


class Concatenate(Function):
    """y = [x_0, x_1, ...] joined along ``axis``; the gradient is split back."""
    @staticmethod
    def forward(ctx, *xs, axis=0):
        ctx.axis = axis
        ctx.bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return tuple(np.split(g, ctx.bounds, axis=ctx.axis))


class Stack(Function):
    """y = the x_i stacked along a new ``axis``; the gradient is unstacked."""
    @staticmethod
    def forward(ctx, *xs, axis=0):
        ctx.axis = axis
        return np.stack(xs, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return tuple(np.moveaxis(g, ctx.axis, 0))


class Pad(Function):
    """y = x padded with a constant; ``pad_width`` as in ``np.pad``.  dy/dx = the interior."""
    @staticmethod
    def forward(ctx, x, pad_width=None, value=0.0):
        pad_width = np.broadcast_to(np.asarray(pad_width, dtype=int), (x.ndim, 2))
        ctx.interior = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad_width, x.shape))
        if x.flags.c_contiguous:
            return np.pad(x, pad_width, constant_values=value)
        y = empty_in_order(tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, pad_width)), x.dtype, memory_order(x))
        y[...] = value
        y[ctx.interior] = x
        return y

    @staticmethod
    def backward(ctx, g):
        return np.array(g[ctx.interior], order="K")     # a copy in g's memory order


def _shape_arg(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def reshape(x, *shape): return Reshape.apply(x, shape=_shape_arg(shape))


def transpose(x, *axes):
    """Permute axes; no axes reverses them (``x.T``)."""
    return Transpose.apply(x, axes=_shape_arg(axes) if axes else None)


def flatten(x, start_dim=0, end_dim=-1):
    """Merge axes start_dim..end_dim into one (``Flatten`` uses start_dim=1)."""
    s, e = normalize_axes(start_dim, x.ndim)[0], normalize_axes(end_dim, x.ndim)[0]
    return reshape(x, x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:])


def squeeze(x, axis=None):
    """Drop axes of size 1 (all of them, or the given ones)."""
    axes = normalize_axes(axis, x.ndim) if axis is not None else tuple(i for i, n in enumerate(x.shape) if n == 1)
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of size {x.shape[a]} (shape {x.shape})")
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if i not in axes))


def unsqueeze(x, axis):
    """Insert an axis of size 1 at ``axis``."""
    return reshape(x, np.expand_dims(x.data, axis).shape)


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem.apply(x, index=index)


def concatenate(tensors, axis=0): return Concatenate.apply(*tensors, axis=axis)
def stack(tensors, axis=0): return Stack.apply(*tensors, axis=axis)
def pad(x, pad_width, value=0.0): return Pad.apply(x, pad_width=pad_width, value=value)
