"""LayerMonitor: records the right numbers at the right steps, and changes nothing."""
import math

import numpy as np
import pytest

import minicnn
from minicnn import nn, ops, tensor
from minicnn.optim import SGD
from minicnn.train import fit
from minicnn.train.callbacks import LayerMonitor


def cnn(batch_norm):
    minicnn.manual_seed(0)
    norm = [nn.BatchNorm2d(4)] if batch_norm else []
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    x[:, 0, :4, :4] += y[:, None, None]
    return x, y


def train(batch_norm, callbacks=(), validation_data=None, epochs=3, momentum=0.9):
    model = cnn(batch_norm)
    history = fit(model, data(), epochs=epochs, optimizer=SGD(model.parameters(), lr=0.05, momentum=momentum),
                  batch_size=8, seed=1, verbose=0, callbacks=callbacks, validation_data=validation_data)
    return model, history


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("every", [1, 4])
def test_a_seeded_run_is_bit_identical_with_and_without_the_monitor(batch_norm, every):
    plain, plain_history = train(batch_norm)
    monitor = LayerMonitor(every=every)
    watched, watched_history = train(batch_norm, [monitor])
    assert len(monitor.steps) == math.ceil(18 / every)
    logs = [{k: v for k, v in h.history.items() if k != "time"} for h in (plain_history, watched_history)]
    assert logs[0] == logs[1]
    for (k, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert all(not m._forward_hooks for m in watched.modules())


def test_records_are_the_layer_statistics_of_the_recorded_step():
    x, y = data()
    monitor = LayerMonitor(every=5)
    model, _ = train(False, [monitor], epochs=1, momentum=0.0)
    assert monitor.steps == [0, 5]
    assert monitor.layers == ["0", "1", "2", "3", "4", "5"]
    assert monitor.param_layers == ["0", "5"]

    # step 0 by hand: the first shuffled batch through the initial model (dropout draws the same)
    fresh = cnn(False)
    order = next(iter(minicnn.train.loop.as_loader(data(), 8, shuffle=True,
                                                   seed=int(np.random.SeedSequence(1).generate_state(2)[1]))))
    minicnn.manual_seed(0)
    cnn(False)  # the global stream as fit found it: after the model's init
    h, outs = tensor(order[0]), []
    for layer in fresh:
        h = layer(h)
        outs.append(h.data.astype(np.float64))
    loss = ops.cross_entropy(h, order[1])
    loss.backward()
    names, means = monitor.values("act_mean")
    _, stds = monitor.values("act_std")
    _, zeros = monitor.values("zero_fraction")
    assert means.shape == (6, 2)
    np.testing.assert_allclose(means[:, 0], [o.mean() for o in outs], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stds[:, 0], [o.std() for o in outs], rtol=1e-4)
    np.testing.assert_allclose(zeros[:, 0], [np.mean(o == 0) for o in outs])
    assert 0.2 < zeros[1, 0] < 0.8  # the ReLU's

    _, grad_norm = monitor.values("grad_norm")
    _, ratio = monitor.values("update_ratio")
    for row, layer in enumerate((fresh[0], fresh[5])):
        g = np.sqrt(np.linalg.norm(layer.weight.grad) ** 2 + np.linalg.norm(layer.bias.grad) ** 2)
        w = np.sqrt(np.linalg.norm(layer.weight.data) ** 2 + np.linalg.norm(layer.bias.data) ** 2)
        assert grad_norm[row, 0] == pytest.approx(g, rel=1e-5)
        assert ratio[row, 0] == pytest.approx(0.05 * g / w, rel=1e-4)  # plain SGD: Δθ = lr·g
    assert np.all(np.isfinite(grad_norm)) and np.all(ratio > 0)


def test_validation_passes_between_epochs_are_not_recorded():
    x, y = data(16, seed=1)
    huge = (x * 1000, y)  # were the validation forward recorded, the first layer's std would explode
    monitor = LayerMonitor(every=6)
    train(False, [monitor], validation_data=huge, epochs=3)
    assert monitor.steps == [0, 6, 12]  # each the first step of an epoch
    _, stds = monitor.values("act_std")
    assert stds[0].max() < 20, stds[0]


def test_kinds_choose_the_rows_and_bad_arguments_are_named():
    monitor = LayerMonitor(every=3, kinds=(nn.Conv2d, nn.ReLU))
    train(False, [monitor], epochs=1)
    assert monitor.layers == ["0", "1"] and monitor.param_layers == ["0"]
    assert monitor.values("grad_norm")[1].shape == (1, 2)
    with pytest.raises(ValueError, match=r"unknown quantity 'grads'; expected one of \('act_mean'"):
        monitor.values("grads")
    with pytest.raises(ValueError, match=r"every must be a positive int, got 0"):
        LayerMonitor(every=0)


def test_a_resumed_run_continues_the_records(tmp_path):
    monitor = LayerMonitor(every=4)
    train(False, [monitor], epochs=3)
    first = LayerMonitor(every=4)
    model = cnn(False)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(model, data(), epochs=1, optimizer=opt, batch_size=8, seed=1, verbose=0, callbacks=[first],
        checkpoint_path=tmp_path / "run.npz")
    resumed = LayerMonitor(every=4)
    model = cnn(False)
    fit(model, data(), epochs=3, optimizer=SGD(model.parameters(), lr=0.05, momentum=0.9), batch_size=8,
        verbose=0, callbacks=[resumed], resume_from=tmp_path / "run.npz")
    assert resumed.steps == monitor.steps
    for q in ("act_std", "grad_norm", "update_ratio"):
        np.testing.assert_array_equal(resumed.values(q)[1], monitor.values(q)[1], err_msg=q)


def test_heatmaps_are_drawn(tmp_path):
    viz = pytest.importorskip("minicnn.viz")
    monitors = {}
    for label, bn in (("plain", False), ("batch norm", True)):
        monitors[label] = LayerMonitor(every=2)
        train(bn, [monitors[label]], epochs=1)
    path = viz.plot_layer_monitor(monitors, tmp_path / "layers.png", quantities=("act_mean", "grad_norm"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match=r"unknown quantity 'loss'"):
        viz.plot_layer_monitor(monitors["plain"], tmp_path / "one.png", quantities=("loss",))
