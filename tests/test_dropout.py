"""Dropout and Dropout2d: inverted scaling, identities at p=0 and in eval mode, zeros at
p=1, gradients only through kept units, reproducibility, and the kept fraction and
mean within binomial bounds."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import nn, ops, tensor

SIGMAS = 5  # a correct implementation fails a 5-sigma bound about once in 1.7 million runs


@settings(deadline=None)
@given(p=st.floats(0.0, 1.0), shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
       seed=st.integers(0, 2**16))
def test_each_unit_is_zero_or_scaled_and_gradient_follows_the_mask(p, shape, seed):
    minicnn.manual_seed(seed)
    x = tensor(np.random.default_rng(seed).uniform(0.5, 2.0, shape), requires_grad=True)
    y = ops.dropout(x, p)
    kept = y.data != 0
    scale = 1 / (1 - p) if p < 1 else 0.0
    np.testing.assert_allclose(y.data[kept], x.data[kept] * scale, rtol=1e-12)
    g = np.random.default_rng(seed + 1).standard_normal(shape)
    y.backward(g)
    np.testing.assert_allclose(x.grad, np.where(kept, g * scale, 0.0), rtol=1e-12)
    if p == 0:
        assert kept.all()


def test_p_zero_and_eval_mode_are_the_identity_and_p_one_gives_zeros():
    x = tensor(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), requires_grad=True)
    assert ops.dropout(x, 0.0) is x
    assert ops.dropout(x, 0.7, training=False) is x
    layer = nn.Dropout(0.7).eval()
    assert layer(x) is x
    assert nn.Dropout2d(0.7).eval()(tensor(np.ones((2, 3, 4, 4)))).data.min() == 1
    y = ops.dropout(x, 1.0)
    assert y.dtype == np.float32 and not y.data.any()
    y.backward(np.ones((4, 5), np.float32))
    assert not x.grad.any()


def test_masks_are_reproducible_under_manual_seed():
    x = tensor(np.ones((8, 3, 5, 5)))
    minicnn.manual_seed(42)
    first = (nn.Dropout(0.5)(x).data, nn.Dropout2d(0.5)(x).data)
    minicnn.manual_seed(42)
    second = (nn.Dropout(0.5)(x).data, nn.Dropout2d(0.5)(x).data)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(nn.Dropout(0.5)(x).data, first[0])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_and_mean_within_binomial_bounds(p):
    n = 200_000
    y = nn.Dropout(p)(tensor(np.ones(n, np.float32))).data
    kept = np.count_nonzero(y)
    sd = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < SIGMAS * sd, (kept, n * (1 - p), sd)
    # mean = kept/(n(1-p)), so its sd is sd/(n(1-p)); E[mean] = 1 (inverted scaling)
    assert abs(y.mean() - 1) < SIGMAS * sd / (n * (1 - p))


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_dropout2d_drops_whole_channels_at_rate_p(p):
    N, C = 200, 100
    x = np.random.default_rng(0).uniform(0.5, 1.5, (N, C, 3, 3))
    y = nn.Dropout2d(p)(tensor(x)).data
    zero = (y == 0).all(axis=(2, 3))
    kept = (y != 0).all(axis=(2, 3))
    assert (zero | kept).all(), "a channel was partly dropped"
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-12)
    n = N * C
    assert abs(zero.sum() - n * p) < SIGMAS * math.sqrt(n * p * (1 - p))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got -0.1"):
        ops.dropout(tensor(np.ones(3)), -0.1)
    with pytest.raises(ValueError, match=r"dropout2d: expected input of shape \(N, C, H, W\), got shape \(2, 3\)"):
        nn.Dropout2d()(tensor(np.ones((2, 3))))
    with pytest.raises(TypeError, match="floating-point"):
        ops.dropout(tensor(np.ones(3, np.int64)), 0.5)
