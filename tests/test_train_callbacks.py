"""Callbacks driven by scripted epoch logs (a stub trainer), and one real run each where it matters."""
import csv
import math

import numpy as np
import pytest

from minicnn import nn
from minicnn.io import load_model
from minicnn.optim import SGD
from minicnn.train import (CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                           ReduceLROnPlateau, fit)


class Stub:
    """What callbacks see of a Trainer."""

    def __init__(self, lr=0.1):
        self.model = nn.Linear(2, 2)
        self.optimizer = SGD([{"params": [self.model.weight], "lr": lr},
                              {"params": [self.model.bias], "lr": lr / 10}])
        self.stop_training, self.epoch, self.messages = False, 0, []

    def log(self, message):
        self.messages.append(message)


def drive(callback, values, monitor="val_loss", trainer=None, on_epoch=None):
    """Run ``callback`` through epochs whose ``monitor`` takes ``values``; returns the
    trainer and the epoch training stopped after (None if it did not)."""
    trainer = trainer or Stub()
    callback.on_train_begin(trainer)
    stopped = None
    for epoch, v in enumerate(values):
        callback.on_epoch_begin(trainer, epoch)
        if on_epoch:
            on_epoch(trainer, epoch)
        callback.on_epoch_end(trainer, epoch, {"loss": 1.0, monitor: v})
        if trainer.stop_training:
            stopped = epoch
            break
    callback.on_train_end(trainer)
    return trainer, stopped


@pytest.mark.parametrize("patience, stop", [(0, 2), (1, 2), (2, 3), (3, 4), (5, None)])  # Keras: 0 acts as 1
def test_early_stopping_patience(patience, stop):
    _, stopped = drive(EarlyStopping(patience=patience), [1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert stopped == stop


def test_early_stopping_min_delta_and_max_mode():
    _, stopped = drive(EarlyStopping(patience=2, min_delta=0.1), [1.0, 0.95, 0.92, 0.5])
    assert stopped == 2  # 0.95 and 0.92 are not better than 1.0 by more than 0.1
    _, stopped = drive(EarlyStopping("val_accuracy", patience=2), [0.5, 0.6, 0.55, 0.7], "val_accuracy")
    assert stopped is None  # auto mode is 'max' for accuracies
    _, stopped = drive(EarlyStopping("val_accuracy", patience=1, mode="min"), [0.5, 0.6], "val_accuracy")
    assert stopped == 1


def test_early_stopping_max_mode_with_min_delta_restores_the_best_epoch():
    """Max mode needs value > best + min_delta: 0.55 and 0.62 fall short of 0.5 + 0.1 and
    0.65 + 0.1, so epoch 2 stays the best and the run stops after epoch 4."""
    def set_weights(trainer, epoch):
        trainer.model.weight.data[:] = epoch

    es = EarlyStopping("val_accuracy", patience=2, min_delta=0.1, restore_best_weights=True)
    trainer, stopped = drive(es, [0.5, 0.55, 0.65, 0.62, 0.7], "val_accuracy", on_epoch=set_weights)
    assert stopped == 4 and es.best_epoch == 2
    assert np.all(trainer.model.weight.data == 2)


@pytest.mark.parametrize("monitor, values", [("val_loss", [1.0, 0.75]), ("val_accuracy", [0.5, 0.75])])
def test_a_change_of_exactly_min_delta_is_no_improvement(monitor, values):
    """Improving means by *more than* min_delta (0.25, exact in binary, as are the values)."""
    _, stopped = drive(EarlyStopping(monitor, patience=1, min_delta=0.25), values, monitor)
    assert stopped == 1


def test_early_stopping_restores_best_weights():
    def set_weights(trainer, epoch):
        trainer.model.weight.data[:] = epoch

    es = EarlyStopping(patience=2, restore_best_weights=True)
    trainer, stopped = drive(es, [3.0, 1.0, 2.0, 2.5, 0.1], on_epoch=set_weights)
    assert stopped == 3
    assert np.all(trainer.model.weight.data == 1)  # the weights of epoch 1 (val_loss 1.0)
    assert "restored the weights of epoch 2" in trainer.messages[-1]


def test_missing_monitor_is_explained():
    with pytest.raises(ValueError, match=r"monitors 'val_loss'.*\['loss'\].*validation"):
        EarlyStopping().on_epoch_end(Stub(), 0, {"loss": 1.0})
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="best")


def test_reduce_lr_on_plateau_with_cooldown_and_floor():
    rl = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    trainer = Stub(lr=0.1)
    lrs = []
    drive(rl, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], trainer=trainer,
          on_epoch=lambda t, e: lrs.append([g["lr"] for g in t.optimizer.param_groups]))
    first = [row[0] for row in lrs] + [trainer.optimizer.param_groups[0]["lr"]]
    # Keras's counting: the cooldown epoch resets the count, then counts itself; so reductions
    # after epochs 2, 4, 6 (and at 8 the floor stops it)
    assert first == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02, 0.02]
    assert trainer.optimizer.param_groups[1]["lr"] == 0.01  # below the floor already: never raised
    assert sum("learning rate" in m for m in trainer.messages) == 3
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=1.5)


