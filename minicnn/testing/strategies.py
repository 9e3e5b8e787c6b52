"""Hypothesis strategies for tests of ops, layers and models (needs ``hypothesis``:
``pip install "minicnn[testing]"``).

Values are float64 by default, because gradient checks need it, and bounded, so that
finite differences stay meaningful.  Every strategy draws whole cases, so a failing
example shrinks to a small readable one.

    from hypothesis import given
    from minicnn.testing import arrays, shapes

    @given(arrays(shapes(min_dims=1)))
    def test_tanh_is_odd(x):
        assert np.allclose(np.tanh(-x), -np.tanh(x))
"""
from typing import NamedTuple

import numpy as np

try:
    from hypothesis import Phase, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:          # hypothesis is the optional extra "testing"
    raise ImportError("minicnn.testing's strategies need hypothesis, which is not installed: "
                      "pip install \"minicnn[testing]\" (or pip install hypothesis)") from exc

from ..ops.checks import as_pair
from ..ops.conv import conv_padding

_SEEDS = st.integers(0, 2**32 - 1)


def gradient_settings(max_examples=20, **overrides):
    """Hypothesis settings for gradient tests, as a decorator: no deadline (the first call of
    a Numba kernel compiles it), no "explain" phase, which re-runs a failing test under a
    line tracer and turns a failing gradient check into minutes of waiting, and one failure
    reported (the first kind found, shrunk), not one per place a check can fail.

    >>> @gradient_settings(max_examples=5)
    ... @given(arrays((3,)))
    ... def test_square_is_non_negative(x):
    ...     assert (x * x >= 0).all()
    """
    phases = [p for p in Phase if p.name != "explain"]
    return settings(**dict(dict(deadline=None, max_examples=max_examples, phases=phases, report_multiple_bugs=False),
                           **overrides))


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    """Array shapes, e.g. ``()``, ``(3,)``, ``(2, 1, 4)``.

    >>> from hypothesis import given
    >>> @given(shapes(min_dims=2, max_dims=2))
    ... def test_transpose_swaps_the_sides(shape):
    ...     assert np.zeros(shape).T.shape == shape[::-1]
    """
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4):
    """A tuple of ``num_shapes`` shapes that broadcast together (NumPy's rules),
    e.g. ``((3, 1), (2, 1, 4))``.

    >>> @given(broadcastable_shapes())
    ... def test_add_broadcasts(pair):
    ...     a, b = (np.ones(s) for s in pair)
    ...     assert (a + b).shape == np.broadcast_shapes(*pair)
    """
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=1, max_side=max_side).map(lambda s: s.input_shapes)


def arrays(shape, low=-3.0, high=3.0, dtype=np.float64):
    """Arrays of ``shape`` (a tuple or a strategy of tuples) with finite values in [low, high].

    >>> @given(arrays((2, 3), 0.5, 2.0))
    ... def test_log_of_exp(x):
    ...     np.testing.assert_allclose(np.log(np.exp(x)), x)
    """
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False,
                         width=np.dtype(dtype).itemsize * 8)
    return hnp.arrays(dtype, shape, elements=elements)


def magnitudes(shape, low=0.5, high=3.0, signed=True):
    """Arrays whose absolute values lie in [low, high]: safe divisors, logs (``signed=False``)
    and square roots.

    >>> @given(magnitudes((4,)))
    ... def test_reciprocal_is_finite(x):
    ...     assert np.isfinite(1 / x).all()
    """
    mags = arrays(shape, low, high)
    if not signed:
        return mags
    return st.tuples(mags, hnp.arrays(np.bool_, shape)).map(lambda ms: np.where(ms[1], -ms[0], ms[0]))


