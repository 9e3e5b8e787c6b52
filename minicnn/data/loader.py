"""Batches for training and evaluation: DataLoader, train_val_split, background prefetch.

Reproducibility.  A loader has a ``seed`` (drawn from
:func:`minicnn.random.default_rng` when not given) and an ``epoch`` counter.
Iteration number e (counting from 0) uses the Generator
``np.random.default_rng(np.random.SeedSequence([seed, e]))`` for its shuffle
order and then for every batch's transform, in batch order; each ``iter()``
uses the current ``epoch`` and then advances it.  So the same seed gives the
same batches, and ``state_dict()`` / ``load_state_dict()`` (or
``set_epoch(e)``) resume at an epoch boundary exactly as an uninterrupted run.
The prefetch thread produces the same batches in the same order.

A ``sampler`` replaces the loader's own order: an object with ``__len__``,
``__iter__`` (the indices of the current epoch, in order) and optionally
``set_epoch(e)``, which the loader calls before each epoch e.  Its indices may
repeat and need not cover the data: a fixed list of indices works, and so does
one rank's share in data-parallel training
(``minicnn.distributed.DistributedSampler``).  The loader's seed then drives
only the transforms; a sampler's ``rank`` attribute, if it has one, is mixed
into that stream so that the ranks of one run augment independently.
"""
import queue
import threading

import numpy as np

from .. import random as mrandom
from .dataset import ArrayDataset, check_images, check_labels
from .transforms import augmentations


def _unpack(data, num_classes):
    """(images, labels int64, classes or None) from a dataset or an (images, labels) pair."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels, classes = data.images, data.labels, getattr(data, "classes", None)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        (images, labels), classes = data, None
    else:
        raise TypeError("expected a dataset with .images and .labels, or an (images, labels) "
                        f"pair; got {type(data).__name__}")
    images = check_images(images)
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError("the dataset is empty")
    if num_classes is None and classes is not None:
        num_classes = len(classes)
    return images, check_labels(labels, num_classes), classes


def _seed_from(seed):
    if seed is None:
        return int(mrandom.default_rng().integers(0, 2**63 - 1))
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


_END = object()


class _Failure:
    def __init__(self, error):
        self.error = error


def _prefetch(batches, depth):
    """Run the generator ``batches`` in a daemon thread, ``depth`` items ahead of the consumer.

    Exceptions in the thread are re-raised in the consumer; abandoning the iteration
    (break, close, garbage collection) stops the thread.
    """
    q = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in batches:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Failure(e))

    thread = threading.Thread(target=work, name="minicnn-prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
        batches.close()


class DataLoader:
    """Iterate over (x, y) batches: x float NCHW ndarray, y int64 ndarray.

    data: a dataset (``.images`` (N, H, W) or (N, C, H, W), ``.labels``, optional
        ``.classes``) or an ``(images, labels)`` pair.  Grey (N, H, W) becomes (N, 1, H, W).
    batch_size: images per batch (default 32); the last batch may be smaller unless
        ``drop_last``.  ``len(loader)`` is the number of batches.
    shuffle: a new permutation every epoch (default False).
    transform: ``t(x, rng)`` on each uint8/float (B, C, H, W) batch (see
        :mod:`minicnn.data.transforms`).  A batch still uint8 afterwards is scaled to
        [0, 1] (as ToFloat); the result is cast to ``dtype`` (default float32).
    seed: non-negative int; None draws one from :func:`minicnn.random.default_rng`.
    prefetch: False, True (2 batches ahead) or a queue depth: batches are produced by a
        background thread so augmentation overlaps the training step.
    train: False marks an evaluation loader, which refuses a transform holding any
        augmentation (ValueError).
    num_classes: bound for the labels' check when the data has no ``classes``.
    sampler: the indices of each epoch instead of 0..N-1 or a shuffle (see the module
        docstring); not with ``shuffle=True``.

    Raises ValueError for an empty dataset, image/label count mismatch, or labels outside
    [0, num_classes).  See the module docstring for seeding and resuming.
    """

    def __init__(self, data, batch_size=32, shuffle=False, drop_last=False, transform=None,
                 seed=None, prefetch=False, train=True, num_classes=None, dtype=np.float32, sampler=None):
        self.images, self.labels, self.classes = _unpack(data, num_classes)
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: pass shuffle=True or a sampler, not both (the sampler sets the order)")
        self.sampler = sampler
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable t(x, rng), got {transform!r}")
        if not train and (found := augmentations(transform)):
            names = ", ".join(type(t).__name__ for t in found)
            raise ValueError(
                f"an evaluation DataLoader (train=False) got augmentation in its transform: {names}. "
                "Validation and test data must not be augmented; pass "
                "transforms.without_augmentation(transform) instead.")
        depth = 2 if prefetch is True else int(prefetch)
        if depth < 0:
            raise ValueError(f"prefetch must be a bool or a queue depth >= 0, got {prefetch!r}")
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.transform, self.train, self.prefetch = transform, train, depth
        self.dtype = np.dtype(dtype)
        # A loader with nothing random in it takes no draw from the global
        # generator, so building an evaluation loader mid-training leaves the
        # dropout and init streams where they were.
        deterministic = seed is None and not shuffle and not augmentations(transform)
        self.seed = 0 if deterministic else _seed_from(seed)
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(f"the sampler {sampler!r} gives no index" if sampler is not None and not len(sampler)
                             else f"drop_last with batch_size {batch_size} > {len(self.labels)} images "
                             "leaves no batch")

    def __len__(self):
        n, b = len(self.labels) if self.sampler is None else len(self.sampler), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def num_classes(self):
        return len(self.classes) if self.classes is not None else int(self.labels.max()) + 1

    def set_epoch(self, epoch):
        """Make the next ``iter()`` produce epoch ``epoch``'s order and augmentation."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def state_dict(self):
        """{'seed', 'epoch'}: all that is needed to continue the same stream of batches."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.seed = _seed_from(int(state["seed"]))
        self.set_epoch(int(state["epoch"]))

    def epoch_rng(self, epoch):
        """The Generator that drives epoch ``epoch``: SeedSequence([seed, epoch]), with the
        sampler's ``rank`` appended if it has one."""
        rank = getattr(self.sampler, "rank", None)
        key = [self.seed, int(epoch)] + ([] if rank is None else [int(rank)])
        return np.random.default_rng(np.random.SeedSequence(key))

    def _order(self, epoch, rng):
        if self.sampler is None:
            n = len(self.labels)
            return rng.permutation(n) if self.shuffle else np.arange(n)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        order = np.fromiter(self.sampler, np.int64, count=len(self.sampler))
        if order.size and not 0 <= order.min() <= order.max() < len(self.labels):
            raise IndexError(f"DataLoader: the sampler gave indices in [{order.min()}, {order.max()}], "
                             f"outside the {len(self.labels)} images")
        return order

    def _batches(self, epoch):
        rng = self.epoch_rng(epoch)
        order = self._order(epoch, rng)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            x = self.images[idx]                      # fancy indexing: a copy, never a view
            if x.ndim == 3:
                x = x[:, None]
            if self.transform is not None:
                x = self.transform(x, rng)
            if x.dtype == np.uint8:
                x = np.multiply(x, self.dtype.type(1 / 255), dtype=self.dtype)
            yield np.ascontiguousarray(x, dtype=self.dtype), self.labels[idx]

    def __iter__(self):
        batches = self._batches(self.epoch)
        self.epoch += 1
        return _prefetch(batches, self.prefetch) if self.prefetch else batches


