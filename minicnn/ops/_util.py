"""Small helpers shared by the ops: broadcasting reduction, axis normalisation, memory layout."""
import numpy as np

from ..tensor import Tensor


def raw(a):
    """The ndarray behind an argument that may be a Tensor (running statistics, epilogue operands)."""
    return a.data if isinstance(a, Tensor) else a


# Empty arrays of each float dtype and rank for kernel arguments that are absent
# ("no bias", "no gradient wanted", "no residual"): EMPTY[dtype][ndim].
EMPTY = {np.dtype(t): {d: np.empty((0,) * d, t) for d in (1, 2, 3, 4)} for t in (np.float32, np.float64)}


def nhwc(a):
    """The memory of a channels-last (N, C, H, W) array as a C-contiguous (N, H, W, C) view, or None.

    The GEMM convolutions (``minicnn.ops.conv``) write their output, and their input
    gradient, in channels-last memory behind the NCHW shape, as PyTorch's
    ``channels_last`` memory format: shapes, values and every API stay NCHW, only the
    strides differ (``y.transpose(0, 2, 3, 1)`` is contiguous).  The ops that work in
    that layout (convolution, batch norm, ReLU, max pooling) ask for it here and so skip
    two layout moves per convolution; every other op copies its input to C order."""
    if a.ndim == 4:
        t = a.transpose(0, 2, 3, 1)
        if t.flags.c_contiguous:
            return t
    return None


def channels_last(a):
    """True if the strides of a 4-D array (N, C, H, W) order its memory as (N, H, W, C),
    dense or not (e.g. ``x[:, :, ::2, ::2]`` of a channels-last x), and it is not C-contiguous."""
    return a.ndim == 4 and not a.flags.c_contiguous and a.strides[1] < a.strides[3] < a.strides[2] < a.strides[0]


def empty_in_layout(shape, dtype, last):
    """An uninitialized (N, C, H, W) array, channels-last memory if ``last`` else C order."""
    if last:
        return np.empty((shape[0], shape[2], shape[3], shape[1]), dtype).transpose(0, 3, 1, 2)
    return np.empty(shape, dtype)


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
