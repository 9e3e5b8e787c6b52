"""fit / evaluate: the training loop (predict: :mod:`minicnn.train.predict`).

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

Several processes.  ``strategy`` decides what the loop does when it is one of
several processes training together (data parallelism); this module never
imports anything distributed.  The default is one process.  A strategy (e.g.
``minicnn.distributed.MPIStrategy``) is an object with

    is_main                       True on the one process that prints and writes files
    prepare(model, optimizer)     -> the optimizer to use (same start everywhere)
    broadcast(value)              -> the main process's value
    sampler(n, shuffle, seed, train) -> this process's share of n examples, or None
    sum(values)                   -> the float64 array ``values`` added over the processes
    barrier()                     returns when every process has called it

With it, the seed is the main process's, each process trains on its share of
each batch (``batch_size`` per process), the logged loss and metrics are means
over all processes' images, and a non-finite loss on any process skips the
step on all.  Only the main process prints, saves ``checkpoint_path`` and runs
the callbacks that write files (ModelCheckpoint, CSVLogger, and any callback with
``main_process_only = True``); the others still keep their state, so a resumed
run finds the same callbacks.  Every callback must decide ``stop_training``
the same way on every process (the logged values are the same everywhere).
A checkpoint to resume from must be readable by every process.
"""
import math
import sys
import time

import numpy as np

from ..data import DataLoader, train_val_split
from ..data.transforms import augmentations, without_augmentation
from ..io.checkpoint import load_training_state, save_training_state
from ..ops import cross_entropy
from ..random import default_rng
from ..tensor import Tensor, no_grad
from .callbacks import Callback, CSVLogger, ModelCheckpoint
from .history import History
from .metrics import accuracy
from .progress import ProgressBar

DEFAULT_METRICS = {"accuracy": accuracy}
EVAL_BATCH_SIZE = 256
MAIN_PROCESS_CALLBACKS = (ModelCheckpoint, CSVLogger)   # they write files


class OneProcess:
    """The default strategy: training in this process only (see the module docstring)."""

    is_main = True

    def prepare(self, model, optimizer):
        return optimizer

    def broadcast(self, value):
        return value

    def sampler(self, n, shuffle, seed, train):
        return None

    def sum(self, values):
        return np.asarray(values, np.float64)

    def barrier(self):
        pass


def _num_examples(data):
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray):
        return len(data)
    return len(data.labels) if hasattr(data, "labels") else len(data[1])


def _shard(data, strategy, shuffle, seed, train):
    """Loader options for this process's share of ``data`` (none for one process)."""
    sampler = strategy.sampler(_num_examples(data), shuffle, seed, train)
    if isinstance(data, DataLoader):
        if sampler is not None and data.sampler is None:
            raise ValueError("with a distributed strategy, pass the data itself (a dataset or (images, labels)), "
                             "not a DataLoader, so that each process gets its share; or give the "
                             "DataLoader a sampler")
        return {}
    return {} if sampler is None else {"sampler": sampler, "shuffle": False}


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


def _means(totals, n, strategy):
    """({name: total / n}, n), totals and n first added over the processes of ``strategy``."""
    summed = strategy.sum([*totals.values(), n])
    return {k: float(v / summed[-1]) for k, v in zip(totals, summed[:-1])}, int(summed[-1])


def _run_eval(model, loader, loss, metrics, strategy=None):
    """Mean loss and metrics over ``loader`` (in eval mode, no graph), over every process's share."""
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
    return _means(totals, n, strategy or OneProcess())[0]


