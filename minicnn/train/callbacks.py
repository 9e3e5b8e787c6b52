"""Callbacks: code the training loop calls at fixed points (Keras's names and defaults).

A callback overrides any of

    on_train_begin(trainer)            on_epoch_begin(trainer, epoch)
    on_batch_end(trainer, batch, logs) on_epoch_end(trainer, epoch, logs)
    on_train_end(trainer)

``trainer`` is the running :class:`~minicnn.train.loop.Trainer` (``model``,
``optimizer``, ``history``, ``stop_training``, ``log``).  Epochs count from 0.
Batch logs hold ``loss`` (that batch's) and ``size``; epoch logs hold the
epoch's means (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``), the
learning rate ``lr`` and the epoch's seconds ``time``.

Callbacks with memory (best value so far, patience counters) expose
``state_dict``/``load_state_dict`` so a resumed run behaves as an
uninterrupted one.  Their states are restored after ``on_train_begin``.
"""
import csv
import math
from pathlib import Path

from ..io.checkpoint import save_model
from .layer_monitor import LayerMonitor  # noqa: F401  (re-exported: every callback in one place)
from .tensorboard import TensorBoard  # noqa: F401  (re-exported; needs the tensorboard extra only when built)


class Callback:
    """Base class: every hook does nothing."""

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_batch_end(self, trainer, batch, logs):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class _Monitor:
    """Tracks the best value of one logged quantity.

    mode 'min' improves when value < best - min_delta, 'max' when value > best + min_delta;
    'auto' is 'max' for names containing 'acc' and 'min' otherwise.  NaN never improves.
    """

    def __init__(self, owner, monitor, mode, min_delta):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if min_delta < 0:
            raise ValueError(f"{owner}: min_delta must be >= 0, got {min_delta}")
        self.owner, self.monitor, self.min_delta = owner, monitor, min_delta
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.reset()

    def reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf

    def value(self, logs):
        if self.monitor not in logs:
            hint = " (pass validation data or validation_split)" if self.monitor.startswith("val_") else ""
            raise ValueError(f"{self.owner} monitors {self.monitor!r}, but the epoch logs only have "
                             f"{sorted(logs)}{hint}")
        return float(logs[self.monitor])

    def improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` the model ends training (stopped early or not) with
    the weights of its best epoch.  Defaults: monitor='val_loss', patience=0,
    min_delta=0, mode='auto', restore_best_weights=False.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False):
        self._m = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.patience, self.restore_best_weights = int(patience), restore_best_weights

    def on_train_begin(self, trainer):
        self._m.reset()
        self.wait, self.best_epoch, self.stopped_epoch, self.best_weights = 0, None, None, None

    def on_epoch_end(self, trainer, epoch, logs):
        value = self._m.value(logs)
        if self._m.improved(value):
            self._m.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            trainer.stop_training = True
            trainer.log(f"EarlyStopping: {self._m.monitor} has not improved on {self._m.best:.4f} "
                        f"(epoch {self.best_epoch + 1 if self.best_epoch is not None else '-'}) "
                        f"for {self.wait} epochs; stopping after epoch {epoch + 1}")

    def on_train_end(self, trainer):
        if self.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
            trainer.log(f"EarlyStopping: restored the weights of epoch {self.best_epoch + 1} "
                        f"({self._m.monitor} {self._m.best:.4f})")

    def state_dict(self):
        return {"best": self._m.best, "wait": self.wait, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self._m.best, self.wait, self.best_epoch = state["best"], state["wait"], state["best_epoch"]
        self.best_weights = state["best_weights"]


class ReduceLROnPlateau(Callback):
    """Multiply every group's learning rate by ``factor`` when ``monitor`` stalls for
    ``patience`` epochs, then wait ``cooldown`` epochs before counting again; never below
    ``min_lr``.  Defaults (Keras's): monitor='val_loss', factor=0.1, patience=10,
    min_delta=1e-4, mode='auto', cooldown=0, min_lr=0.

    Do not combine with an LR scheduler: the scheduler would overwrite the reduced rate.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_lr=0.0, cooldown=0,
                 min_delta=1e-4, mode="auto"):
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self._m = _Monitor("ReduceLROnPlateau", monitor, mode, min_delta)
        self.factor, self.patience, self.min_lr, self.cooldown = factor, int(patience), min_lr, int(cooldown)

    def on_train_begin(self, trainer):
        self._m.reset()
        self.wait = self.cooldown_counter = 0

    def on_epoch_end(self, trainer, epoch, logs):
        value = self._m.value(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._m.improved(value):
            self._m.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                self._reduce(trainer, epoch)
                self.cooldown_counter, self.wait = self.cooldown, 0

    def _reduce(self, trainer, epoch):
        for group in trainer.optimizer.param_groups:
            old = group["lr"]
            new = max(old * self.factor, self.min_lr)
            if old - new > 1e-12 * max(old, 1e-30):
                group["lr"] = new
                trainer.log(f"ReduceLROnPlateau: epoch {epoch + 1}: {self._m.monitor} stalled at "
                            f"{self._m.best:.4f}; learning rate {old:.3g} -> {new:.3g}")

    def state_dict(self):
        return {"best": self._m.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state):
        self._m.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]


class ModelCheckpoint(Callback):
    """Save the model (:func:`minicnn.io.save_model`) after each epoch.

    path: may hold format fields from the epoch logs and ``epoch`` (counted from 1),
        e.g. ``"ckpt-{epoch:02d}-{val_accuracy:.3f}.npz"``.
    save_best_only: save only when ``monitor`` improves (default False: every epoch).
    metadata: extra dict stored with the weights (e.g. class names); the epoch and its
        logs are always stored.
    Defaults: monitor='val_loss', mode='auto'.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto", metadata=None):
        self.path, self.save_best_only, self.metadata = str(path), save_best_only, dict(metadata or {})
        self._m = _Monitor("ModelCheckpoint", monitor, mode, 0.0)
        self.last_saved = None

    def on_train_begin(self, trainer):
        self._m.reset()

    def on_epoch_end(self, trainer, epoch, logs):
        if self.save_best_only:
            value = self._m.value(logs)
            if not self._m.improved(value):
                return
            previous, self._m.best = self._m.best, value
        try:
            path = Path(self.path.format(epoch=epoch + 1, **logs))
        except KeyError as e:
            raise ValueError(f"ModelCheckpoint path {self.path!r} names {e}, which the epoch logs "
                             f"do not have ({sorted(logs)})") from e
        save_model(path, trainer.model, {**self.metadata, "epoch": epoch + 1, **logs})
        self.last_saved = str(path)
        if self.save_best_only:
            trainer.log(f"ModelCheckpoint: {self._m.monitor} improved from {previous:.4f} to "
                        f"{self._m.best:.4f}; saved {path}")

    def state_dict(self):
        return {"best": self._m.best, "last_saved": self.last_saved}

    def load_state_dict(self, state):
        self._m.best, self.last_saved = state["best"], state["last_saved"]


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch`` (from 1) and the epoch logs in sorted order.

    The file is rewritten at the start of training unless ``append`` or the run resumes
    from a checkpoint (then rows are added, with a header only if the file is empty).
    """

    def __init__(self, path, separator=",", append=False):
        self.path, self.separator, self.append = Path(path), separator, append
        self._file = self._writer = self._keys = None

    def on_train_begin(self, trainer):
        append = self.append or trainer.epoch > 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if append else "w", newline="")
        self._writer = csv.writer(self._file, delimiter=self.separator)
        self._keys = None
        self._header_needed = self._file.tell() == 0

    def on_epoch_end(self, trainer, epoch, logs):
        if self._keys is None:
            self._keys = sorted(logs)
            if self._header_needed:
                self._writer.writerow(["epoch", *self._keys])
        self._writer.writerow([epoch + 1, *(repr(float(logs.get(k, math.nan))) for k in self._keys)])
        self._file.flush()

    def on_train_end(self, trainer):
        if self._file is not None:
            self._file.close()
            self._file = None


class TerminateOnNaN(Callback):
    """Stop training at the first batch whose loss is NaN or infinite.

    The training loop never applies the update of a non-finite loss, so the model
    keeps the weights of the last finite step.
    """

    def on_batch_end(self, trainer, batch, logs):
        loss = logs["loss"]
        if not math.isfinite(loss):
            trainer.stop_training = True
            trainer.log(f"TerminateOnNaN: batch {batch + 1} of epoch {trainer.epoch + 1} has loss "
                        f"{loss}; training stopped with the weights of the last finite step")


class LearningRateScheduler(Callback):
    """Set each group's learning rate to ``schedule(epoch, lr)`` at the start of every epoch
    (epoch from 0, lr the group's current rate), as Keras's callback of the same name."""

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError(f"schedule must be callable schedule(epoch, lr), got {schedule!r}")
        self.schedule = schedule

    def on_epoch_begin(self, trainer, epoch):
        for group in trainer.optimizer.param_groups:
            lr = float(self.schedule(epoch, group["lr"]))
            if not math.isfinite(lr) or lr < 0:
                raise ValueError(f"LearningRateScheduler: schedule({epoch}, {group['lr']}) gave {lr}; "
                                 "expected a finite rate >= 0")
            group["lr"] = lr
