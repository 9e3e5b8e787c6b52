"""ImageFolder on a generated tree: accepted types, skipped files, corrupt images, resizing, cache."""
import warnings

import numpy as np
import pytest
from PIL import Image

from minicnn.data import ImageFolder, image_folder

RED, GREEN, BLUE = (200, 10, 10), (10, 200, 10), (10, 10, 200)


@pytest.fixture
def tree(tmp_path):
    """root/cat: 2 PNGs (one RGBA, one grey), a .gif, a corrupt .jpg; root/dog: a JPEG in a sub-folder,
    a PNG and a text file; plus a hidden folder that is not a class."""
    root = tmp_path / "images"
    for d in ("cat", "dog/more", ".hidden"):
        (root / d).mkdir(parents=True)
    Image.new("RGBA", (6, 4), RED + (255,)).save(root / "cat" / "a.png")
    Image.new("L", (6, 4), 128).save(root / "cat" / "b.PNG")
    Image.new("RGB", (6, 4), RED).save(root / "cat" / "anim.gif")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (6, 4), GREEN).save(root / "dog" / "more" / "c.jpg", quality=95)
    Image.new("RGB", (6, 4), BLUE).save(root / "dog" / "d.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    Image.new("RGB", (6, 4), BLUE).save(root / ".hidden" / "e.png")
    return root


def test_corrupt_image_raises_naming_the_file(tree):
    with pytest.warns(UserWarning, match="skipped 2 file"):
        with pytest.raises(ValueError, match="broken.jpg"):
            ImageFolder(tree)


def test_skip_mode(tree):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(tree, on_error="skip")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "skipped 2 file(s) that are not images" in messages[0] and "anim.gif" in messages[0]
    assert "skipped 1 unreadable image(s)" in messages[1] and "broken.jpg" in messages[1]
    assert ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.labels.dtype == np.int64
    assert [p.split("/")[-1] for p in ds.files] == ["a.png", "b.PNG", "d.png", "c.jpg"]
    assert ds.images.shape == (4, 3, 4, 6) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[0, :, 0, 0], RED)        # RGBA -> RGB
    np.testing.assert_array_equal(ds.images[1, :, 0, 0], [128] * 3)  # grey -> RGB
    np.testing.assert_array_equal(ds.images[2, :, 2, 3], BLUE)
    assert np.abs(ds.images[3, :, 2, 3].astype(int) - GREEN).max() <= 3  # JPEG


def test_extension_filter_and_resize(tree):
    with pytest.warns(UserWarning, match="skipped 4 file"):
        ds = ImageFolder(tree, size=(3, 5), extensions=["png"])
    assert ds.images.shape == (3, 3, 3, 5)
    np.testing.assert_array_equal(ds.images[2, :, 1, 2], BLUE)


def test_mixed_sizes_need_size(tree):
    Image.new("RGB", (9, 9), RED).save(tree / "dog" / "big.png")
    with pytest.raises(ValueError, match="pass size"), pytest.warns(UserWarning):
        ImageFolder(tree, on_error="skip", extensions=[".png", ".jpg"])
    with pytest.warns(UserWarning):
        assert ImageFolder(tree, size=5, on_error="skip").images.shape[1:] == (3, 5, 5)


def test_cache_second_run_skips_decoding(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    kw = dict(size=4, on_error="skip", extensions=[".png"], cache=cache)
    with pytest.warns(UserWarning):
        first = ImageFolder(tree, **kw)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although cached")
    monkeypatch.setattr(image_folder, "_decode", no_decoding)
    with pytest.warns(UserWarning):
        second = ImageFolder(tree, **kw)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.files == first.files and second.classes == first.classes

    Image.new("RGB", (6, 4), GREEN).save(tree / "dog" / "d.png")     # content changed
    with pytest.raises(AssertionError, match="decoded although cached"), pytest.warns(UserWarning):
        ImageFolder(tree, **kw)


def test_unreadable_cache_is_rebuilt(tree, tmp_path):
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning):
        ImageFolder(tree, size=4, extensions=[".png"], cache=cache)
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(b"garbage")
    with pytest.warns(UserWarning):
        ds = ImageFolder(tree, size=4, extensions=[".png"], cache=cache)
    assert len(ds) == 3 and np.load(npz)["images"].shape == (3, 3, 4, 4)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="no .* images"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="on_error"):
        ImageFolder(tmp_path / "empty", on_error="ignore")
