"""Small helpers shared by the ops: broadcasting reduction, axis normalisation, memory order."""
import numpy as np

from ..tensor import Tensor


def raw(a):
    """The ndarray behind an argument that may be a Tensor (running statistics, epilogue operands)."""
    return a.data if isinstance(a, Tensor) else a


def memory_order(a):
    """The axes of ``a`` from the slowest-varying in memory to the fastest (C order: 0, 1, ...)."""
    return tuple(sorted(range(a.ndim), key=lambda i: -abs(a.strides[i])))


def empty_in_order(shape, dtype, order):
    """An uninitialized array of ``shape`` whose memory runs in the axis ``order`` of
    :func:`memory_order`: a gradient in its input's layout (e.g. channels-last)."""
    return np.empty([shape[i] for i in order], dtype).transpose(np.argsort(order))


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting.

    Axes that broadcasting added on the left are summed away; axes of size 1
    in ``shape`` that were stretched are summed with keepdims.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def normalize_axes(axis, ndim):
    """``axis`` (None, int or tuple, negatives allowed) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(int(a) % max(ndim, 1))
    return tuple(sorted(set(out)))


def expand_reduced(grad, axes, shape, keepdims):
    """Broadcast the gradient of a reduction back to the input ``shape`` (contiguous)."""
    if not keepdims:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape).copy()
