"""Fashion-MNIST: 70,000 28x28 grey images of clothing in 10 classes.

Files are looked for, in order, in ``<root>/fashion-mnist/`` (root from
:func:`~minicnn.data.download.data_root`), then in the Debian package's copy
``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``),
and only then downloaded from the official URL or its mirror into the first.
Each file may be gzipped or not.  Debian re-gzipped its copy, so what is
checked is the md5 of the *decompressed* bytes; a download is checked against
the official ``.gz`` md5 as it arrives.
"""
import warnings
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from .dataset import ArrayDataset
from .download import data_root, download, md5_bytes
from .idx import parse_idx, read_idx_bytes

MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBDIR = "fashion-mnist"
# name -> (md5 of the official .gz, md5 of the decompressed idx bytes)
MD5 = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _offline_hint(folder):
    names = ", ".join(f"{n}.gz" for n in MD5)
    return (f"To proceed offline, put {names} (gzipped or not) in {folder}, "
            f"or install the Debian package (apt-get install dataset-fashion-mnist), "
            f"which provides them in {DEBIAN_DIR}.")


def _verified(path, raw_md5):
    raw = read_idx_bytes(path)
    got = md5_bytes(raw)
    if got != raw_md5:
        raise FileFormatError(f"md5 of the decompressed bytes is {got}, expected {raw_md5}; "
                              "the file is corrupt or not the official one (delete it to re-fetch)", path)
    return raw


def _idx_bytes(name, folder, download_ok):
    """The verified idx bytes of ``name`` from ``folder``, the Debian copy, or the network."""
    gz_md5, raw_md5 = MD5[name]
    corrupt = []  # a bad copy is reported, and the next location tried
    for d in (folder, DEBIAN_DIR):
        for p in (d / f"{name}.gz", d / name):
            if p.is_file():
                try:
                    return _verified(p, raw_md5)
                except (ValueError, OSError) as e:
                    warnings.warn(f"skipping {e}", stacklevel=3)
                    corrupt.append(e)
    if not download_ok:
        if corrupt:
            raise FileFormatError(f"no valid copy of Fashion-MNIST file {name} and download=False: "
                                  f"{corrupt[0]}", getattr(corrupt[0], "path", None))
        raise FileNotFoundError(f"Fashion-MNIST file {name}.gz not found and download=False. "
                                + _offline_hint(folder))
    dest = download([m + f"{name}.gz" for m in MIRRORS], folder / f"{name}.gz", gz_md5,
                    offline_hint=_offline_hint(folder))
    return _verified(dest, raw_md5)


class FashionMNIST(ArrayDataset):
    """Fashion-MNIST, train (60,000) or test (10,000) split.

    images: uint8 (N, 28, 28); labels: int64 (N,) in [0, 10); classes: the 10 names.
    root: cache directory (default ``$MINICNN_DATA`` or ``~/.cache/minicnn``);
    download: fetch missing files (default True).
    """

    def __init__(self, root=None, train=True, download=True):
        folder = data_root(root) / SUBDIR
        prefix = "train" if train else "t10k"
        img_name, lbl_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
        images = parse_idx(_idx_bytes(img_name, folder, download), img_name)
        labels = parse_idx(_idx_bytes(lbl_name, folder, download), lbl_name)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise FileFormatError(f"expected uint8 (N, H, W), got {images.dtype} {images.shape}", img_name)
        if labels.ndim != 1:
            raise FileFormatError(f"expected (N,) labels, got shape {labels.shape}", lbl_name)
        super().__init__(images, labels, CLASSES)
        self.train = train
