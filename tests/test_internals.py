"""Tools for studying layer internals: the per-layer report, the init depth study
(Kaiming keeps the activation std, N(0, 0.01²) collapses it) and the PNG figures."""
import os
import subprocess
import sys

import numpy as np
import pytest

import minicnn
from minicnn import internals, nn, ops, tensor


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 5))


def batch(n=6):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3, 8, 8)).astype(np.float32), np.arange(n) % 5


def test_report_matches_a_hand_run_forward_and_backward():
    model, (x, y) = small_cnn(), batch()
    report = internals.inspect(model, x, ops.cross_entropy, y)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}

    h, expected = tensor(x), []
    for layer in model:
        h = layer(h)
        expected.append((type(layer).__name__, h.shape, h.data.mean(dtype=np.float64), h.data.std(dtype=np.float64),
                         np.mean(h.data == 0)))
    assert [(s.kind, s.shape) for s in report.layers] == [e[:2] for e in expected]
    assert [s.name for s in report.layers] == [str(i) for i in range(len(model))]
    for s, (_, _, mean, std, zeros) in zip(report.layers, expected):
        assert s.mean == pytest.approx(mean, rel=1e-6, abs=1e-9)
        assert s.std == pytest.approx(std, rel=1e-6)
        assert s.zero_fraction == pytest.approx(zeros)
    relu = [s for s in report.layers if s.kind == "ReLU"]
    assert all(0.2 < s.zero_fraction < 0.8 for s in relu)

    model.zero_grad()
    loss = ops.cross_entropy(h, y)
    loss.backward()
    assert report.loss == pytest.approx(loss.item(), rel=1e-6)
    assert [p.name for p in report.params] == [n for n, _ in model.named_parameters()]
    for p in report.params:
        param = dict(model.named_parameters())[p.name]
        assert p.grad_norm == pytest.approx(np.linalg.norm(param.grad), rel=1e-5)
        np.testing.assert_allclose(grads[p.name], param.grad, rtol=1e-5, atol=1e-7)
        assert p.norm == pytest.approx(np.linalg.norm(param.data), rel=1e-6)
    assert all(not m._forward_hooks for m in model.modules()), "hooks left behind"

    text = report.table()
    assert "BatchNorm2d" in text and "‖grad‖" in text and f"{relu[0].zero_fraction * 100:.1f}%" in text


def test_report_without_a_loss_builds_no_graph_and_touches_no_gradient():
    model, (x, _) = small_cnn(), batch()
    report = internals.inspect(model, x)
    assert report.params == [] and report.loss is None
    assert all(p.grad is None for p in model.parameters())
    assert len(report.column("std")) == len(model)
    assert len(report.column("zero_fraction", kind="ReLU")) == 2


def test_capture_returns_the_outputs_of_the_chosen_layers():
    model, (x, _) = small_cnn(), batch(2)
    maps = internals.capture(model, x, nn.Conv2d)
    assert [(name, out.shape) for name, _, out in maps] == [("0", (2, 4, 8, 8)), ("4", (2, 6, 2, 2))]
    np.testing.assert_array_equal(maps[0][2], model[0](tensor(x)).data)


def test_kaiming_keeps_activation_std_while_small_normal_init_collapses_it():
    columns = internals.init_depth_study(depth=20)
    print("\n" + internals.format_columns(columns, index="ReLU"))
    kaiming, naive = (np.array(columns[k]) for k in internals.INITS)
    assert len(kaiming) == len(naive) == 20
    # Kaiming: every layer's std stays within an order of magnitude of the input's (1)
    assert 0.05 < kaiming.min() and kaiming.max() < 2 and kaiming.max() / kaiming.min() < 10
    # N(0, 0.01²): each layer multiplies the std by about 0.01·√(fan_in/2) = 0.12
    ratios = naive[1:] / naive[:-1]
    assert np.all((0.05 < ratios) & (ratios < 0.25))
    assert naive[-1] < 1e-15


