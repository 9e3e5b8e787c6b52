"""Hypothesis strategies shared by the test files.

    from strategies import arrays, broadcastable_shapes, distinct_arrays, reduction_axes, shapes

Values are float64 by default (gradient checks need it) and bounded, so that
finite differences stay meaningful.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    """Array shapes, e.g. (), (3,), (2, 1, 4)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4):
    """A tuple of ``num_shapes`` shapes that broadcast together (NumPy's rules),
    e.g. ((3, 1), (2, 1, 4))."""
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=1, max_side=max_side).map(lambda s: s.input_shapes)


def arrays(shape, low=-3.0, high=3.0, dtype=np.float64):
    """Arrays of ``shape`` (a tuple or a strategy) with finite values in [low, high]."""
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False,
                         width=np.dtype(dtype).itemsize * 8)
    return hnp.arrays(dtype, shape, elements=elements)


def magnitudes(shape, low=0.5, high=3.0, signed=True):
    """Arrays whose absolute values lie in [low, high] (safe divisors, logs, square roots)."""
    mags = arrays(shape, low, high)
    if not signed:
        return mags
    return st.tuples(mags, hnp.arrays(np.bool_, shape)).map(lambda ms: np.where(ms[1], -ms[0], ms[0]))


@st.composite
def distinct_arrays(draw, shape, spacing=0.1, avoid=(0.0,)):
    """Arrays of ``shape`` whose values are pairwise at least ``spacing / 2`` apart and
    at least ``spacing / 4`` from every point in ``avoid``.

    For ops with kinks or ties (max, min, relu, abs, clip) where a finite difference
    across the kink would be meaningless.  Values are a random permutation of an
    evenly spaced grid, shifted by a random offset.
    """
    shape = draw(shape) if isinstance(shape, st.SearchStrategy) else tuple(shape)
    n = int(np.prod(shape))
    order = np.array(draw(st.permutations(range(n))), dtype=np.float64)
    offset = draw(st.floats(-n / 2, n / 2 - 1, allow_nan=False))
    values = (order + offset).reshape(shape) * spacing
    for a in avoid:
        near = np.abs(values - a) < spacing / 4
        values = np.where(near, values + spacing / 2, values)
    return values


@st.composite
def reduction_axes(draw, ndim):
    """What a reduction's ``axis`` accepts for an ``ndim``-d input: None, an int
    (possibly negative) or a tuple of distinct axes."""
    if ndim == 0:
        return None
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    return tuple(draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)))