@st.composite
def distinct_arrays(draw, shape, spacing=0.1, avoid=(0.0,)):
    """Arrays of ``shape`` whose values are pairwise at least ``spacing / 2`` apart and at
    least ``spacing / 4`` from every point in ``avoid`` (the kinks).

    For ops with kinks or ties (max, min, relu, abs, clip): a finite difference across a
    kink, or between two tied maxima, measures neither side's derivative.  Keep the
    finite-difference step (``eps``) well below ``spacing / 4``.  Values are a random
    permutation of an evenly spaced grid, shifted by a random offset.

    >>> @given(distinct_arrays((3, 4)))
    ... def test_one_argmax_per_row(x):
    ...     assert ((x == x.max(axis=1, keepdims=True)).sum(axis=1) == 1).all()
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
    """What a reduction's ``axis`` accepts for an ``ndim``-d input: None, an int (possibly
    negative) or a tuple of distinct axes.

    >>> @given(reduction_axes(3))
    ... def test_sum_keepdims_keeps_the_rank(axis):
    ...     assert np.ones((2, 3, 4)).sum(axis=axis, keepdims=True).ndim == 3
    """
    if ndim == 0:
        return None
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    return tuple(draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)))


class Conv2dCase(NamedTuple):
    """One convolution: arrays, the keyword arguments of ``conv2d``, and those arguments
    resolved: ``resolved = (stride, ((top, bottom), (left, right)), dilation)``, pairs."""
    x: np.ndarray
    weight: np.ndarray
    bias: object           # ndarray or None
    kwargs: dict
    resolved: tuple


@st.composite
def conv2d_cases(draw, max_side=7, max_batch=3, kernel_sizes=(1, 2, 3), strides=(1, 2, 3, (1, 2), (2, 1)),
                 paddings=(0, 1, 2, (0, 1), (2, 1), "same", "valid"), dilations=(1, 2, (1, 2)),
                 groups=(1, 2, 3), max_channels_per_group=2, dtype=np.float64):
    """A valid ``conv2d`` case (:class:`Conv2dCase`): input (N, C, H, W), weight
    (O, C/groups, kh, kw), bias (O,) or None, and every argument: strides, paddings
    (incl. 'same' with TensorFlow's rule for stride > 1), dilations, groups, odd sizes,
    batch 1.  Where the kernel would not fit the padded input, the input grows to fit it.
    Restrict any argument by passing fewer choices (e.g. ``strides=(1,)``).

    >>> @given(conv2d_cases())
    ... def test_conv_output_shape(case):
    ...     y = minicnn.ops.conv2d(minicnn.tensor(case.x), minicnn.tensor(case.weight), None, **case.kwargs)
    ...     assert y.shape[:2] == (case.x.shape[0], case.weight.shape[0])
    """
    g = draw(st.sampled_from(groups))
    cg, og = draw(st.integers(1, max_channels_per_group)), draw(st.integers(1, max_channels_per_group))
    n = draw(st.integers(1, max_batch))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    kernel = draw(st.sampled_from(kernel_sizes)), draw(st.sampled_from(kernel_sizes))
    stride, padding, dilation = (draw(st.sampled_from(c)) for c in (strides, paddings, dilations))
    s, d = as_pair(stride, "stride", "conv2d_cases", 1), as_pair(dilation, "dilation", "conv2d_cases", 1)
    pads = conv_padding(padding, (h, w), kernel, s, d)
    for (p0, p1), k, dd, size in zip(pads, kernel, d, (h, w)):
        if size + p0 + p1 < dd * (k - 1) + 1:     # too small for the kernel: an error case, not this one
            h, w = h + dd * (k - 1) + 1, w + dd * (k - 1) + 1
            pads = conv_padding(padding, (h, w), kernel, s, d)
    rng = np.random.default_rng(draw(_SEEDS))
    x = rng.standard_normal((n, cg * g, h, w)).astype(dtype)
    weight = rng.standard_normal((og * g, cg) + kernel).astype(dtype)
    bias = rng.standard_normal(og * g).astype(dtype) if draw(st.booleans()) else None
    return Conv2dCase(x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=g),
                      (s, pads, d))


class Pool2dCase(NamedTuple):
    """One pooling: input without ties (one argmax per window) and the arguments of
    ``max_pool2d`` / ``avg_pool2d`` (``count_include_pad`` is avg_pool2d's alone)."""
    x: np.ndarray
    kernel_size: tuple
    stride: object         # None (= kernel_size), an int or a pair
    padding: tuple
    ceil_mode: bool
    count_include_pad: bool


@st.composite
def pool2d_cases(draw, max_side=7, max_kernel=3, dtype=np.float64):
    """A valid 2-D pooling case (:class:`Pool2dCase`): kernel 1..``max_kernel`` per axis,
    stride None/int/pair, padding up to half the kernel, ``ceil_mode``; the input's values
    are pairwise 0.1 apart in random order, so max pooling has one argmax per window and
    its finite differences are meaningful.

    >>> @given(pool2d_cases())
    ... def test_max_pool_picks_input_values(case):
    ...     y = minicnn.ops.max_pool2d(minicnn.tensor(case.x), case.kernel_size, case.stride, case.padding)
    ...     assert np.isin(y.data, case.x).all()
    """
    k = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = draw(st.sampled_from([None, 1, 2, (2, 1), 3]))
    padding = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    h, w = draw(st.integers(k[0], max(k[0], max_side))), draw(st.integers(k[1], max(k[1], max_side)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w)
    rng = np.random.default_rng(draw(_SEEDS))
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0).astype(dtype)
    return Pool2dCase(x, k, stride, padding, draw(st.booleans()), draw(st.booleans()))


class NormCase(NamedTuple):
    """One normalization: ``kind`` ('batch', 'instance', 'group' or 'layer'), input
    (N, C, *spatial), affine weight and bias ((C,), or the normalized shape for 'layer';
    either may be None), ``groups`` (group norm's num_groups) and ``eps``."""
    kind: str
    x: np.ndarray
    weight: object
    bias: object
    groups: int
    eps: float


@st.composite
def norm_cases(draw, kinds=("batch", "instance", "group", "layer"), dtype=np.float64):
    """A valid normalization case (:class:`NormCase`): inputs with a random scale and
    offset (so the mean and variance matter), channels divisible by ``groups``, at least
    two values per statistic, eps from 1e-5 to 0.1, with or without affine parameters.

    >>> @given(norm_cases(kinds=("group",)))
    ... def test_group_norm_keeps_the_shape(case):
    ...     y = minicnn.ops.group_norm(minicnn.tensor(case.x), case.groups, eps=case.eps)
    ...     assert y.shape == case.x.shape
    """
    kind = draw(st.sampled_from(kinds))
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 3), min_size=0 if kind == "batch" else 1, max_size=2))
    n = draw(st.integers(1, 3))
    if kind == "batch" and n * int(np.prod(spatial)) < 2:    # one value per channel is an error
        n = 2
    if kind == "instance" and int(np.prod(spatial)) < 2:
        spatial = spatial + [2]
    rng = np.random.default_rng(draw(_SEEDS))
    x = rng.standard_normal((n, c, *spatial)) * draw(st.floats(0.1, 10)) + draw(st.floats(-5, 5))
    affine_shape = x.shape[1:] if kind == "layer" else (c,)
    affine = draw(st.booleans())
    weight = rng.standard_normal(affine_shape).astype(dtype) if affine else None
    bias = rng.standard_normal(affine_shape).astype(dtype) if affine and draw(st.booleans()) else None
    return NormCase(kind, x.astype(dtype), weight, bias, groups, draw(st.sampled_from([1e-5, 1e-3, 0.1])))


