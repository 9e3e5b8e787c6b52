"""The augmentation preview grid (minicnn.viz.augmentation_grid)."""
import numpy as np
import pytest
from PIL import Image

from minicnn.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToFloat
from minicnn.viz import augmentation_grid


def test_grid_png_colour(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    tf = Compose([RandomHorizontalFlip(), RandomCrop(16, 2)])
    path = augmentation_grid(x, tf, tmp_path / "g" / "aug.png", n_augment=4, labels=[0, 1, 0],
                             classes=["cat", "dog"], title="preview", cell=1.0)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (500, 340)          # (1 + 4) x 3 cells of 1 in at 100 dpi, + title
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10                  # something was drawn


def test_grid_grey_and_normalized(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    tf = Compose([RandomHorizontalFlip(), ToFloat(), Normalize(0.5, 0.1)])   # values far outside [0, 1]
    path = augmentation_grid(x, tf, tmp_path / "grey.png", n_augment=2)
    with Image.open(path) as im:
        assert im.size == (390, 260)


def test_same_seed_same_picture(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    tf = RandomCrop(8, 3)
    a = augmentation_grid(x, tf, tmp_path / "a.png", seed=5).read_bytes()
    assert augmentation_grid(x, tf, tmp_path / "b.png", seed=5).read_bytes() == a
    assert augmentation_grid(x, tf, tmp_path / "c.png", seed=6).read_bytes() != a


@pytest.mark.parametrize("images,n", [(np.zeros((8, 8)), 3), (np.zeros((40, 1, 4, 4)), 3),
                                      (np.zeros((2, 4, 4)), 0)])
def test_grid_errors(tmp_path, images, n):
    with pytest.raises(ValueError):
        augmentation_grid(images, RandomHorizontalFlip(), tmp_path / "x.png", n_augment=n)
