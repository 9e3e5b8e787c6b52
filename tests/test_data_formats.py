"""idx and CIFAR binary parsing, and the Fashion-MNIST / CIFAR-10 lookup and download paths,
on small files the tests generate."""
import gzip
import io
import struct
import tarfile

import numpy as np
import pytest
from test_data_download import server  # noqa: F401  (fixture)

from minicnn.data import CIFAR10, FashionMNIST, cifar10, fashion_mnist
from minicnn.data.download import md5_bytes, md5_file
from minicnn.data.idx import parse_idx, read_idx_bytes
from minicnn.errors import FileFormatError, LimitExceededError


def idx_bytes(arr, code=0x08):
    arr = np.asarray(arr)
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------- idx

@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                        (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
def test_parse_idx_roundtrip(dtype, code):
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    out = parse_idx(idx_bytes(arr, code))
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_parse_idx_wrong_magic():
    data = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    data[0] = 8
    with pytest.raises(ValueError, match="magic"):
        parse_idx(bytes(data), "f.idx")
    data[0], data[2] = 0, 0x07
    with pytest.raises(ValueError, match="magic"):
        parse_idx(bytes(data))


@pytest.mark.parametrize("cut", [1, 5, 100])
def test_parse_idx_truncated(cut):
    data = idx_bytes(np.zeros((10, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="truncated") as e:
        parse_idx(data[:-cut], "images.idx")
    assert "images.idx" in str(e.value)


def test_parse_idx_trailing_bytes_and_short_header():
    with pytest.raises(ValueError, match="trailing"):
        parse_idx(idx_bytes(np.zeros(3, np.uint8)) + b"\0")
    with pytest.raises(ValueError, match="too short"):
        parse_idx(b"\0\0")
    with pytest.raises(ValueError, match="header"):
        parse_idx(bytes([0, 0, 8, 3]) + b"\0\0\0\2")


def test_read_idx_bytes_gz_and_raw(tmp_path):
    raw = idx_bytes(np.arange(6, dtype=np.uint8))
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-10])
    assert read_idx_bytes(tmp_path / "a") == raw == read_idx_bytes(tmp_path / "a.gz")
    with pytest.raises(ValueError, match="gzip"):
        read_idx_bytes(tmp_path / "bad.gz")


def test_idx_header_whose_size_overflows_is_refused():
    """65536^4 elements is 2^64: an int64 product wraps to 0 and would match an empty body."""
    data = bytes([0, 0, 8, 5]) + struct.pack(">5I", 65536, 65536, 65536, 65536, 1)
    with pytest.raises(FileFormatError, match=r"f\.idx.*\(65536, 65536, 65536, 65536, 1\)") as e:
        parse_idx(data, "f.idx")
    assert e.value.path == "f.idx"


def test_idx_errors_are_file_format_errors_naming_the_file(tmp_path):
    for data in (b"\0\0", bytes([1, 0, 8, 1]), idx_bytes(np.zeros(3, np.uint8))[:-1]):
        with pytest.raises(FileFormatError, match="images.idx"):
            parse_idx(data, "images.idx")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(9, np.uint8)))[:-10])
    with pytest.raises(FileFormatError, match=r"bad\.gz.*gzip") as e:
        read_idx_bytes(tmp_path / "bad.gz")
    assert e.value.path == tmp_path / "bad.gz"


def test_gzip_bomb_is_bounded(tmp_path):
    raw = idx_bytes(np.zeros((12, 1024, 1024), np.uint8))          # 12 MB of zeros: 12 KB gzipped
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(LimitExceededError, match=r"bomb\.gz.*max_bytes=4194304"):
        read_idx_bytes(tmp_path / "bomb.gz", max_bytes=4 << 20)
    assert read_idx_bytes(tmp_path / "bomb.gz", max_bytes=16 << 20) == raw
    (tmp_path / "headless.gz").write_bytes(gzip.compress(bytes(12 << 20)))   # no header to go by
    with pytest.raises(LimitExceededError, match=r"headless\.gz: decompresses to more than max_bytes=4194304"):
        read_idx_bytes(tmp_path / "headless.gz", max_bytes=4 << 20)


def test_gzip_header_claiming_more_than_gzip_can_hold(tmp_path):
    """DEFLATE expands at most 1032:1: a header asking for more than that is refused
    before anything past it is decompressed."""
    claim = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 1000, 1000) + bytes(1000)
    (tmp_path / "liar.gz").write_bytes(gzip.compress(claim))
    with pytest.raises(FileFormatError, match=r"liar\.gz.*60000000000 bytes.*can hold"):
        read_idx_bytes(tmp_path / "liar.gz", max_bytes=1 << 40)


