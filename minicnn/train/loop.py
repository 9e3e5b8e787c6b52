"""fit / evaluate / predict: the training loop.

One training step on a batch (x, y):

    logits = model(x);  L = loss(logits, y)
    if L is finite:  zero grads, L.backward(), optimizer.step()   (and a per-batch scheduler step)

A non-finite loss never reaches the weights: its update is skipped (and
:class:`~minicnn.train.callbacks.TerminateOnNaN` stops the run).  After each
epoch the validation data is evaluated, an epoch scheduler steps, the epoch's
logs go to the :class:`History` and the callbacks, and, with
``checkpoint_path``, the whole training state is saved atomically.

Data may be a :class:`~minicnn.data.DataLoader`, a dataset (``.images``,
``.labels``) or an ``(images, labels)`` pair; the latter two are wrapped in
loaders here.  uint8 images are scaled to [0, 1].

Reproducibility and resuming.  Everything random descends from ``seed``
(drawn from :func:`minicnn.random.default_rng` when None): the validation
split, the shuffling and augmentation stream, and (through the global
generator) dropout.  ``resume_from`` restores a state saved by
``checkpoint_path`` (or :meth:`Trainer.save`): weights, optimizer, scheduler,
callback states, history, the loaders' positions, the global RNG and the
seed; the run then continues to ``epochs`` as if it had never stopped, with
bit-identical weights.
"""
import math
import sys
import time

import numpy as np

from ..data import DataLoader, train_val_split
from ..data.transforms import augmentations, without_augmentation
from ..io.checkpoint import CheckpointError, load_training_state, save_training_state
from ..ops import cross_entropy
from ..random import default_rng
from ..tensor import Tensor, no_grad
from .callbacks import Callback
from .history import History
from .metrics import accuracy
from .progress import ProgressBar

DEFAULT_METRICS = {"accuracy": accuracy}
EVAL_BATCH_SIZE = 256


def as_loader(data, batch_size=EVAL_BATCH_SIZE, **options):
    """``data`` as a DataLoader: loaders pass through; datasets, (images, labels) pairs and
    bare image arrays (predict only: labels are zeros) are wrapped with ``options``.

    Evaluation loaders get a fixed seed (they neither shuffle nor augment), so that
    building one never draws from the global generator and shifts dropout's stream."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray):
        data = (data, np.zeros(len(data), np.int64))
    if not options.get("train", True):
        options.setdefault("seed", 0)
    return DataLoader(data, batch_size=batch_size, **options)


class _EvalMode:
    """Context: the model in eval mode with no graph; each module's mode restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.no_grad = no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        for m, mode in self.modes:
            object.__setattr__(m, "training", mode)


def _check_metrics(metrics):
    metrics = DEFAULT_METRICS if metrics is None else dict(metrics)
    for name, fn in metrics.items():
        if not callable(fn):
            raise TypeError(f"metric {name!r} must be callable fn(y_true, logits), got {fn!r}")
    return metrics


def _run_eval(model, loader, loss, metrics):
    """Mean loss and metrics over ``loader`` (in eval mode, no graph)."""
    totals = dict.fromkeys(["loss", *metrics], 0.0)
    n = 0
    with _EvalMode(model):
        for x, y in loader:
            logits = model(Tensor(x))
            b = len(y)
            totals["loss"] += float(loss(logits, y).data) * b
            for name, fn in metrics.items():
                totals[name] += fn(y, logits.data) * b
            n += b
    return {k: v / n for k, v in totals.items()}


def evaluate(model, data, loss=cross_entropy, metrics=None, batch_size=EVAL_BATCH_SIZE, transform=None):
    """{'loss': mean loss, metric name: mean} over ``data``, batched, in eval mode under no_grad.

    ``metrics`` maps names to ``fn(y_true, logits) -> batch mean`` (default: accuracy).
    """
    loader = as_loader(data, batch_size, transform=transform, train=False)
    return _run_eval(model, loader, loss, _check_metrics(metrics))


def predict(model, data, batch_size=EVAL_BATCH_SIZE, transform=None):
    """Model outputs (N, ...) for every image of ``data``, in order, batched, in eval mode."""
    loader = as_loader(data, batch_size, transform=transform, train=False)
    outs = []
    with _EvalMode(model):
        for x, _ in loader:
            outs.append(model(Tensor(x)).data)
    return np.concatenate(outs)


