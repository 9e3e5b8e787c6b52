"""Smoke test of examples/inside_a_cnn.py with its --quick settings, in-process.

Each part runs where its data is on this machine (the CIFAR-10 copy and the ResNet-20
weights; Fashion-MNIST) and says it is skipped otherwise; no download is attempted.
"""
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_run_draws_every_figure_it_has_data_for(tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "examples" / "inside_a_cnn.py"))["main"]
    try:
        main(["--quick", "--out", str(tmp_path)])
    except SystemExit as e:
        pytest.skip(f"no local data for any part: {e}")
    printed = capsys.readouterr().out
    saved = printed.split("Saved:")[-1]
    expected = []
    if "CIFAR-10 part skipped" not in printed:
        expected.append("cifar_grad_cam.png")
        assert re.search(r"completeness gap .* = \d+\.\d%, \d+\.\d%", printed)
    if "Fashion-MNIST parts skipped" not in printed:
        expected += ["fashion_grad_cam.png", "fashion_feature_maps.png", "fashion_filters.png",
                     "layer_monitor.png", "layer_monitor_std_grad.png"]
        assert re.search(r"no batch norm: loss \d\.\d{3}", printed) and re.search(r"batch norm: loss", printed)
    for name in expected:
        assert name in saved, name
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
