"""DataLoader: batching, seeding and resume, prefetch, evaluation guard; train_val_split."""
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import random as mrandom
from minicnn.data import ArrayDataset, DataLoader, train_val_split
from minicnn.data.transforms import (
    ColorJitter, Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToFloat, without_augmentation)


def colour_data(n=50, classes=5, seed=0):
    g = np.random.default_rng(seed)
    return ArrayDataset(g.integers(0, 256, (n, 3, 6, 6), dtype=np.uint8),
                        g.integers(0, classes, n), [f"c{i}" for i in range(classes)])


def collect(loader):
    xs, ys = zip(*loader)
    return np.concatenate(xs), np.concatenate(ys)


AUG = Compose([RandomHorizontalFlip(), RandomCrop(6, padding=2), ToFloat(), Normalize(0.5, 0.25)])


def test_batches_shapes_types_and_len():
    ds = colour_data(50)
    loader = DataLoader(ds, batch_size=16)
    assert len(loader) == 4 and len(DataLoader(ds, 16, drop_last=True)) == 3
    sizes = [len(y) for _, y in loader]
    assert sizes == [16, 16, 16, 2]
    x, y = collect(loader)
    assert x.dtype == np.float32 and x.shape == (50, 3, 6, 6) and x.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_allclose(x, ds.images / 255, rtol=1e-6)     # uint8 scaled as ToFloat
    np.testing.assert_array_equal(y, ds.labels)                   # no shuffle: dataset order
    assert [len(y) for _, y in DataLoader(ds, 16, drop_last=True)] == [16, 16, 16]


def test_grey_arrays_become_nchw():
    x = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    xb, yb = next(iter(DataLoader((x, np.arange(7) % 3), batch_size=7)))
    assert xb.shape == (7, 1, 5, 4)
    np.testing.assert_allclose(xb[:, 0], x / 255, rtol=1e-6)
    floats = DataLoader((x.astype(np.float64), np.zeros(7, int)), 4, dtype=np.float64)
    assert next(iter(floats))[0].dtype == np.float64


def test_shuffle_is_a_permutation_and_changes_per_epoch():
    ds = colour_data(40)
    loader = DataLoader(ds, 8, shuffle=True, seed=1)
    x0, y0 = collect(loader)
    x1, _ = collect(loader)
    key = lambda x: sorted(map(bytes, (x * 255).round().astype(np.uint8)))  # noqa: E731
    assert key(x0) == key(ds.images.astype(np.float32) / 255) == key(x1)
    assert not np.array_equal(x0, x1)
    assert loader.epoch == 2


def test_same_seed_same_batches_and_set_epoch_replays():
    ds = colour_data(40)
    a = DataLoader(ds, 8, shuffle=True, transform=AUG, seed=7)
    b = DataLoader(ds, 8, shuffle=True, transform=AUG, seed=7)
    epochs_a = [collect(a) for _ in range(3)]
    for xa, ya in epochs_a:
        xb, yb = collect(b)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    b.set_epoch(1)
    np.testing.assert_array_equal(collect(b)[0], epochs_a[1][0])
    c = DataLoader(ds, 8, shuffle=True, transform=AUG, seed=8)
    assert not np.array_equal(collect(c)[0], epochs_a[0][0])


def test_state_dict_resumes_exactly():
    ds = colour_data(30)
    run = DataLoader(ds, 7, shuffle=True, transform=AUG, seed=3)
    full = [collect(run) for _ in range(4)]
    first = DataLoader(ds, 7, shuffle=True, transform=AUG, seed=3)
    for _ in range(2):
        collect(first)
    state = first.state_dict()
    assert state == {"seed": 3, "epoch": 2}
    resumed = DataLoader(ds, 7, shuffle=True, transform=AUG)
    resumed.load_state_dict(state)
    for e in (2, 3):
        np.testing.assert_array_equal(collect(resumed)[0], full[e][0])
    with pytest.raises(ValueError, match="epoch"):
        resumed.set_epoch(-1)


def test_seed_none_comes_from_minicnn_random():
    ds = colour_data(20)
    mrandom.manual_seed(11)
    s1 = DataLoader(ds, 5, shuffle=True).seed
    mrandom.manual_seed(11)
    s2 = DataLoader(ds, 5, shuffle=True).seed
    assert s1 == s2 and s1 != DataLoader(ds, 5, shuffle=True).seed
    with pytest.raises(ValueError, match="seed"):
        DataLoader(ds, 5, seed=-1)


@given(st.integers(1, 60), st.integers(1, 17), st.booleans(), st.integers(0, 2**31))
def test_labels_untouched_by_transforms(n, batch, drop_last, seed):
    # Image i is constant with value i, which flips, edge-padded crops and brightness
    # 1 keep, so each batch image names its source and its label must be that one's.
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, 5, 5)).copy()
    labels = np.random.default_rng(seed).integers(0, 4, n)
    tf = Compose([RandomHorizontalFlip(), RandomCrop(5, 2, "edge"), ColorJitter(saturation=0.5)])
    loader = DataLoader((images, labels), batch, shuffle=True, drop_last=drop_last and n >= batch,
                        transform=tf, seed=seed)
    seen = []
    for x, y in loader:
        idx = np.rint(x[:, 0, 0, 0] * 255).astype(int)
        assert np.all(np.rint(x * 255) == idx[:, None, None, None])
        np.testing.assert_array_equal(y, labels[idx])
        seen.extend(idx)
    assert len(set(seen)) == len(seen) == (len(loader) * batch if loader.drop_last else n)


