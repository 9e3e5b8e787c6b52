"""Argument checks shared by ops and layers, with errors that say what was expected and how to fix it."""
import numpy as np

from ..tensor import Tensor


def check_array(x, op):
    """Raise TypeError unless ``x`` is a Tensor or an ndarray.

    Lists are refused, as PyTorch refuses them: which dtype a list should become
    is a guess (float64, say, where a float32 model would then refuse it)."""
    if not isinstance(x, (Tensor, np.ndarray)):
        raise TypeError(f"{op}: expected a minicnn.Tensor or numpy.ndarray input, got {type(x).__name__}; "
                        "wrap the data with minicnn.tensor(np.asarray(data, np.float32))")


def check_dtypes(op, x, **params):
    """Raise TypeError unless every given parameter (None: absent) has the input's dtype.

    No op converts silently: a float64 input to a float32 layer would run in float64
    and hand float64 gradients to float32 weights."""
    for name, p in params.items():
        if p is not None and p.dtype != x.dtype:
            fix = f"convert the input with .astype(np.{p.dtype})"
            if x.dtype in (np.float32, np.float64):
                fix += (f" or build the layer with dtype=np.{x.dtype}, or convert the model with "
                        f"model.to(np.{x.dtype})")
            raise TypeError(f"{op}: {name} dtype {p.dtype} differs from input dtype {x.dtype}; {fix}")


def as_pair(v, what, layer, minimum):
    """``v`` (int or pair of ints, each >= ``minimum``) as a pair; errors name ``layer`` and ``what``."""
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(p, (int, np.integer)) for p in pair):
        raise TypeError(f"{layer}: {what} must be an int or a pair of ints, got {v!r}")
    if min(pair) < minimum:
        raise ValueError(f"{layer}: {what} must be >= {minimum}, got {v!r}")
    return int(pair[0]), int(pair[1])


def check_float_input(x, layer, ndim=4, layout="(N, C, H, W)"):
    """Raise unless ``x`` is a float32/float64 array of rank ``ndim``."""
    if x.ndim != ndim:
        raise ValueError(f"{layer}: expected a {ndim}-D input {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{layer}: expected a float32 or float64 input, got {x.dtype}")