def _input_layout(module):
    """(channels or features, spatial rank) of what the first layer of ``module`` takes."""
    for _, m in module.named_modules():
        for attr, spatial in (("in_channels", 2), ("num_features", 2), ("num_channels", 2), ("in_features", 0)):
            if isinstance(getattr(m, attr, None), (int, np.integer)):
                return int(getattr(m, attr)), spatial
    raise ValueError(f"module_inputs: cannot tell what {type(module).__name__} takes (no layer with "
                     "in_channels, num_features, num_channels or in_features); pass shape=...")


def _module_dtype(module):
    dtypes = {p.dtype for p in module.parameters()}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)


def module_inputs(module, shape=None, min_side=3, max_side=6, max_batch=3, low=-3.0, high=3.0):
    """Inputs for ``module`` in its parameters' dtype: (N, C, H, W) for a network whose
    first layer is a conv or norm (C its in_channels), (N, F) for one that starts with
    a Linear, batch 1..``max_batch`` and sides ``min_side``..``max_side``; or arrays of
    ``shape`` (a tuple, or a strategy of tuples) when given.  Models that downsample need
    a larger ``min_side``.

    >>> block = minicnn.nn.Sequential(minicnn.nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64))
    >>> @given(module_inputs(block))
    ... def test_block_keeps_the_size(x):
    ...     assert block(minicnn.tensor(x)).shape[2:] == x.shape[2:]
    """
    dtype = _module_dtype(module)
    if shape is None:
        channels, spatial = _input_layout(module)
        side = st.integers(min_side, max_side)
        shape = st.tuples(st.integers(1, max_batch), st.just(channels), *([side] * spatial))
    elif not isinstance(shape, st.SearchStrategy):
        shape = st.just(tuple(shape))
    # Values from a seed, not element by element: a failing gradient check then shrinks in
    # a few steps (shape and seed) instead of hundreds of checks, one per element nudged.
    return st.tuples(shape, _SEEDS).map(
        lambda ss: np.random.default_rng(ss[1]).uniform(low, high, ss[0]).astype(dtype))