def test_prefetch_gives_the_same_batches():
    ds = colour_data(45)
    plain = DataLoader(ds, 8, shuffle=True, transform=AUG, seed=5)
    ahead = DataLoader(ds, 8, shuffle=True, transform=AUG, seed=5, prefetch=True)
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(plain, ahead, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "minicnn-prefetch"]


def test_prefetch_stops_when_abandoned_and_reraises():
    ds = colour_data(64)
    it = iter(DataLoader(ds, 4, prefetch=3))
    next(it)
    assert len(_prefetch_threads()) == 1
    it.close()
    assert _prefetch_threads() == []

    def broken(x, rng):
        raise RuntimeError("transform failed")
    with pytest.raises(RuntimeError, match="transform failed"):
        list(DataLoader(ds, 4, transform=broken, prefetch=True))
    assert _prefetch_threads() == []


def test_eval_loader_rejects_augmentation():
    ds = colour_data(10)
    nested = Compose([ToFloat(), Compose([RandomCrop(6, 1)]), Normalize(0.5, 0.2)])
    with pytest.raises(ValueError, match="RandomCrop") as e:
        DataLoader(ds, 4, transform=nested, train=False)
    assert "without_augmentation" in str(e.value)
    with pytest.raises(ValueError, match="RandomHorizontalFlip"):
        DataLoader(ds, 4, transform=RandomHorizontalFlip(), train=False)
    evaluation = DataLoader(ds, 4, transform=without_augmentation(nested), train=False)
    x, _ = collect(evaluation)
    np.testing.assert_allclose(x, (ds.images / 255 - 0.5) / 0.2, rtol=1e-5, atol=1e-5)
    DataLoader(ds, 4, transform=nested, train=True)


@pytest.mark.parametrize("data,kw,err,match", [
    ((np.zeros((0, 1, 2, 2), np.uint8), np.zeros(0, int)), {}, ValueError, "empty"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.zeros(2, int)), {}, ValueError, "3 images but 2 labels"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.array([0, 1, 5])), {"num_classes": 5},
     ValueError, r"\[0, 5\), found 5"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.array([0, -1, 2])), {}, ValueError, "found -1"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.array([0.5, 1, 2])), {}, TypeError, "integers"),
    ((np.zeros((3, 2), np.uint8), np.zeros(3, int)), {}, ValueError, r"\(N, H, W\)"),
    ((np.zeros((3, 1, 2, 2), np.int32), np.zeros(3, int)), {}, TypeError, "uint8 or floating"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3, int)), {"batch_size": 0}, ValueError, "batch_size"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3, int)), {"batch_size": 4, "drop_last": True},
     ValueError, "no batch"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3, int)), {"transform": "flip"}, TypeError, "callable"),
    ("not data", {}, TypeError, "images"),
])
def test_loader_input_errors(data, kw, err, match):
    with pytest.raises(err, match=match):
        DataLoader(data, **kw)


def test_dataset_class_list_bounds_the_labels():
    with pytest.raises(ValueError, match=r"\[0, 2\), found 2"):
        ArrayDataset(np.zeros((3, 2, 2), np.uint8), [0, 1, 2], ["a", "b"])
    ds = colour_data(12)
    assert len(ds[2:5]) == 3 and ds[3][1] == ds.labels[3] and ds[[0, 2]].classes == ds.classes


# ---------------------------------------------------------------- train_val_split

def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    images = np.arange(100, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    train, val = train_val_split((images, labels), 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80
    assert np.bincount(val.labels, minlength=4).tolist() == [10, 6, 3, 1]
    ids = np.concatenate([train.images[:, 0, 0], val.images[:, 0, 0]])
    assert sorted(ids.tolist()) == list(range(100))                      # disjoint, complete
    assert np.all(np.diff(val.images[:, 0, 0].astype(int)) > 0)          # original order kept
    again = train_val_split((images, labels), 0.2, seed=0)[1]
    np.testing.assert_array_equal(again.images, val.images)
    other = train_val_split((images, labels), 0.2, seed=1)[1]
    assert not np.array_equal(other.images, val.images)


def test_unshuffled_unstratified_split_is_keras_validation_split():
    ds = colour_data(50)
    train, val = train_val_split(ds, 0.3, stratify=False, shuffle=False)
    np.testing.assert_array_equal(val.images, ds.images[35:])
    np.testing.assert_array_equal(train.labels, ds.labels[:35])
    assert val.classes == ds.classes


@given(st.integers(2, 80), st.floats(0.05, 0.95), st.booleans(), st.booleans())
def test_split_sizes(n, frac, stratify, shuffle):
    labels = np.random.default_rng(n).integers(0, 3, n)
    n_val = round(frac * n)
    data = (np.zeros((n, 1, 1), np.uint8), labels)
    if not 0 < n_val < n:
        with pytest.raises(ValueError, match="empty part"):
            train_val_split(data, frac)
        return
    train, val = train_val_split(data, frac, stratify=stratify, shuffle=shuffle, seed=0)
    assert len(val) == n_val and len(train) == n - n_val
    assert train.classes == val.classes == [str(c) for c in range(labels.max() + 1)]
    if stratify:
        counts = np.bincount(labels, minlength=3)
        assert np.all(np.abs(np.bincount(val.labels, minlength=3) - counts * n_val / n) < 1)


def test_split_errors():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        train_val_split(colour_data(10), 1.0)
