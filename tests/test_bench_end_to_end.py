"""benchmarks/fashion_mnist_torch.py (the example's PyTorch twin) and benchmarks/end_to_end.py
(which times the two side by side): the twin computes the example's model, trains it the
same way, and the timer reads both programs' output right.  How fast either is, is the
benchmark's business, not a test's.
"""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch twin needs torch (pip install torch)")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The two benchmark modules (they import their neighbours in benchmarks/ by name)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import end_to_end
    import fashion_mnist_torch
    return fashion_mnist_torch, end_to_end


@pytest.mark.parametrize("name, memory_format", [("basic", "contiguous"), ("basic", "channels_last"),
                                                 ("bn", "contiguous")])
def test_twin_computes_the_example_model(bench, name, memory_format, rng):
    import minicnn
    twin_module, _ = bench
    model, twin, tensor = twin_module.build_models(name, 0, memory_format)
    x = rng.random((8, 1, 28, 28), dtype=np.float32)
    model.eval()
    twin.eval()
    with minicnn.no_grad(), torch.no_grad():
        mine, theirs = model(minicnn.tensor(x)).data, twin(tensor(x)).numpy()
    assert np.abs(mine).max() > 1e-3    # a model that outputs nothing would agree trivially
    np.testing.assert_allclose(theirs, mine, rtol=1e-4, atol=1e-5)


def test_twin_refuses_what_it_does_not_twin(bench):
    twin_module, _ = bench
    example = twin_module.load_example()
    for argv, named in ((["--model", "strong"], "--model strong"), (["--augment"], "--augment")):
        with pytest.raises(SystemExit, match=named):
            twin_module.parse_args(example, argv)


@pytest.mark.parametrize("text, seconds, epochs", [
    ("Training took 3 s for 1 epoch, validation included", 3.0, 1),               # the example, < 1 min
    ("Training took 2.9 min (177 s) for 15 epochs, validation included", 177.0, 15),   # the example
    ("Training took 176.4 s for 12 epochs, validation included", 176.4, 12),      # the twin
])
def test_parse_output_reads_both_programs(bench, text, seconds, epochs):
    _, e2e = bench
    stdout = ("Epoch 1/15 750/750 [====================] 9.1s 5,275 img/s  loss 0.4733  acc 0.8301  "
              "val_loss 0.3305  val_acc 0.8812  lr 0.001\n\n" + text + "\nTest accuracy: 0.9123 (9123/10000)\n")
    r = e2e.parse_output(stdout, "minicnn")
    assert (r["train_s"], r["epochs"], r["epoch_s"]) == (seconds, epochs, seconds / epochs)
    assert (r["test_accuracy"], r["correct"], r["total"], r["val_loss"]) == (0.9123, 9123, 10000, [0.3305])
    assert r["malloc_tuned"] is None
    assert e2e.parse_output(stdout.replace("\n\n", "\nTotal params: 421,642 (torch 2.13.0+cpu, 2 threads, "
                                           "contiguous, malloc tuned: True)\n"), "torch")["malloc_tuned"] is True


def test_parse_output_names_the_missing_line(bench):
    _, e2e = bench
    with pytest.raises(ValueError, match=r"torch .*fashion_mnist_torch.py.* printed no 'Test accuracy"):
        e2e.parse_output("Training took 3 s for 1 epoch\nTraceback ...", "torch")


def test_torch_counts_at_its_best_per_pair(bench):
    _, e2e = bench
    run = lambda wall, train, epochs: {"wall_s": wall, "train_s": train, "epoch_s": train / epochs,  # noqa: E731
                                       "epochs": epochs, "test_accuracy": 0.9}
    runs = {"minicnn": [run(100, 80, 10), run(200, 100, 10)],
            "torch_contiguous": [run(150, 120, 10), run(300, 150, 10)],
            "torch_channels_last": [run(160, 110, 11), run(240, 200, 10)]}
    s = e2e.summarize(runs, ["contiguous", "channels_last"])
    assert s["wall_s"]["ratio"] == pytest.approx((150 / 100 + 240 / 200) / 2)
    assert s["wall_s"]["torch_formats"] == ["contiguous", "channels_last"]
    assert s["train_s"]["torch"] == pytest.approx((110 + 150) / 2)
    assert s["epoch_s"]["torch_formats"] == ["channels_last", "contiguous"]     # 10.0 s < 12.0 s per epoch
    assert s["epochs"]["torch_channels_last"] == [11, 10]
    runs["minicnn"] = [run(100, 0, 1), run(200, 0, 1)]   # the example printed "0 s": no ratio, not a crash
    assert e2e.summarize(runs, ["contiguous", "channels_last"])["train_s"]["ratio"] is None


def test_environments(bench, monkeypatch):
    _, e2e = bench
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1")   # exported by the user: minicnn must not see it
    mine, theirs = e2e.environment("minicnn", 2), e2e.environment("torch", 2)
    assert mine["OPENBLAS_NUM_THREADS"] == "1" and mine["MINICNN_NUM_THREADS"] == "2"
    assert "MALLOC_TRIM_THRESHOLD_" not in mine and "MALLOC_MMAP_THRESHOLD_" not in mine
    assert theirs["OMP_NUM_THREADS"] == "2"
    assert (theirs["MALLOC_MMAP_THRESHOLD_"], theirs["MALLOC_TRIM_THRESHOLD_"]) == (str(32 << 20), str(256 << 20))


def test_tiny_side_by_side_run(bench, tmp_path):
    """One pair on generated images: both programs run, their output is read, the two
    trained the same way (same start, same batches: the same validation loss), and torch
    ran with minicnn's allocator settings in force."""
    from test_example_fashion import generated_fashion
    _, e2e = bench
    data = tmp_path / "data"
    data.mkdir()
    generated_fashion(data, n_train=200, n_test=20)
    path = e2e.main(["--data-dir", str(data), "--epochs", "1", "--pairs", "1", "--threads", "1", "--no-warmup",
                     "--torch-formats", "channels_last", "--sgemm-size", "64", "--out", str(tmp_path / "out")])
    result = json.loads(Path(path).read_text())
    mine, theirs = result["runs"]["minicnn"][0], result["runs"]["torch_channels_last"][0]
    for r in (mine, theirs):
        assert (r["epochs"], r["total"], len(r["val_loss"])) == (1, 20, 1)
        assert 0 <= r["train_s"] <= r["wall_s"]
        assert r["test_accuracy"] == pytest.approx(r["correct"] / 20, abs=1e-4)
    assert theirs["val_loss"][0] == pytest.approx(mine["val_loss"][0], abs=1e-3)
    assert theirs["malloc_tuned"] is True and mine["malloc_tuned"] is None
    summary = result["summary"]
    assert summary["wall_s"]["ratio"] == pytest.approx(theirs["wall_s"] / mine["wall_s"])
    table = Path(path).with_suffix(".md").read_text()
    assert "| whole process, s |" in table and "Machine: " in table
    assert Path(path).stem == e2e.slug(result["machine"])