def test_cifar_errors_name_the_file(tmp_path):
    p = tmp_path / "b.bin"
    p.write_bytes(bytes(3074))
    with pytest.raises(FileFormatError, match=r"b\.bin.*3073-byte") as e:
        cifar10.read_cifar_bin(p)
    assert e.value.path == p
    p.write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(FileFormatError, match=r"b\.bin.*label 12"):
        cifar10.read_cifar_bin(p)


# ---------------------------------------------------------------- Fashion-MNIST lookup

@pytest.fixture
def fake_fashion(monkeypatch, tmp_path):
    """Small idx files for both splits; MD5 patched to them; no Debian copy; returns their bytes."""
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 12), ("t10k", 7)):
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(rng.integers(0, 10, n, dtype=np.uint8))
    gz = {name: gzip.compress(raw) for name, raw in files.items()}
    monkeypatch.setattr(fashion_mnist, "MD5", {n: (md5_bytes(gz[n]), md5_bytes(files[n])) for n in files})
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-copy")
    return files, gz


def test_fashion_from_root_raw_and_gz(tmp_path, fake_fashion):
    files, gz = fake_fashion
    folder = tmp_path / "root" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in files:  # gzipped train, raw test
        if name.startswith("train"):
            (folder / f"{name}.gz").write_bytes(gz[name])
        else:
            (folder / name).write_bytes(files[name])
    for train, n in ((True, 12), (False, 7)):
        ds = FashionMNIST(tmp_path / "root", train=train, download=False)
        prefix = "train" if train else "t10k"
        assert len(ds) == n and ds.images.shape == (n, 28, 28) and ds.images.dtype == np.uint8
        assert ds.labels.dtype == np.int64 and ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
        np.testing.assert_array_equal(ds.images, parse_idx(files[f"{prefix}-images-idx3-ubyte"]))
        np.testing.assert_array_equal(ds.labels, parse_idx(files[f"{prefix}-labels-idx1-ubyte"]))


def test_fashion_falls_back_to_debian_copy(tmp_path, monkeypatch, fake_fashion):
    files, gz = fake_fashion
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in files:
        (debian / f"{name}.gz").write_bytes(gzip.compress(files[name], mtime=1))  # re-gzipped
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    ds = FashionMNIST(tmp_path / "empty-root", train=False, download=False)
    assert len(ds) == 7


def test_fashion_corrupt_local_file(tmp_path, fake_fashion):
    files, _ = fake_fashion
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(files[name])
    (folder / "t10k-images-idx3-ubyte").write_bytes(files["t10k-images-idx3-ubyte"][:-1] + b"\1")
    with pytest.warns(UserWarning, match="skipping"), \
            pytest.raises(ValueError, match="md5 of the decompressed bytes"):
        FashionMNIST(tmp_path, train=False, download=False)


def test_fashion_corrupt_cache_falls_back_to_debian_copy(tmp_path, monkeypatch, fake_fashion):
    files, _ = fake_fashion
    folder, debian = tmp_path / "fashion-mnist", tmp_path / "debian"
    folder.mkdir()
    debian.mkdir()
    bad = files["t10k-images-idx3-ubyte"][:-1] + b"\1"
    (folder / "t10k-images-idx3-ubyte").write_bytes(bad)
    for name in files:
        (debian / f"{name}.gz").write_bytes(gzip.compress(files[name]))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    with pytest.warns(UserWarning, match="t10k-images-idx3-ubyte: md5"):
        ds = FashionMNIST(tmp_path, train=False, download=False)
    np.testing.assert_array_equal(ds.images, parse_idx(files["t10k-images-idx3-ubyte"]))
    assert (folder / "t10k-images-idx3-ubyte").read_bytes() == bad  # reported, left for the user


def test_fashion_missing_without_download(tmp_path, fake_fashion):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        FashionMNIST(tmp_path, download=False)
    assert str(tmp_path / "fashion-mnist") in str(e.value)


def test_fashion_downloads_through_mirror(tmp_path, monkeypatch, fake_fashion, server):
    files, gz = fake_fashion
    url, served = server
    for name in files:
        (served / f"{name}.gz").write_bytes(gz[name])
    monkeypatch.setattr(fashion_mnist, "MIRRORS", [url + "missing/", url])
    ds = FashionMNIST(tmp_path / "root", train=True)
    assert len(ds) == 12
    assert md5_file(tmp_path / "root" / "fashion-mnist" / "train-images-idx3-ubyte.gz") == \
        md5_bytes(gz["train-images-idx3-ubyte"])