def test_figures_are_written_as_png(tmp_path):
    viz = pytest.importorskip("minicnn.viz")
    model, (x, y) = small_cnn(), batch()
    report = internals.inspect(model, x, ops.cross_entropy, y)
    paths = [viz.plot_norm_axes(tmp_path / "axes.png"),
             viz.plot_filters(model[0], tmp_path / "rgb_filters.png"),
             viz.plot_filters(model[4].weight, tmp_path / "filters.png"),
             viz.plot_feature_maps(model, x[0], tmp_path / "maps.png"),
             viz.plot_activation_stats(report, tmp_path / "stats.png"),
             viz.plot_depth_study({"a": [1.0, 0.5], "b": [1.0, 1e-3]}, tmp_path / "depth.png")]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", p
        assert os.path.getsize(p) > 2000, p
    with pytest.raises(ValueError, match=r"expected a Conv2d or a weight of shape \(out, in, kh, kw\)"):
        viz.plot_filters(np.zeros((3, 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"expected one image \(C, H, W\)"):
        viz.plot_feature_maps(model, x, tmp_path / "bad.png")


def test_importing_minicnn_and_internals_does_not_import_matplotlib():
    root = os.path.dirname(os.path.dirname(minicnn.__file__))
    code = "import sys, minicnn, minicnn.internals; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.stdout.strip() == "False"


def test_inspect_and_capture_leave_running_statistics_alone_and_name_the_mode():
    model, (x, y) = small_cnn(), batch()
    model.add_module("drop", nn.Dropout(0.5))
    bn = model[1]
    bn.running_mean[:] = 0.25
    before = model.state_dict()
    rng_before = minicnn.random.get_state()
    train = internals.inspect(model, x, ops.cross_entropy, y)
    captured = internals.capture(model, x)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert minicnn.random.get_state() == rng_before, "dropout's draws leaked into the global stream"
    assert train.mode == captured.mode == "train"
    assert str(train).startswith("train mode: BatchNorm normalizes with this batch's statistics")
    # train mode really ran: the BN output has the batch's zero mean per channel, not the running one
    bn_out = [out for name, _, out in captured if name == "1"][0]
    np.testing.assert_allclose(bn_out.mean(axis=(0, 2, 3)), 0, atol=1e-5)

    model.eval()
    model[4].train()
    assert internals.capture(model, x).mode == "mixed (train: 4)"
    assert internals.inspect(model, x).mode == "mixed (train: 4)"


def test_report_says_a_fresh_eval_batch_norm_is_the_identity():
    model, (x, _) = small_cnn(), batch()
    model.eval()
    report = internals.inspect(model, x)
    assert report.mode == "eval"
    text = str(report)
    assert text.startswith("eval mode: BatchNorm normalizes with its running statistics")
    assert "note: 1: eval-mode BatchNorm with fresh statistics" in text
    conv, bn = report.layers[:2]
    assert bn.std == pytest.approx(conv.std / np.sqrt(1 + 1e-5), rel=1e-5)
    model.train()
    assert internals.inspect(model, x).notes == []
    model.eval()
    model[1].running_var[0] = 2.0
    assert internals.inspect(model, x).notes == []


def test_inspect_reports_each_layers_activation_gradient():
    """With a loss, each layer's row carries ‖∂L/∂a‖ of its output: for the last layer the
    gradient of the mean cross-entropy w.r.t. the logits, (softmax - onehot)/N."""
    import minicnn
    from minicnn import nn, ops
    minicnn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, dtype=np.float64), nn.ReLU(), nn.Linear(5, 3, dtype=np.float64))
    x, y = np.random.default_rng(0).standard_normal((4, 3, 2, 2)), np.array([0, 1, 2, 1])
    report = internals.inspect(model, x, ops.cross_entropy, y)
    logits = model(minicnn.tensor(x)).data
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(4), y] -= 1
    np.testing.assert_allclose(report.layers[-1].grad_norm, np.linalg.norm(p / 4), rtol=1e-10)
    assert all(s.grad_norm is not None for s in report.layers[1:])
    assert "‖∂L/∂a‖" in report.table()