def _seed(seed):
    if seed is None:
        return int(default_rng().integers(0, 2**63 - 1))
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


class Trainer:
    """Holds a training run: model, optimizer, data, callbacks, History, epoch counter.

    ``fit(epochs)`` trains until ``epochs`` epochs are done (counting those of a run
    resumed from), a callback sets ``stop_training``, or a batch loss is non-finite
    and TerminateOnNaN stops it.  See :func:`fit` for the arguments.
    """

    def __init__(self, model, train_data, optimizer, loss=cross_entropy, validation_data=None,
                 validation_split=None, batch_size=32, callbacks=(), scheduler=None, metrics=None,
                 transform=None, shuffle=True, seed=None, verbose=1, checkpoint_path=None,
                 resume_from=None, prefetch="auto", stream=None):
        if not callable(loss):
            raise TypeError(f"loss must be callable loss(logits, targets), got {loss!r}")
        if validation_data is not None and validation_split is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        self.model, self.optimizer, self.loss, self.scheduler = model, optimizer, loss, scheduler
        self.callbacks = list(callbacks)
        self.metrics = _check_metrics(metrics)
        self.verbose, self.stream = int(verbose), (sys.stdout if stream is None else stream)
        self.checkpoint_path = checkpoint_path
        self.history = History()
        self.epoch = 0  # epochs completed
        self.stop_training = False
        self._callback_states = None
        interval = getattr(scheduler, "interval", "epoch") if scheduler is not None else None
        if interval not in (None, "epoch", "batch"):
            raise ValueError(f"scheduler.interval must be 'epoch' or 'batch', got {interval!r}")
        self._batch_scheduler = interval == "batch"
        resumed = load_training_state(resume_from, model, optimizer, scheduler) if resume_from else None
        self.seed = int(resumed["seed"]) if resumed else _seed(seed)
        split_seed, loader_seed = (int(s) for s in np.random.SeedSequence(self.seed).generate_state(2))
        if validation_split is not None:
            if isinstance(train_data, DataLoader):
                raise ValueError("validation_split needs the training data itself, not a DataLoader; "
                                 "split it with minicnn.data.train_val_split and pass validation_data")
            train_data, validation_data = train_val_split(train_data, validation_split, seed=split_seed)
        if prefetch == "auto":
            prefetch = bool(augmentations(transform))
        self.train_loader = as_loader(train_data, batch_size, shuffle=shuffle, transform=transform,
                                      seed=loader_seed, prefetch=prefetch)
        self.val_loader = None
        if validation_data is not None:
            val_transform = None if transform is None else without_augmentation(transform)
            self.val_loader = as_loader(validation_data, max(batch_size, EVAL_BATCH_SIZE),
                                        transform=val_transform, train=False)
        if resumed:
            self._restore(resume_from, resumed)

    # -------------------------------------------------------------- resuming
    def save(self, path):
        """Save the whole training state (see the module docstring) atomically to ``path``."""
        return save_training_state(
            path, self.model, self.optimizer, self.scheduler, epoch=self.epoch, seed=self.seed,
            train_loader=self.train_loader.state_dict(), history=self.history.state_dict(),
            callbacks=[[type(cb).__name__, cb.state_dict()] for cb in self.callbacks])

    def _restore(self, path, state):
        self.epoch = state["epoch"]
        self.train_loader.load_state_dict(state["train_loader"])
        self.history.load_state_dict(state["history"])
        saved = [name for name, _ in state["callbacks"]]
        have = [type(cb).__name__ for cb in self.callbacks]
        if saved != have:
            raise CheckpointError(f"checkpoint {path} was saved with callbacks {saved}; this run has "
                                  f"{have}: pass the same callbacks to resume exactly")
        self._callback_states = [s for _, s in state["callbacks"]]

    # -------------------------------------------------------------- training
    def log(self, message):
        """Print a message (callbacks use this); silent when verbose=0."""
        if self.verbose:
            print(message, file=self.stream, flush=True)

    def _lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, epoch, bar):
        """One pass over the training data, drawing ``bar``.  Returns (running means of
        loss and metrics, images seen, seconds, whether the pass completed: False when a
        callback stopped training mid-epoch)."""
        model, optimizer, loss_fn, metrics = self.model, self.optimizer, self.loss, self.metrics
        batch_callbacks = [cb for cb in self.callbacks if type(cb).on_batch_end is not Callback.on_batch_end]
        model.train()
        self.train_loader.set_epoch(epoch)
        totals = dict.fromkeys(["loss", *metrics], 0.0)
        seen = skipped = 0
        start = time.perf_counter()
        for b, (x, y) in enumerate(self.train_loader):
            logits = model(Tensor(x))
            loss = loss_fn(logits, y)
            value = float(loss.data)
            if math.isfinite(value):
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if self._batch_scheduler:
                    self.scheduler.step()
            else:
                skipped += 1
            n = len(y)
            seen += n
            totals["loss"] += value * n
            for name, fn in metrics.items():
                totals[name] += fn(y, logits.data) * n
            for cb in batch_callbacks:
                cb.on_batch_end(self, b, {"loss": value, "size": n})
            means = {k: v / seen for k, v in totals.items()}
            if self.stop_training:  # shown, but not recorded as an epoch
                seconds = time.perf_counter() - start
                bar.finish(b + 1, seen, seconds, means)
                return means, seen, seconds, False
            bar.update(b + 1, seen, means)
        if skipped:
            self.log(f"warning: {skipped} batches of epoch {epoch + 1} had a non-finite loss; "
                     "their updates were skipped")
        return means, seen, time.perf_counter() - start, True

    def fit(self, epochs):
        """Train until ``epochs`` epochs are complete; returns the History."""
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        self.stop_training = False
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if self._callback_states is not None:
            for cb, state in zip(self.callbacks, self._callback_states):
                cb.load_state_dict(state)
            self._callback_states = None
        try:
            while self.epoch < epochs and not self.stop_training:
                self._one_epoch(self.epoch, epochs)
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.history

    def _one_epoch(self, epoch, epochs):
        for cb in self.callbacks:
            cb.on_epoch_begin(self, epoch)
        lr = self._lr()
        bar = ProgressBar(f"Epoch {epoch + 1}/{epochs}", len(self.train_loader), self.stream,
                          enabled=self.verbose > 0)
        logs, seen, seconds, completed = self.train_epoch(epoch, bar)
        if not completed:
            return
        if self.val_loader is not None:
            val = _run_eval(self.model, self.val_loader, self.loss, self.metrics)
            logs.update({f"val_{k}": v for k, v in val.items()})
        logs["lr"], logs["time"] = lr, seconds
        bar.finish(len(self.train_loader), seen, seconds, logs)
        if self.scheduler is not None and not self._batch_scheduler:
            self.scheduler.step()
        self.epoch = epoch + 1
        self.history.append(epoch, logs)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, logs)
        if self.checkpoint_path is not None:
            self.save(self.checkpoint_path)


