"""The TensorBoard callback: its event files read back (with TensorBoard's own reader) hold
the right tags, steps and values; without the extra it says how to install it."""
import io
import sys

import numpy as np
import pytest

import minicnn
from minicnn import nn
from minicnn.optim import SGD
from minicnn.train import fit
from minicnn.train.callbacks import TensorBoard


def run(log_dir, epochs=2, **options):
    minicnn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    rng = np.random.default_rng(0)
    y = np.arange(40) % 3
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    x[:, 0, :4, :4] += y[:, None, None]
    callback = TensorBoard(log_dir, **options)
    history = fit(model, (x[:32], y[:32]), epochs=epochs, optimizer=SGD(model.parameters(), lr=0.05),
                  validation_data=(x[32:], y[32:]), batch_size=8, seed=1, verbose=0, callbacks=[callback])
    return model, history, (x[:4], y[:4])


def read_events(log_dir):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(log_dir), size_guidance={accumulator.SCALARS: 0,
                                                                       accumulator.HISTOGRAMS: 0,
                                                                       accumulator.IMAGES: 0})
    events.Reload()
    return events


def test_events_read_back_with_the_right_tags_steps_and_values(tmp_path):
    pytest.importorskip("tensorboard")
    samples = (np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32), np.array([0, 1, 2]))
    model, history, _ = run(tmp_path, update_freq=3, samples=samples, grad_cam_layer="1",
                            class_names=["a", "b", "c"])
    events = read_events(tmp_path)
    tags = events.Tags()
    logs = history.history
    assert set(tags["scalars"]) == {"batch/loss", *logs}
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(logs)
    for name, values in logs.items():
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [0, 1], name
        np.testing.assert_allclose([s.value for s in scalars], values, rtol=1e-6, err_msg=name)
    assert [s.step for s in events.Scalars("batch/loss")] == [0, 3, 6]  # 4 steps an epoch, every 3rd

    names = [n for n, _ in model.named_parameters()]
    assert set(tags["histograms"]) == {f"{kind}/{n}" for kind in ("weights", "gradients") for n in names}
    last = events.Histograms("weights/0.weight")[-1]
    assert [h.step for h in events.Histograms("weights/0.weight")] == [0, 1]
    w = model[0].weight.data.astype(np.float64)
    assert last.histogram_value.num == w.size
    assert last.histogram_value.sum == pytest.approx(w.sum(), rel=1e-9)
    assert last.histogram_value.max == pytest.approx(w.max())

    from PIL import Image
    assert set(tags["images"]) == {"confusion_matrix", "grad_cam"}
    for tag in ("confusion_matrix", "grad_cam"):
        images = events.Images(tag)
        assert [i.step for i in images] == [0, 1]
        png = Image.open(io.BytesIO(images[-1].encoded_image_string))
        assert png.size == (images[-1].width, images[-1].height) and min(png.size) > 100


def test_histograms_follow_their_frequency_and_images_need_their_data(tmp_path):
    pytest.importorskip("tensorboard")
    run(tmp_path, epochs=3, histogram_freq=2)
    events = read_events(tmp_path)
    assert [h.step for h in events.Histograms("gradients/4.bias")] == [1]
    assert events.Tags()["images"] == ["confusion_matrix"]
    assert "batch/loss" not in events.Tags()["scalars"]
    with pytest.raises(ValueError, match="need both samples=.*and grad_cam_layer"):
        TensorBoard(tmp_path, samples=(np.zeros((1, 1, 8, 8)), [0]))
    with pytest.raises(ValueError, match="update_freq must be 'epoch' or a positive int, got 0"):
        TensorBoard(tmp_path, update_freq=0)


def test_without_the_extra_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    with pytest.raises(ModuleNotFoundError, match=r'pip install "minicnn\[tensorboard\]"'):
        TensorBoard(tmp_path)
