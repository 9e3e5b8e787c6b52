"""fit / evaluate / predict and the Trainer: learning, bookkeeping, modes, non-finite losses."""
import io

import numpy as np
import pytest

import minicnn
from minicnn import nn, ops
from minicnn.data import DataLoader
from minicnn.optim import SGD, Adam, OneCycleLR
from minicnn.train import Callback, TerminateOnNaN, Trainer, evaluate, fit, predict


def blobs(n=400, seed=0):
    """Three classes of 6x6 images: a bright left half, right half, or top half."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 90, (n, 6, 6))
    x[y == 0, :, :3] += 150
    x[y == 1, :, 3:] += 150
    x[y == 2, :3, :] += 150
    return x.astype(np.uint8), y.astype(np.int64)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def test_fit_learns_and_records_history():
    model = mlp()
    history = fit(model, blobs(), epochs=4, optimizer=Adam(model.parameters(), lr=1e-2),
                  validation_split=0.25, batch_size=16, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    assert history.epoch == [0, 1, 2, 3] and len(history["loss"]) == 4
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.95
    result = evaluate(model, blobs(200, seed=1))
    assert result["accuracy"] > 0.95 and result["loss"] < 0.5


def test_validation_split_sizes_and_loader_length():
    model = mlp()
    t = Trainer(model, blobs(400), SGD(model.parameters(), lr=0.1), validation_split=0.2,
                batch_size=32, verbose=0)
    assert len(t.train_loader.labels) == 320 and len(t.val_loader.labels) == 80
    assert len(t.train_loader) == 10 and t.val_loader.batch_size == 256


def test_same_seed_same_run():
    def run():
        minicnn.manual_seed(4)
        model = mlp()
        fit(model, blobs(), epochs=2, optimizer=Adam(model.parameters()), batch_size=32, seed=9, verbose=0)
        return model.state_dict()
    a, b = run(), run()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_evaluate_and_predict_are_batched_in_eval_mode_and_restore_modes():
    model = mlp()
    model.train()
    model[3].eval()  # a mixed state must survive
    x, y = blobs(70)
    out = predict(model, x, batch_size=16)
    assert out.shape == (70, 3)
    with minicnn.no_grad():
        model.eval()
        direct = model(minicnn.tensor(x[:, None].astype(np.float32) / 255)).data
        model.train()
        model[3].eval()
    np.testing.assert_allclose(out, direct, rtol=1e-6, atol=1e-6)
    assert model.training and model[1].training and not model[3].training
    r = evaluate(model, (x, y), batch_size=16)
    want = ops.cross_entropy(minicnn.tensor(direct), y).item()
    assert r["loss"] == pytest.approx(want, rel=1e-5)
    assert r["accuracy"] == pytest.approx(np.mean(direct.argmax(1) == y))
    assert minicnn.is_grad_enabled()


def test_evaluate_does_not_touch_the_global_generator():
    model = mlp()
    state = minicnn.random.get_state()
    evaluate(model, blobs(50))
    predict(model, blobs(50)[0])
    assert minicnn.random.get_state() == state


def test_dataloader_and_dataset_inputs():
    x, y = blobs(100)
    model = mlp()
    loader = DataLoader((x, y), batch_size=25, shuffle=True, seed=1)
    fit(model, loader, epochs=2, optimizer=SGD(model.parameters(), lr=0.1), verbose=0,
        validation_data=blobs(40, seed=3))
    assert loader.epoch == 2
    with pytest.raises(ValueError, match="validation_split needs the training data itself"):
        fit(model, loader, epochs=1, optimizer=SGD(model.parameters(), lr=0.1), validation_split=0.2)
    with pytest.raises(ValueError, match="not both"):
        fit(model, (x, y), epochs=1, optimizer=SGD(model.parameters(), lr=0.1),
            validation_split=0.2, validation_data=(x, y))
    with pytest.raises(TypeError, match="loss must be callable"):
        fit(model, (x, y), epochs=1, optimizer=SGD(model.parameters(), lr=0.1), loss="mse")
    with pytest.raises(ValueError, match="epochs"):
        fit(model, (x, y), epochs=-1, optimizer=SGD(model.parameters(), lr=0.1))


class _Recorder(Callback):
    """Snapshots the weights after every batch whose loss was finite."""

    def __init__(self):
        self.calls, self.good = [], None

    def on_train_begin(self, trainer):
        self.calls.append("train_begin")

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(f"epoch_begin {epoch}")

    def on_batch_end(self, trainer, batch, logs):
        if np.isfinite(logs["loss"]):
            self.good = trainer.model.state_dict()

    def on_epoch_end(self, trainer, epoch, logs):
        self.calls.append(f"epoch_end {epoch}")

    def on_train_end(self, trainer):
        self.calls.append("train_end")


def flaky(at, factor):
    """Cross-entropy, multiplied by ``factor`` (nan, inf) on call number ``at``; counts calls."""
    def loss(logits, y):
        loss.calls += 1
        value = ops.cross_entropy(logits, y)
        return value * factor if loss.calls == at else value
    loss.calls = 0
    return loss


def test_nan_loss_stops_with_the_last_good_weights():
    flaky_loss = flaky(7, float("nan"))
    model = mlp()
    rec = _Recorder()
    out = io.StringIO()
    trainer = Trainer(model, blobs(), Adam(model.parameters()), loss=flaky_loss, batch_size=32,
                      callbacks=[rec, TerminateOnNaN()], stream=out)
    history = trainer.fit(5)
    assert flaky_loss.calls == 7 and len(history) == 0 and trainer.epoch == 0
    assert rec.calls == ["train_begin", "epoch_begin 0", "train_end"]
    final = model.state_dict()
    assert all(np.array_equal(final[k], rec.good[k]) and np.all(np.isfinite(final[k])) for k in final)
    assert "TerminateOnNaN: batch 7 of epoch 1 has loss nan" in out.getvalue()


def test_nan_batches_are_skipped_without_terminate_on_nan():
    model = mlp()
    out = io.StringIO()
    history = fit(model, blobs(128), epochs=1, optimizer=Adam(model.parameters()), loss=flaky(2, float("inf")),
                  batch_size=32, stream=out)
    assert len(history) == 1 and not np.isfinite(history["loss"][0])
    assert all(np.all(np.isfinite(v)) for v in model.state_dict().values())
    assert "1 batches of epoch 1 had a non-finite loss" in out.getvalue()


def test_batch_scheduler_steps_every_batch():
    model = mlp()
    opt = Adam(model.parameters())
    sched = OneCycleLR(opt, max_lr=0.01, epochs=2, steps_per_epoch=4)
    history = fit(model, blobs(128), epochs=2, optimizer=opt, scheduler=sched, batch_size=32, verbose=0)
    assert sched.last_epoch == 8
    assert history["lr"] == [pytest.approx(0.01 / 25), pytest.approx(sched.lr_at(4)[0])]


def test_custom_metrics():
    model = mlp()
    history = fit(model, blobs(64), epochs=1, optimizer=SGD(model.parameters(), lr=0.1), verbose=0,
                  metrics={"zero": lambda y, logits: 0.0}, validation_data=blobs(32))
    assert history["zero"] == [0.0] and history["val_zero"] == [0.0] and "accuracy" not in history
    with pytest.raises(TypeError, match="metric 'bad'"):
        fit(model, blobs(64), epochs=1, optimizer=SGD(model.parameters(), lr=0.1), metrics={"bad": 3})


def test_fit_augments_the_training_batches_and_never_the_validation_data():
    """Training images always flipped left-right (a 'left' blob becomes a 'right' one under
    its own label), validation data as it is: the model learns the flipped classes, so it
    is right on the training batches and on flipped held-out images, and on the unflipped
    validation data only for the 'top' class (about a third).  A flip applied to validation
    too, or to neither, would score > 0.95 there."""
    from minicnn.data.transforms import Compose, RandomHorizontalFlip, ToFloat
    minicnn.manual_seed(0)
    model = mlp()
    val_x, val_y = blobs(200, seed=1)
    history = fit(model, blobs(400), epochs=4, optimizer=Adam(model.parameters(), lr=1e-2),
                  validation_data=(val_x, val_y), batch_size=16,
                  transform=Compose([ToFloat(), RandomHorizontalFlip(p=1.0)]), seed=3, verbose=0)
    assert history["accuracy"][-1] > 0.95
    assert history["val_accuracy"][-1] == pytest.approx(np.mean(val_y == 2), abs=0.02)
    plain = evaluate(model, (val_x, val_y), transform=ToFloat())
    assert plain["loss"] == history["val_loss"][-1] and plain["accuracy"] == history["val_accuracy"][-1]
    assert evaluate(model, (np.ascontiguousarray(val_x[..., ::-1]), val_y), transform=ToFloat())["accuracy"] > 0.95