def test_fashion_failed_download_says_how_to_proceed(tmp_path, monkeypatch, fake_fashion, server):
    url, _ = server  # serves nothing
    monkeypatch.setattr(fashion_mnist, "MIRRORS", [url])
    with pytest.raises(OSError, match="dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "root")
    assert list((tmp_path / "root" / "fashion-mnist").iterdir()) == []


def test_fashion_rejects_wrong_dims(tmp_path, monkeypatch, fake_fashion):
    files, _ = fake_fashion
    files = dict(files, **{"t10k-images-idx3-ubyte": idx_bytes(np.zeros((7, 784), np.uint8))})
    monkeypatch.setattr(fashion_mnist, "MD5", {n: ("", md5_bytes(files[n])) for n in files})
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(files[name])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        FashionMNIST(tmp_path, train=False, download=False)


# ---------------------------------------------------------------- CIFAR-10

def cifar_records(images, labels):
    return np.concatenate([np.asarray(labels, np.uint8)[:, None],
                           images.reshape(len(images), -1)], axis=1).tobytes()


@pytest.fixture
def fake_cifar(tmp_path):
    """A small cifar-10-batches-bin/ (3 images per train batch, 4 test); returns (root, arrays)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "root" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    arrays = {}
    for name, n in [(f"data_batch_{i}.bin", 3) for i in range(1, 6)] + [("test_batch.bin", 4)]:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        (folder / name).write_bytes(cifar_records(x, y))
        arrays[name] = (x, y)
    (folder / "batches.meta.txt").write_text("\n".join(cifar10.CLASSES) + "\n\n")
    return tmp_path / "root", arrays


def test_cifar_from_extracted_dir(fake_cifar):
    root, arrays = fake_cifar
    train = CIFAR10(root, train=True, download=False)
    test = CIFAR10(root, train=False, download=False)
    assert len(train) == 15 and len(test) == 4
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == np.uint8
    assert train.classes == cifar10.CLASSES
    np.testing.assert_array_equal(train.images[3:6], arrays["data_batch_2.bin"][0])
    np.testing.assert_array_equal(test.labels, arrays["test_batch.bin"][1])
    assert test.labels.dtype == np.int64


def test_cifar_record_layout_is_rgb_planes(tmp_path):
    img = np.zeros((1, 3, 32, 32), np.uint8)
    img[0, 0, 0, 1], img[0, 2, 31, 0] = 200, 100   # red at (0, 1), blue at (31, 0)
    p = tmp_path / "one.bin"
    p.write_bytes(bytes([7, 0, 200]) + bytes(1022 + 1024 + 992) + bytes([100]) + bytes(31))
    x, y = cifar10.read_cifar_bin(p)
    np.testing.assert_array_equal(x, img)
    assert y.tolist() == [7]


@pytest.mark.parametrize("size", [0, 3072, 3074, 3073 * 2 - 1])
def test_cifar_bad_record_size(tmp_path, size):
    p = tmp_path / "b.bin"
    p.write_bytes(bytes(size))
    with pytest.raises(ValueError, match="3073-byte"):
        cifar10.read_cifar_bin(p)


def test_cifar_bad_label_and_missing_file(fake_cifar):
    root, _ = fake_cifar
    folder = root / "cifar-10-batches-bin"
    (folder / "test_batch.bin").write_bytes(bytes([3]) + bytes(3072) + bytes([10]) + bytes(3072))
    with pytest.raises(ValueError, match="record 1 has label 10"):
        CIFAR10(root, train=False, download=False)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin"):
        CIFAR10(root, train=True, download=False)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz") as e:
        CIFAR10(tmp_path, download=False)
    assert cifar10.MD5 in str(e.value) and "cifar-10-batches-bin" in str(e.value)


def _tarball(folder, dest):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    dest.write_bytes(buf.getvalue())
    return dest


def test_cifar_tarball_checked_and_extracted(fake_cifar, tmp_path, monkeypatch):
    root, arrays = fake_cifar
    new_root = tmp_path / "new"
    new_root.mkdir()
    tar = _tarball(root / "cifar-10-batches-bin", new_root / "cifar-10-binary.tar.gz")
    with pytest.raises(ValueError, match="md5"):
        CIFAR10(new_root, download=False)          # not the official archive
    monkeypatch.setattr(cifar10, "MD5", md5_file(tar))
    ds = CIFAR10(new_root, train=False, download=False)
    np.testing.assert_array_equal(ds.images, arrays["test_batch.bin"][0])
    assert sorted(p.name for p in new_root.iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]


def test_cifar_download(fake_cifar, tmp_path, monkeypatch, server):
    root, arrays = fake_cifar
    url, served = server
    tar = _tarball(root / "cifar-10-batches-bin", served / "cifar-10-binary.tar.gz")
    monkeypatch.setattr(cifar10, "MD5", md5_file(tar))
    monkeypatch.setattr(cifar10, "URL", url + "cifar-10-binary.tar.gz")
    ds = CIFAR10(tmp_path / "dl", train=True)
    assert len(ds) == 15
    np.testing.assert_array_equal(ds.labels[:3], arrays["data_batch_1.bin"][1])
