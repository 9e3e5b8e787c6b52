"""Randomness flows from minicnn.manual_seed: same seed, bit-identical weights after training."""
import numpy as np
import pytest

import minicnn
from minicnn import nn, ops, optim, tensor
from minicnn import random as mrandom


def _train(seed, steps=15):
    """Init, shuffled minibatches and the data itself all draw from minicnn.random."""
    minicnn.manual_seed(seed)
    data_rng = mrandom.new_rng()
    x = data_rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    net = nn.Sequential(nn.Linear(5, 16), nn.GELU(), nn.Linear(16, 2))
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    shuffle = mrandom.new_rng()
    for _ in range(steps):
        batch = shuffle.permutation(64)[:16]
        opt.zero_grad()
        ops.cross_entropy(net(tensor(x[batch])), y[batch]).backward()
        opt.step()
    return net.state_dict()


def test_same_seed_gives_bit_identical_weights_after_training():
    a, b = _train(7), _train(7)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_different_seed_gives_different_weights():
    a, b = _train(7), _train(8)
    assert not np.array_equal(a["0.weight"], b["0.weight"])


def test_manual_seed_resets_init():
    minicnn.manual_seed(3)
    w1 = nn.Linear(4, 4).weight.data.copy()
    w2 = nn.Linear(4, 4).weight.data.copy()
    minicnn.manual_seed(3)
    np.testing.assert_array_equal(nn.Linear(4, 4).weight.data, w1)
    assert not np.array_equal(w1, w2)


def test_state_capture_resumes_the_random_stream():
    minicnn.manual_seed(11)
    mrandom.default_rng().random(5)
    state = mrandom.get_state()
    expected = mrandom.default_rng().random(3)
    minicnn.manual_seed(999)
    mrandom.set_state(state)
    np.testing.assert_array_equal(mrandom.default_rng().random(3), expected)


def test_new_rng_children_are_reproducible_and_independent():
    minicnn.manual_seed(5)
    a, b = mrandom.new_rng(), mrandom.new_rng()
    first = a.random(4)
    assert not np.array_equal(first, b.random(4))
    minicnn.manual_seed(5)
    np.testing.assert_array_equal(mrandom.new_rng().random(4), first)
    np.testing.assert_array_equal(mrandom.new_rng(42).random(4), np.random.default_rng(42).random(4))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None])
def test_manual_seed_rejects_non_integers(seed):
    with pytest.raises(ValueError, match="non-negative int"):
        minicnn.manual_seed(seed)