def evaluate(model, data, loss=cross_entropy, metrics=None, batch_size=EVAL_BATCH_SIZE, transform=None):
    """{'loss': mean loss, metric name: mean} over ``data``, batched, in eval mode under no_grad.

    ``metrics`` maps names to ``fn(y_true, logits) -> batch mean`` (default: accuracy).
    """
    loader = as_loader(data, batch_size, transform=transform, train=False)
    return _run_eval(model, loader, loss, _check_metrics(metrics))


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
                 resume_from=None, prefetch="auto", stream=None, strategy=None):
        if not callable(loss):
            raise TypeError(f"loss must be callable loss(logits, targets), got {loss!r}")
        if validation_data is not None and validation_split is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        self.model, self.optimizer, self.loss, self.scheduler = model, optimizer, loss, scheduler
        self.strategy = OneProcess() if strategy is None else strategy
        self.callbacks = list(callbacks)
        self.metrics = _check_metrics(metrics)
        self.verbose = int(verbose) if self.strategy.is_main else 0
        self.stream = sys.stdout if stream is None else stream
        self.checkpoint_path = checkpoint_path
        self.history = History()
        self.epoch = 0  # epochs completed
        self.stop_training = False
        self._callback_states = None
        interval = getattr(scheduler, "interval", "epoch") if scheduler is not None else None
        if interval not in (None, "epoch", "batch"):
            raise ValueError(f"scheduler.interval must be 'epoch' or 'batch', got {interval!r}")
        self._batch_scheduler = interval == "batch"
        resumed = load_training_state(resume_from, model, optimizer, scheduler,
                                      check_extra=self._check_resume) if resume_from else None
        self.seed = int(resumed["seed"]) if resumed else self.strategy.broadcast(_seed(seed))
        self.optimizer = self.strategy.prepare(model, optimizer)
        split_seed, loader_seed = (int(s) for s in np.random.SeedSequence(self.seed).generate_state(2))
        if validation_split is not None:
            if isinstance(train_data, DataLoader):
                raise ValueError("validation_split needs the training data itself, not a DataLoader; "
                                 "split it with minicnn.data.train_val_split and pass validation_data")
            train_data, validation_data = train_val_split(train_data, validation_split, seed=split_seed)
        if prefetch == "auto":
            prefetch = bool(augmentations(transform))
        train_options = {"shuffle": shuffle, **_shard(train_data, self.strategy, shuffle, loader_seed, True)}
        self.train_loader = as_loader(train_data, batch_size, transform=transform, seed=loader_seed,
                                      prefetch=prefetch, **train_options)
        self.val_loader = None
        if validation_data is not None:
            val_transform = None if transform is None else without_augmentation(transform)
            self.val_loader = as_loader(validation_data, max(batch_size, EVAL_BATCH_SIZE), transform=val_transform,
                                        train=False, **_shard(validation_data, self.strategy, False, 0, False))
        if resumed:
            self._restore(resume_from, resumed)

    # -------------------------------------------------------------- resuming
    def save(self, path):
        """Save the whole training state (see the module docstring) atomically to ``path``."""
        return save_training_state(
            path, self.model, self.optimizer, self.scheduler, epoch=self.epoch, seed=self.seed,
            train_loader=self.train_loader.state_dict(), history=self.history.state_dict(),
            callbacks=[[type(cb).__name__, cb.state_dict()] for cb in self.callbacks])

    def _check_resume(self, state):
        """Refuse (ValueError) a saved state this trainer cannot restore; load_training_state
        calls it before changing the model or the optimizer."""
        def fields(tree, where, **types):
            if not isinstance(tree, dict) or any(not isinstance(tree.get(k), t) or isinstance(tree.get(k), bool)
                                                 for k, t in types.items()):
                raise ValueError(f"field {where!r} must be a dict with {sorted(types)} of types "
                                 f"{[t.__name__ for t in types.values()]}, got {tree!r:.80}")
        fields(state, "extra", seed=int, train_loader=dict, history=dict, callbacks=list)
        fields(state["train_loader"], "train_loader", seed=int, epoch=int)
        fields(state["history"], "history", epoch=list, history=dict)
        history = state["history"]
        if not all(isinstance(e, int) for e in history["epoch"]) or not all(
                isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in history["history"].values()):
            raise ValueError(f"field 'history' must hold int epochs and lists of numbers, got {history!r:.80}")
        loader = state["train_loader"]
        if min(state["seed"], loader["seed"], loader["epoch"]) < 0:
            raise ValueError(f"field 'seed' and the 'train_loader' seed and epoch must be >= 0, got "
                             f"{state['seed']}, {loader['seed']}, {loader['epoch']}")
        if not all(isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], dict)
                   for c in state["callbacks"]):
            raise ValueError(f"field 'callbacks' must list [name, state dict] pairs, got {state['callbacks']!r:.80}")
        saved = [name for name, _ in state["callbacks"]]
        have = [type(cb).__name__ for cb in self.callbacks]
        if saved != have:
            raise ValueError(f"saved with callbacks {saved}; this run has {have}: pass the same "
                             "callbacks to resume exactly")

    def _restore(self, path, state):
        self.epoch = state["epoch"]
        self.train_loader.load_state_dict(state["train_loader"])
        self.history.load_state_dict(state["history"])
        self._callback_states = [s for _, s in state["callbacks"]]

    def _active_callbacks(self):
        """The callbacks this process runs: all of them on the main process."""
        if self.strategy.is_main:
            return self.callbacks
        return [cb for cb in self.callbacks
                if not getattr(cb, "main_process_only", isinstance(cb, MAIN_PROCESS_CALLBACKS))]

    # -------------------------------------------------------------- training
    def log(self, message):
        """Print a message (callbacks use this); silent when verbose=0."""
        if self.verbose:
            print(message, file=self.stream, flush=True)

    def _lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, epoch, bar):
        """One pass over the training data, drawing ``bar``.  Returns (running means of
        loss and metrics, images seen (by every process), seconds, whether the pass completed:
        False when a callback stopped training mid-epoch)."""
        model, optimizer, loss_fn, metrics = self.model, self.optimizer, self.loss, self.metrics
        batch_callbacks = [cb for cb in self._active_callbacks()
                           if type(cb).on_batch_end is not Callback.on_batch_end]
        model.train()
        self.train_loader.set_epoch(epoch)
        totals = dict.fromkeys(["loss", *metrics], 0.0)
        seen = skipped = 0
        start = time.perf_counter()
        for b, (x, y) in enumerate(self.train_loader):
            logits = model(Tensor(x))
            loss = loss_fn(logits, y)
            value = float(loss.data)
            finite = self._all_finite(value)
            if finite:
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
            logged = value if finite == math.isfinite(value) else math.nan   # non-finite somewhere else
            for cb in batch_callbacks:
                cb.on_batch_end(self, b, {"loss": logged, "size": n})
            if self.stop_training:  # shown, but not recorded as an epoch
                seconds, (means, seen) = time.perf_counter() - start, _means(totals, seen, self.strategy)
                bar.finish(b + 1, seen, seconds, means)
                return means, seen, seconds, False
            bar.update(b + 1, seen, {k: v / seen for k, v in totals.items()})   # this process's share so far
        if skipped:
            self.log(f"warning: {skipped} batches of epoch {epoch + 1} had a non-finite loss; "
                     "their updates were skipped")
        means, seen = _means(totals, seen, self.strategy)
        return means, seen, time.perf_counter() - start, True

    def _all_finite(self, value):
        """Whether the batch loss is finite on every process (all skip the step together)."""
        return self.strategy.sum([not math.isfinite(value)])[0] == 0

    def fit(self, epochs):
        """Train until ``epochs`` epochs are complete; returns the History."""
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        self.stop_training = False
        for cb in self._active_callbacks():
            cb.on_train_begin(self)
        if self._callback_states is not None:
            for cb, state in zip(self.callbacks, self._callback_states):
                cb.load_state_dict(state)
            self._callback_states = None
        try:
            while self.epoch < epochs and not self.stop_training:
                self._one_epoch(self.epoch, epochs)
        finally:
            for cb in self._active_callbacks():
                cb.on_train_end(self)
        return self.history

    def _one_epoch(self, epoch, epochs):
        for cb in self._active_callbacks():
            cb.on_epoch_begin(self, epoch)
        lr = self._lr()
        group_lrs = tuple(dict.fromkeys(g["lr"] for g in self.optimizer.param_groups))   # distinct, in order
        bar = ProgressBar(f"Epoch {epoch + 1}/{epochs}", len(self.train_loader), self.stream,
                          enabled=self.verbose > 0)
        logs, seen, seconds, completed = self.train_epoch(epoch, bar)
        if not completed:
            return
        if self.val_loader is not None:
            val = _run_eval(self.model, self.val_loader, self.loss, self.metrics, self.strategy)
            logs.update({f"val_{k}": v for k, v in val.items()})
        logs["lr"], logs["time"] = lr, seconds
        bar.finish(len(self.train_loader), seen, seconds, {**logs, "lr": group_lrs})
        if self.scheduler is not None and not self._batch_scheduler:
            self.scheduler.step()
        self.epoch = epoch + 1
        self.history.append(epoch, logs)
        for cb in self._active_callbacks():
            cb.on_epoch_end(self, epoch, logs)
        if self.checkpoint_path is not None:
            if self.strategy.is_main:
                self.save(self.checkpoint_path)
            self.strategy.barrier()


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
    stream (where progress goes, default stdout); strategy (None: this process only;
    ``minicnn.distributed.MPIStrategy()`` trains on every MPI rank, ``batch_size`` images
    each: see the module docstring).
    """
    trainer = Trainer(model, train_data, optimizer, loss=loss, validation_data=validation_data,
                      validation_split=validation_split, batch_size=batch_size, callbacks=callbacks,
                      scheduler=scheduler, **options)
    return trainer.fit(epochs)