def _stratified_counts(counts, n_val):
    """Split n_val over classes in proportion to counts (largest remainder, ties to lower class)."""
    quota = counts * (n_val / counts.sum())
    take = np.floor(quota).astype(np.int64)
    extra = n_val - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    return take


def train_val_split(data, validation_split=0.2, stratify=True, shuffle=True, seed=None):
    """Split a dataset (or (images, labels)) into (train, val) ArrayDatasets.

    The validation part holds round(validation_split * N) images.  stratify: each class
    gives the same fraction (largest-remainder rounding).  shuffle: pick at random (from
    ``seed``, else :func:`minicnn.random.default_rng`); shuffle=False, stratify=False is
    Keras's ``validation_split``: the last fraction of the data.  Both parts keep the
    original order of their images.
    """
    images, labels, classes = _unpack(data, None)
    if not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}")
    n = len(labels)
    n_val = int(round(validation_split * n))
    if not 0 < n_val < n:
        raise ValueError(f"validation_split {validation_split} of {n} images leaves an empty part")
    if classes is None:  # both parts must keep the full class list
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    rng = np.random.default_rng(_seed_from(seed)) if shuffle else None

    def pick(idx, k):
        return rng.permutation(idx)[:k] if shuffle else idx[len(idx) - k:]

    if stratify:
        present = np.unique(labels)
        groups = [np.flatnonzero(labels == c) for c in present]
        takes = _stratified_counts(np.array([len(g) for g in groups]), n_val)
        val = np.concatenate([pick(g, k) for g, k in zip(groups, takes)])
    else:
        val = pick(np.arange(n), n_val)
    is_val = np.zeros(n, bool)
    is_val[val] = True
    train = ArrayDataset(images[~is_val], labels[~is_val], classes)
    return train, ArrayDataset(images[is_val], labels[is_val], classes)
