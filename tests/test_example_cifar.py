"""Smoke test of ``examples/cifar10.py --quick``: both parts run end to end, print the
seeds' table, and save their plots and results.  On the real CIFAR-10 copy when this
machine has one (then the models must beat chance), else on generated files in the
official binary layout."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from minicnn.data import data_root

ROOT = Path(__file__).resolve().parents[1]
REAL = data_root() / "cifar-10-batches-bin"


def _example():
    spec = importlib.util.spec_from_file_location("cifar10_example", ROOT / "examples" / "cifar10.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_fake_cifar(root, per_file=120):
    """The six .bin files of random 32x32 RGB images, labels cycling over the 10 classes."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (per_file, 1 + 3 * 32 * 32), dtype=np.uint8)
        records[:, 0] = np.arange(per_file) % 10
        records.tofile(folder / name)
    return root


def test_quick_run_of_both_parts(tmp_path, capsys):
    real = (REAL / "test_batch.bin").is_file()
    root = REAL.parent if real else _write_fake_cifar(tmp_path / "data")
    out = tmp_path / "out"
    results = _example().main(["--quick", "--quiet", "--data-root", str(root), "--out", str(out)])
    printed = capsys.readouterr().out

    rows = results["compare"]
    assert rows["DNN"]["params"] == 411_146 and rows["CNN"]["params"] == 1_634_058
    for row in rows.values():
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["test_acc"] <= 1 and row["train_seconds"] > 0
    assert "48.83%" in printed and "62.37%" in printed and "train-test gap" in printed
    strong = results["strong"]
    assert strong["epochs"] == 1 and len(strong["test_acc_per_epoch"]) == 1 and strong["img_per_s"] > 0
    for name in ("compare_dnn_curves.png", "compare_cnn_curves.png", "strong_curves.png",
                 "strong_confusion_matrix.png", "strong_time_accuracy.png"):
        assert (out / name).stat().st_size > 1000, name
    assert json.loads((out / "results.json").read_text())["strong"]["test_acc"] == strong["test_acc"]
    if real:  # 4,000 real images for one epoch: well above chance (10%), far below the full runs
        assert rows["CNN"]["test_acc"] > 0.2 and rows["DNN"]["test_acc"] > 0.2


def test_missing_data_exits_with_instructions(tmp_path, monkeypatch):
    example = _example()
    monkeypatch.setattr(example, "CIFAR10", _offline)
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--quick", "--data-root", str(tmp_path)])
    message = str(exit_info.value)
    assert "cifar-10-batches-bin" in message and str(tmp_path) in message


def _offline(root=None, train=True):
    from minicnn.data import DownloadError
    raise DownloadError("no internet here")
