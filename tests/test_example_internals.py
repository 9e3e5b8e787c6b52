"""Smoke tests of examples/layer_internals.py, run in-process with its smallest settings.

The init-depth part needs no data and always runs (Fashion-MNIST made to look absent,
so the script's exit with a message is checked too); the CNN part runs on the local
Fashion-MNIST copy and is skipped when there is none (no download is attempted).
"""
import importlib.util
import re
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _example():
    spec = importlib.util.spec_from_file_location("layer_internals_example", ROOT / "examples" / "layer_internals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_pngs(out, names):
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG, name


def _check_depth_table(printed):
    """The 20-row table of ReLU output stds: Kaiming roughly constant, N(0, 0.01²) collapsing."""
    assert re.search(r"^ReLU +kaiming +N\(0, 0\.01²\)$", printed, re.M), printed[:1000]
    rows = re.findall(r"^(\d+) +(\d\.\d{3}e[+-]\d\d) +(\d\.\d{3}e[+-]\d\d)$", printed, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, 21)), printed[:2000]
    kaiming, naive = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert min(kaiming) > 0.1 and naive[-1] < 1e-6 * naive[0]


def test_init_depth_part_and_exit_without_fashion_mnist(tmp_path, monkeypatch, capsys):
    example = _example()

    def absent(train=True):
        raise FileNotFoundError("Fashion-MNIST file train-images-idx3-ubyte.gz not found")

    monkeypatch.setattr(example, "FashionMNIST", absent)
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--steps", "0", "--batch", "8", "--out", str(tmp_path)])
    assert "Fashion-MNIST is not available" in str(exit_info.value)
    printed = capsys.readouterr().out
    _check_depth_table(printed)
    _check_pngs(tmp_path, ["norm_axes.png", "init_depth.png"])
    assert "init_depth.png" in printed.split("Saved:")[-1]


def test_all_parts_on_fashion_mnist(tmp_path, monkeypatch, capsys):
    example = _example()
    monkeypatch.setattr(example, "FashionMNIST", partial(example.FashionMNIST, download=False))
    try:
        example.main(["--steps", "1", "--batch", "8", "--out", str(tmp_path)])
    except SystemExit as e:  # the script's own exit when the data set is missing
        pytest.skip(f"no local Fashion-MNIST copy, CNN part not run: {e}")
    printed = capsys.readouterr().out
    _check_depth_table(printed)
    for label in ("before", "after"):
        assert f"Fashion-MNIST CNN {label} training, on 8 test images" in printed
    assert re.search(r"^0 +Conv2d +\(8, 32, 28, 28\) +[+-]\d\.\d{3}e[+-]\d\d +\d\.\d{3}e[+-]\d\d +\d+\.\d%"
                     r"( +(\d\.\d{3}e[+-]\d\d|-))?$",   # with a loss: the output's ‖∂L/∂a‖
                     printed, re.M), printed[-3000:]
    _check_pngs(tmp_path, ["norm_axes.png", "init_depth.png", "activation_stats_before.png",
                           "activation_stats_after.png", "filters.png", "feature_maps.png"])