def fit(model, train_data, *, epochs, optimizer, loss=cross_entropy, validation_data=None,
        validation_split=None, callbacks=(), scheduler=None, batch_size=32, **options):
    """Train ``model`` for ``epochs`` epochs; returns the :class:`History`.

    model: a Module mapping float32 NCHW batches to logits.
    train_data: DataLoader, dataset or (images, labels); shuffled each epoch.
    optimizer: a minicnn.optim optimizer over the model's parameters.
    loss: ``loss(logits, targets)`` -> scalar Tensor (default cross_entropy).
    validation_data / validation_split: held-out data, or the fraction of train_data to
        hold out (stratified, from ``seed``); its loss and metrics are logged as ``val_*``.
    callbacks: Callback objects (EarlyStopping, ModelCheckpoint, ...).
    scheduler: an LR scheduler, stepped per epoch or per batch as its ``interval`` says.
    batch_size: training batch size (default 32; validation uses max(batch_size, 256)).

    Options (keywords): metrics ({name: fn(y_true, logits)}, default accuracy);
    transform (batch transform for the training data; its augmentations are dropped
    for validation); shuffle (True); seed (None: drawn from the global generator);
    verbose (1: a progress line per epoch, 0: silent); checkpoint_path (save the full
    training state there after every epoch); resume_from (continue a saved run);
    prefetch ('auto': a background thread builds batches when there is augmentation);
    stream (where progress goes, default stdout).
    """
    trainer = Trainer(model, train_data, optimizer, loss=loss, validation_data=validation_data,
                      validation_split=validation_split, batch_size=batch_size, callbacks=callbacks,
                      scheduler=scheduler, **options)
    return trainer.fit(epochs)
