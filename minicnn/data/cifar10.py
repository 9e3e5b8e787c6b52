"""CIFAR-10: 60,000 32x32 colour images in 10 classes, from the official *binary* files.

The binary version is read rather than the Python one so that no pickle is
ever loaded.  Each ``.bin`` file is a run of 3,073-byte records: one label
byte, then 1,024 red, 1,024 green and 1,024 blue bytes, each plane row-major,
which is already NCHW.

Lookup under ``root`` (see :func:`~minicnn.data.download.data_root`): an
extracted ``cifar-10-batches-bin/`` directory is used as it is (its record
sizes are validated; it is not md5-checked, so rebuilt copies work), else
``cifar-10-binary.tar.gz`` is md5-checked and extracted, else it is downloaded.
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from .archive import extract_archive
from .dataset import ArrayDataset
from .download import data_root, download, md5_file

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
DIRNAME = "cifar-10-batches-bin"
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]
_SHAPE = (3, 32, 32)
_RECORD = 1 + 3 * 32 * 32


def read_cifar_bin(path, num_classes=10):
    """Parse one CIFAR binary batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    Raises :class:`~minicnn.errors.FileFormatError` naming the file if it is empty, is
    not a whole number of 3,073-byte records, or holds a label outside [0, num_classes).
    The file's size is checked before it is read, and is all that is allocated.
    """
    size = Path(path).stat().st_size
    if size == 0 or size % _RECORD:
        raise FileFormatError(f"{size} bytes is not a whole, non-zero number of "
                              f"{_RECORD}-byte CIFAR records (1 label byte + 3x32x32 pixels)", path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != size:
        raise FileFormatError(f"read {raw.size} bytes of {size}: the file changed while read", path)
    records = raw.reshape(-1, _RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise FileFormatError(f"record {bad} has label {labels[bad]}, expected [0, {num_classes})", path)
    return np.ascontiguousarray(records[:, 1:]).reshape(-1, *_SHAPE), labels


def _offline_hint(root):
    return (f"To proceed offline, put {ARCHIVE} (md5 {MD5}) in {root}, "
            f"or its extracted {DIRNAME}/ directory there.")


def _extract(archive, root):
    """Extract the tarball beside itself, moving ``cifar-10-batches-bin/`` into place at the end."""
    tmp = tempfile.mkdtemp(prefix=".cifar-extract-", dir=root)
    try:
        extract_archive(archive, tmp)
        src = Path(tmp) / DIRNAME
        if not src.is_dir():
            raise FileFormatError(f"holds no {DIRNAME}/ directory", archive)
        src.replace(root / DIRNAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _batches_dir(root, download_ok):
    folder = root / DIRNAME
    if folder.is_dir():
        return folder
    archive = root / ARCHIVE
    if archive.is_file():
        got = md5_file(archive)
        if got != MD5:
            raise FileFormatError(f"md5 {got}, expected {MD5} (delete it to re-download). "
                                  + _offline_hint(root), archive)
    elif not download_ok:
        raise FileNotFoundError(f"CIFAR-10 not found under {root} and download=False. "
                                + _offline_hint(root))
    else:
        download(URL, archive, MD5, offline_hint=_offline_hint(root))
    _extract(archive, root)
    return folder


def _class_names(folder):
    meta = folder / "batches.meta.txt"
    if meta.is_file():
        names = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
        if len(names) == len(CLASSES):
            return names
    return list(CLASSES)


class CIFAR10(ArrayDataset):
    """CIFAR-10, train (50,000) or test (10,000) split.

    images: uint8 NCHW (N, 3, 32, 32), RGB; labels: int64 (N,) in [0, 10);
    classes: the 10 names (from ``batches.meta.txt`` when present).
    root: cache directory (default ``$MINICNN_DATA`` or ``~/.cache/minicnn``);
    download: fetch the tarball when neither it nor the extracted directory is there.
    """

    def __init__(self, root=None, train=True, download=True):
        root = data_root(root)
        folder = _batches_dir(root, download)
        parts = []
        for name in TRAIN_FILES if train else TEST_FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing. " + _offline_hint(root))
            parts.append(read_cifar_bin(folder / name))
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts])
        super().__init__(images, labels, _class_names(folder))
        self.train = train