def test_reduce_lr_max_mode_with_min_delta():
    """0.55 and 0.58 are not 0.1 above 0.5: reduce after epoch 2; 0.7 is; 0.65 and 0.75 are
    not 0.1 above it: reduce after epoch 5."""
    trainer = Stub(lr=1.0)
    lrs = []
    drive(ReduceLROnPlateau("val_accuracy", factor=0.5, patience=2, min_delta=0.1),
          [0.5, 0.55, 0.58, 0.7, 0.65, 0.75], "val_accuracy", trainer=trainer,
          on_epoch=lambda t, e: lrs.append(t.optimizer.param_groups[0]["lr"]))
    assert lrs + [trainer.optimizer.param_groups[0]["lr"]] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_reduce_lr_reduces_small_learning_rates_too():
    """1e-6 -> 1e-7 is a change (only a no-op at the floor is skipped)."""
    trainer = Stub(lr=1e-6)
    drive(ReduceLROnPlateau(factor=0.1, patience=1), [1.0, 1.0], trainer=trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-7, rel=1e-12)
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(1e-8, rel=1e-12)


def test_reduce_lr_resets_on_improvement():
    trainer = Stub(lr=1.0)
    drive(ReduceLROnPlateau(factor=0.1, patience=2), [5, 5, 4, 4, 3, 3, 2], trainer=trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == 1.0


def test_model_checkpoint_best_only(tmp_path):
    trainer = Stub()

    def set_weights(t, epoch):
        t.model.weight.data[:] = epoch

    mc = ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss", save_best_only=True,
                         metadata={"note": "hi"})
    drive(mc, [3.0, 1.0, 2.0], trainer=trainer, on_epoch=set_weights)
    fresh = nn.Linear(2, 2)
    meta = load_model(tmp_path / "best.npz", fresh)
    assert np.all(fresh.weight.data == 1) and meta["epoch"] == 2 and meta["val_loss"] == 1.0
    assert meta["note"] == "hi"
    assert sum("improved" in m for m in trainer.messages) == 2


def test_model_checkpoint_every_epoch_with_a_pattern(tmp_path):
    drive(ModelCheckpoint(tmp_path / "ck-{epoch:02d}-{val_loss:.1f}.npz"), [3.0, 1.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck-01-3.0.npz", "ck-02-1.0.npz"]
    with pytest.raises(ValueError, match="names 'nope'"):
        drive(ModelCheckpoint(tmp_path / "{nope}.npz"), [1.0])


def test_csv_logger(tmp_path):
    path = tmp_path / "log.csv"
    drive(CSVLogger(path), [0.5, 0.25])
    rows = list(csv.reader(path.open()))
    assert rows == [["epoch", "loss", "val_loss"], ["1", "1.0", "0.5"], ["2", "1.0", "0.25"]]
    resumed = Stub()
    resumed.epoch = 2  # a resumed run appends, without a second header
    drive(CSVLogger(path), [0.125], trainer=resumed)
    assert list(csv.reader(path.open()))[-1] == ["1", "1.0", "0.125"] and len(list(csv.reader(path.open()))) == 4


def test_learning_rate_scheduler():
    trainer = Stub(lr=1.0)
    seen = []
    drive(LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr), [1, 1, 1], trainer=trainer,
          on_epoch=lambda t, e: seen.append(t.optimizer.param_groups[0]["lr"]))
    assert seen == [1.0, 0.5, 0.25] and trainer.optimizer.param_groups[1]["lr"] == 0.025
    with pytest.raises(ValueError, match="gave nan"):
        drive(LearningRateScheduler(lambda e, lr: math.nan), [1])
    with pytest.raises(TypeError):
        LearningRateScheduler(0.1)


def test_early_stopping_in_a_real_run():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = np.random.default_rng(0).random((40, 2, 2)).astype(np.float32)
    y = np.arange(40) % 2  # pure noise: validation loss stops improving quickly
    es = EarlyStopping(patience=1, restore_best_weights=True)
    history = fit(model, (x, y), epochs=60, optimizer=SGD(model.parameters(), lr=2.0), validation_data=(x[:10], y[:10]),
                  callbacks=[es], batch_size=8, verbose=0)
    assert len(history) < 60 and es.stopped_epoch == len(history) - 1
    best_epoch, best = history.best("val_loss")
    assert best_epoch == es.best_epoch and best == pytest.approx(es.state_dict()["best"])
