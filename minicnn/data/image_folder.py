"""ImageFolder: a directory tree of images, one sub-folder per class (Keras's flow_from_directory).

    root/daisy/001.jpg
    root/daisy/more/002.png      (sub-folders of a class are searched too)
    root/dandelion/003.jpg

Classes are the sorted names of the non-hidden sub-folders of ``root``; class
index = position in that list.  Each image is read by :func:`~minicnn.data.image.load_image`
(16-bit and float images from their true range, a pixel limit against bombs), in a
thread pool (Pillow releases the GIL while decoding).
"""
import hashlib
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from ..errors import FileFormatError
from .dataset import ArrayDataset
from .download import data_root
from .image import MAX_PIXELS, check_resize_mode, image_size, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
_CACHE_VERSION = b"minicnn-imagefolder-3"   # 2: 16-bit and float images from their true range; 3: resize modes


def _list_files(root, extensions):
    """(classes, [(path, class index)], [skipped paths]) for the tree under ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder: {root} is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"ImageFolder: {root} has no class sub-folders")
    accepted, skipped = [], []
    for label, name in enumerate(classes):
        for p in sorted(q for q in (root / name).rglob("*") if q.is_file()):
            (accepted if p.suffix.lower() in extensions else skipped).append((p, label))
    return classes, accepted, [p for p, _ in skipped]


def _decode(path, size, resize, max_pixels):
    """:func:`load_image`, or the FileFormatError/OSError it raised (kept for ``on_error``)."""
    try:
        return load_image(path, size, resize, max_pixels=max_pixels)
    except (FileFormatError, OSError) as e:
        return e


def _cache_key(root, files, size, resize, extensions, on_error, max_pixels):
    """sha1 over the settings and every file's relative path and bytes."""
    h = hashlib.sha1(_CACHE_VERSION, usedforsecurity=False)
    h.update(repr((size, resize, sorted(extensions), on_error, max_pixels)).encode())
    for p, label in files:
        h.update(f"{label}\0{p.relative_to(root).as_posix()}\0".encode())
        h.update(hashlib.sha1(p.read_bytes(), usedforsecurity=False).digest())
    return h.hexdigest()


def _short_list(paths, k=3):
    names = ", ".join(str(p) for p in paths[:k])
    return names + (", ..." if len(paths) > k else "")


class ImageFolder(ArrayDataset):
    """Images under ``root/<class>/``, decoded to RGB uint8 NCHW (N, 3, H, W).

    size: (h, w) or an int (square) to bring every image to (Pillow bilinear, antialiased);
        None requires all images to share one size.
    resize: how an image of another shape reaches ``size`` (see :func:`load_image`):
        'shorter+center_crop' (default: keep the aspect, cover ``size``, cut the centre),
        'stretch' (each axis scaled on its own) or 'pad' (keep the aspect, fit inside,
        centred on black).
    extensions: accepted file suffixes (case-insensitive), default IMAGE_EXTENSIONS; other
        files (a .gif, a README) are skipped with one warning giving their number.
    on_error: 'raise' (default) raises the error of the first unreadable image (a
        :class:`~minicnn.errors.FileFormatError` naming it, see :func:`load_image`);
        'skip' leaves such images out, with one warning.
    max_pixels: images larger than this are refused as decompression bombs
        (:class:`~minicnn.errors.LimitExceededError`); default ``MAX_PIXELS``, 64 megapixels.
    cache: None/False for none; True for ``data_root()/imagefolder-cache``; or a directory.
        The decoded arrays are stored there as ``<sha1>.npz``, the key covering the settings
        and every file's path and bytes, so a changed folder is decoded afresh.
    Attributes: images, labels (int64), classes, files (paths, in image order).
    """

    def __init__(self, root, size=None, extensions=IMAGE_EXTENSIONS, on_error="raise", cache=None,
                 max_pixels=MAX_PIXELS, resize="shorter+center_crop"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"ImageFolder: on_error must be 'raise' or 'skip', got {on_error!r}")
        if size is not None:
            size = image_size(size, "ImageFolder: size")
        check_resize_mode(resize)
        root = Path(root)
        if isinstance(extensions, str):
            extensions = (extensions,)
        extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        classes, files, skipped = _list_files(root, extensions)
        if skipped:
            warnings.warn(f"ImageFolder: skipped {len(skipped)} file(s) that are not images of an "
                          f"accepted type {extensions}: {_short_list(skipped)}", stacklevel=2)
        if not files:
            raise ValueError(f"ImageFolder: no {extensions} images under {root}")

        self._key_args = (root, files, size, resize, extensions, on_error, max_pixels)
        self._content_key = None
        cache_file = None
        if cache:
            folder = data_root() / "imagefolder-cache" if cache is True else Path(cache)
            cache_file = folder / f"{self.content_key}.npz"
        loaded = self._load_cache(cache_file)
        if loaded is None:
            loaded = self._decode_all(root, files, size, resize, on_error, max_pixels)
            self._save_cache(cache_file, *loaded)
        images, labels, kept = loaded
        super().__init__(images, labels, classes)
        self.files = [str(root / f) for f in kept]
        self.root = root

    @property
    def content_key(self):
        """Hex sha1 of the decoding settings and every listed file's relative path and bytes:
        equal keys, equal arrays.  It names the ``.npz`` cache; other caches derived from
        these images (e.g. a backbone's features) can key on it too."""
        if self._content_key is None:
            self._content_key = _cache_key(*self._key_args)
        return self._content_key

    @staticmethod
    def _decode_all(root, files, size, resize, on_error, max_pixels):
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            decoded = list(pool.map(lambda f: _decode(f[0], size, resize, max_pixels), files))
        bad = [(p, r) for (p, _), r in zip(files, decoded) if isinstance(r, Exception)]
        if bad and on_error == "raise":
            raise bad[0][1]   # names the file; on_error='skip' leaves such files out
        if bad:
            warnings.warn(f"ImageFolder: skipped {len(bad)} unreadable image(s): "
                          f"{_short_list([p for p, _ in bad])}", stacklevel=3)
        good = [(p, label, r) for (p, label), r in zip(files, decoded) if not isinstance(r, Exception)]
        if not good:
            raise ValueError(f"ImageFolder: none of the images under {root} could be read")
        shapes = {r.shape for _, _, r in good}
        if len(shapes) > 1:
            raise ValueError(f"ImageFolder: images under {root} have different sizes "
                             f"{sorted(s[:2] for s in shapes)[:4]}; pass size=(h, w) to resize them")
        images = np.stack([r for _, _, r in good]).transpose(0, 3, 1, 2)
        labels = np.array([label for _, label, _ in good], dtype=np.int64)
        kept = np.array([p.relative_to(root).as_posix() for p, _, _ in good])
        return np.ascontiguousarray(images), labels, kept

    @staticmethod
    def _load_cache(path):
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["images"], z["labels"], list(z["files"])
        except (OSError, ValueError, KeyError):  # unreadable cache: decode afresh and overwrite
            return None

    @staticmethod
    def _save_cache(path, images, labels, kept):
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels, files=np.asarray(kept))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
