"""End to end: an MLP built from minicnn's layers, losses and optimizers learns the
three-arm 2-D spiral (CS231n's toy problem, not linearly separable) in about a second."""
import numpy as np
import pytest

from minicnn import nn, no_grad, ops, optim, tensor


def spiral(n_per_class, rng, classes=3, noise=0.2):
    """Points (N, 2) float32 on ``classes`` interleaved spiral arms, labels (N,)."""
    xs, ys = [], []
    for k in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        t = np.linspace(4 * k, 4 * (k + 1), n_per_class) + noise * rng.standard_normal(n_per_class)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(n_per_class, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _fit(net, x, y, steps, lr=0.01):
    opt = optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ops.cross_entropy(net(tensor(x)), y)
        loss.backward()
        opt.step()
    return loss.item()


@no_grad()
def _accuracy(net, x, y):
    return float((net(tensor(x)).data.argmax(axis=1) == y).mean())


@pytest.mark.slow
def test_mlp_learns_the_spiral():
    x, y = spiral(100, np.random.default_rng(0))
    x_test, y_test = spiral(100, np.random.default_rng(1))
    net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    start = ops.cross_entropy(net(tensor(x)), y).item()
    end = _fit(net, x, y, steps=300)
    assert end < 0.1 * start
    assert _accuracy(net, x, y) >= 0.95
    assert _accuracy(net, x_test, y_test) >= 0.95      # held-out points from the same spiral
    assert all(p.dtype == np.float32 for p in net.parameters())


@pytest.mark.slow
def test_a_linear_model_cannot_separate_the_spiral():
    """The problem needs the hidden layers: softmax regression stays far below 95%."""
    x, y = spiral(100, np.random.default_rng(0))
    net = nn.Linear(2, 3)
    _fit(net, x, y, steps=300)
    assert _accuracy(net, x, y) < 0.7
