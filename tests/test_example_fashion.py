"""Smoke tests of examples/fashion_mnist.py --quick, run as a user would, in a subprocess.

Always on a few hundred generated clothing silhouettes (written as idx files and read
with --data-dir); also on the real data when a copy is on the machine (Debian's
/usr/share/datasets/fashion-mnist or the cache).
"""
import gzip
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn.data import FashionMNIST
from minicnn.data.fashion_mnist import CLASSES
from minicnn.io import load_model
from minicnn.models import fashion_cnn
from minicnn.train import predict

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fashion_mnist.py"


def _silhouette(label, rng):
    """A 28x28 mask of a garment of class ``label`` (a rough drawing, jittered)."""
    r, c = np.mgrid[0:28, 0:28]
    r = r - rng.integers(-2, 3)
    c = c - rng.integers(-2, 3)
    torso = (r >= 6) & (r <= 25) & (c >= 8) & (c <= 19)
    long_sleeves = (r >= 6) & (r <= 24) & (((c >= 3) & (c <= 7)) | ((c >= 20) & (c <= 24)))
    shapes = [
        torso | ((r >= 6) & (r <= 11) & (c >= 3) & (c <= 24)),                       # T-shirt/top
        (r >= 3) & (r <= 26) & (((c >= 8) & (c <= 12)) | ((c >= 15) & (c <= 19)) | (r <= 6) & (c >= 8) & (c <= 19)),
        torso | long_sleeves,                                                         # Pullover
        (r >= 3) & (r <= 26) & (np.abs(c - 13.5) <= 3 + (r - 3) * 0.4),                # Dress
        (torso | long_sleeves | ((r >= 6) & (r <= 26) & (c >= 7) & (c <= 20))) & ~((c >= 13) & (c <= 14)),
        ((r == 16) | (r == 19) | (r >= 22) & (r <= 24)) & (c >= 3) & (c <= 24),       # Sandal
        (torso | long_sleeves) & ~((r <= 10) & (np.abs(c - 13.5) <= 11 - r)),          # Shirt (collar)
        (r >= 15) & (r <= 23) & (c >= 2) & (c <= 25) & (r >= 23 - (c - 2) * 0.6),     # Sneaker
        ((r >= 9) & (r <= 25) & (c >= 4) & (c <= 23)) | ((r >= 3) & (r <= 9) & (np.abs(np.hypot(r - 9, c - 13.5) - 5) <= 1)),
        ((r >= 5) & (r <= 24) & (c >= 14) & (c <= 22)) | ((r >= 16) & (r <= 24) & (c >= 3) & (c <= 22)),
    ]
    return shapes[label]


def generated_fashion(folder, n_train=400, n_test=100, seed=0):
    """Write train/t10k idx.gz files of silhouettes with random brightness and noise."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        rng.shuffle(labels)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, y in enumerate(labels):
            tone = rng.uniform(90, 230) + rng.normal(0, 25, (28, 28))
            images[i] = np.clip(np.where(_silhouette(int(y), rng), tone, rng.normal(0, 4, (28, 28))), 0, 255)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
            (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    return labels, images


def run_example(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--quick", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def check_outputs(stdout, out):
    assert "Total params: 421,642" in stdout
    assert re.search(r"^Epoch 1/1 \d+/\d+ \[=+\] .*img/s .*val_acc", stdout, re.M)
    for name in CLASSES:
        assert re.search(rf"^ *{re.escape(name)} +\d\.\d{{4}} +\d\.\d{{4}} +\d\.\d{{4}} +\d+$", stdout, re.M)
    for png in ("curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,accuracy,loss,lr")
    m = re.search(r"Test accuracy: (\d\.\d{4}) \((\d+)/(\d+)\)", stdout)
    assert m, stdout[-1500:]
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def test_quick_run_on_generated_images(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    labels, images = generated_fashion(data)
    out = tmp_path / "out"
    stdout = run_example("--data-dir", data, "--out", out)
    acc, correct, total = check_outputs(stdout, out)
    assert total == 100
    # the best checkpoint holds the weights the test accuracy was measured with
    model = fashion_cnn()
    meta = load_model(out / "best.npz", model)
    assert meta["classes"] == CLASSES and meta["epoch"] == 1
    pred = predict(model, images).argmax(1)
    assert int(np.sum(pred == labels)) == correct


def _real_data():
    try:
        return FashionMNIST(train=False, download=False)
    except (FileNotFoundError, ValueError):
        return None


@pytest.mark.skipif(_real_data() is None, reason="no local Fashion-MNIST copy (apt-get install dataset-fashion-mnist)")
def test_quick_run_on_real_data(tmp_path):
    acc, correct, total = check_outputs(run_example("--out", tmp_path), tmp_path)
    assert total == 1000
    assert acc >= 0.72  # one epoch on 4,000 images; measured 0.81


def test_missing_dataset_says_what_to_do(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("fashion_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def absent(train=True):
        raise FileNotFoundError("Fashion-MNIST file train-images-idx3-ubyte.gz not found")

    monkeypatch.setattr(example, "FashionMNIST", absent)
    with pytest.raises(SystemExit) as e:
        example.main(["--quick"])
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "fashion-mnist" in msg and "train-images-idx3-ubyte.gz" in msg
