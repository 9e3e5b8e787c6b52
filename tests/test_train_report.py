"""What training shows: the progress line, the summary table, History, and the plots."""
import io
import math

import numpy as np
import pytest

from minicnn import nn
from minicnn.models import fashion_cnn, fashion_cnn_bn, fashion_cnn_strong
from minicnn.optim import SGD
from minicnn.train import History, fit, summary
from minicnn.train.progress import ProgressBar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def _data(n=96):
    rng = np.random.default_rng(0)
    return rng.random((n, 4, 4)).astype(np.float32), rng.integers(0, 2, n)


def _net():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


@pytest.mark.parametrize("stream", [io.StringIO(), FakeTTY()])
def test_progress_lines(stream):
    net = _net()
    fit(net, _data(), epochs=2, optimizer=SGD(net.parameters(), lr=0.1), batch_size=16,
        validation_data=_data(32), stream=stream)
    text = stream.getvalue()
    lines = [ln.split("\r")[-1] for ln in text.split("\n")[:-1]]
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert line.startswith(f"Epoch {i + 1}/2 6/6 [====================] ")
        for part in ("img/s", "loss ", "acc ", "val_loss ", "val_acc ", "lr 0.1"):
            assert part in line
    if isinstance(stream, FakeTTY):
        assert "\r" in text
    else:
        assert not any(c in text for c in "\r\x1b\b")  # a log file gets plain lines


def test_quiet_prints_nothing():
    out = io.StringIO()
    net = _net()
    fit(net, _data(), epochs=1, optimizer=SGD(net.parameters(), lr=0.1), verbose=0, stream=out)
    assert out.getvalue() == ""


def test_live_bar_is_throttled_and_shows_eta():
    out = FakeTTY()
    bar = ProgressBar("Epoch 1/1", 1000, out, interval=3600)
    for done in range(1, 1000):
        bar.update(done, done * 8, {"loss": 0.5})
    assert out.getvalue() == ""  # nothing redrawn within the interval
    bar.update(1000, 8000, {"loss": 0.5})  # the last batch always draws
    assert out.getvalue().startswith("\rEpoch 1/1 1000/1000 [====================] loss 0.5000")
    assert "ETA 0:00" in out.getvalue()
    bar = ProgressBar("E", 10, FakeTTY(), interval=0)
    bar.update(3, 24, {"loss": 1.0})
    assert "[======>.............]" in bar.stream.getvalue() and "ETA" in bar.stream.getvalue()


def test_summary_of_the_fashion_models():
    text = summary(fashion_cnn(), (1, 28, 28))
    assert "Total params: 421,642" in text and "Trainable params: 421,642" in text
    assert "Non-trainable params: 0" in text
    rows = [ln.split() for ln in text.splitlines() if "(" in ln and ")" in ln and not ln.startswith("Model")]
    assert [r[1] for r in rows[1:]] == ["(Conv2d)", "(ReLU)", "(MaxPool2d)", "(Conv2d)", "(ReLU)",
                                        "(MaxPool2d)", "(Flatten)", "(Linear)", "(ReLU)", "(Linear)"]
    assert rows[1][2:] == ["(None,", "32,", "28,", "28)", "320"]
    assert rows[6][2:] == ["(None,", "64,", "7,", "7)", "0"]
    assert rows[8][2:] == ["(None,", "128)", "401,536"]
    assert "Total params: 421,866" in summary(fashion_cnn_bn(), (1, 28, 28))
    assert "Total params: 871,082" in summary(fashion_cnn_strong(), (1, 28, 28))


def test_summary_frozen_buffers_and_modes():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    model.train()
    text = summary(model, (4,))
    assert "Total params: 29" in text and "Trainable params: 14" in text
    assert "Non-trainable params: 15" in text and "Buffers (running statistics, not parameters): 7" in text
    assert model.training and not model[0]._forward_hooks  # mode restored, hooks removed
    with pytest.raises(ValueError, match="input_shape"):
        summary(model, (0, 4))


def test_history():
    h = History()
    h.append(0, {"loss": 2.0})
    h.append(1, {"loss": 1.0, "val_loss": 1.5})
    h.append(2, {"loss": 0.5, "val_loss": 1.7})
    assert math.isnan(h["val_loss"][0]) and h["val_loss"][1:] == [1.5, 1.7]
    assert h.best("val_loss") == (1, 1.5) and h.best("loss", "max") == (0, 2.0)
    g = History()
    g.load_state_dict(h.state_dict())
    assert g.epoch == h.epoch and g["loss"] == h["loss"] and len(g) == 3
    with pytest.raises(KeyError, match="val_accuracy"):
        h["val_accuracy"]


def test_plots_are_pngs(tmp_path):
    from minicnn.viz import plot_confusion_matrix, plot_history, plot_misclassified
    h = History()
    for e in range(3):
        h.append(e, {"loss": 1 / (e + 1), "accuracy": 0.5 + e / 10, "val_loss": 1.0, "val_accuracy": 0.6})
    names = ["a", "b", "c"]
    paths = [plot_history(h, tmp_path / "curves.png"),
             plot_confusion_matrix(np.array([[5, 1, 0], [0, 3, 2], [1, 0, 4]]), names, tmp_path / "cm.png"),
             plot_misclassified(np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 1, 2, 0]),
                                np.array([0, 2, 1, 1]), names, tmp_path / "wrong.png")]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(np.eye(3), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no 'loss'"):
        plot_history({"acc": [1]}, tmp_path / "x.png")
