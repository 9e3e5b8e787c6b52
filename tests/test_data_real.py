"""The real datasets, where this machine has them (they skip cleanly where it has not).

Fashion-MNIST: the cache dir or the Debian package dataset-fashion-mnist.
CIFAR-10: ``cifar-10-batches-bin/`` in the cache dir (``python ../shared/datasets/make_cifar10_bin.py
~/.cache/minicnn`` builds one).  Flowers: ``../shared/datasets/flowers-256.tar.gz`` beside the repo.
"""
from pathlib import Path

import numpy as np
import pytest

from minicnn.data import CIFAR10, DataLoader, FashionMNIST, ImageFolder, extract_archive
from minicnn.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToFloat

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def load_or_skip(cls, **kw):
    try:
        return cls(download=False, **kw)
    except FileNotFoundError as e:
        pytest.skip(f"{cls.__name__} not on this machine: {e}")


def test_fashion_mnist_real():
    train = load_or_skip(FashionMNIST, train=True)
    test = load_or_skip(FashionMNIST, train=False)
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.images.mean() == pytest.approx(72.94, abs=0.005)
    assert test.images.mean() == pytest.approx(73.15, abs=0.01)


def test_cifar10_real():
    train = load_or_skip(CIFAR10, train=True)
    test = load_or_skip(CIFAR10, train=False)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer",
                             "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # Official (125.31, 122.95, 113.87); the JPEG-rebuilt copy is within 0.05 of them.
    np.testing.assert_allclose(train.images.mean(axis=(0, 2, 3)), [125.31, 122.95, 113.87], atol=0.1)
    tf = Compose([RandomHorizontalFlip(), RandomCrop(32, 4), ToFloat(),
                  Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    x, y = next(iter(DataLoader(train, 128, shuffle=True, seed=0, transform=tf)))
    assert x.shape == (128, 3, 32, 32) and abs(float(x.mean())) < 0.3


def test_flowers_real(tmp_path_factory):
    archive = SHARED / "flowers-256.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not on this machine")
    root = extract_archive(archive, tmp_path_factory.mktemp("flowers")) / "flowers"
    test = ImageFolder(root / "test", size=32)
    assert test.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert np.bincount(test.labels).tolist() == [100] * 5
    assert test.images.shape == (500, 3, 32, 32)
    assert 60 < test.images.mean() < 160
