"""ONNX export (issue 22): every architecture's graph passes onnx.checker and ONNX Runtime
computes minicnn's logits to 1e-4 (Fashion CNN, ResNet-20, EfficientNet-Lite0, a transfer model,
and the single layers with their options)."""
import numpy as np
import pytest

import minicnn
from minicnn import nn
from minicnn.io import export_onnx
from minicnn.models import efficientnet_lite0, fashion_cnn, fashion_cnn_bn, resnet20
from minicnn.models.efficientnet import EfficientNetLite
from minicnn.tensor import Tensor, no_grad
from minicnn.transfer import TransferModel, classifier_head

onnx = pytest.importorskip("onnx", reason="the 'onnx' extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")


def _randomize_statistics(model, rng):
    """Batch norms with non-trivial running statistics and affine parameters, so a wrong
    epsilon, a swapped mean/var or a missing affine shows up."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm):
            c = m.num_features
            m.running_mean[...] = rng.normal(0, 0.5, c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
            m.weight.data[...] = rng.uniform(0.5, 1.5, c)
            m.bias.data[...] = rng.normal(0, 0.2, c)
    return model


def _check(model, x, tmp_path, atol=1e-4):
    """Export, check, run in ONNX Runtime on x and on another batch size; compare with minicnn."""
    path = export_onnx(model, x, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    for batch in (x, np.concatenate([x, x[:1] * 0.5])):
        with no_grad():
            want = model(Tensor(batch)).data
        got, = session.run(None, {"input": batch})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=atol * max(1.0, np.abs(want).max()))
    return proto


def test_fashion_cnns(tmp_path, rng):
    x = rng.random((3, 1, 28, 28), dtype=np.float32)
    proto = _check(fashion_cnn(), x, tmp_path)
    assert [n.op_type for n in proto.graph.node][:3] == ["Conv", "Relu", "MaxPool"]
    _check(_randomize_statistics(fashion_cnn_bn(), rng), x, tmp_path)


def test_resnet20_with_option_a_shortcuts(tmp_path, rng):
    model = _randomize_statistics(resnet20(), rng)
    proto = _check(model, rng.standard_normal((2, 3, 32, 32), dtype=np.float32), tmp_path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Slice") == 2 and ops.count("Pad") == 2 and ops.count("Add") == 9
    assert "layer2.0.conv1.weight" in {t.name for t in proto.graph.initializer}   # state-dict names


def test_a_fused_model_exports_its_plain_graph(tmp_path, rng):
    model = nn.fuse(_randomize_statistics(resnet20(), rng))
    _check(model, rng.standard_normal((2, 3, 32, 32), dtype=np.float32), tmp_path)


def test_efficientnet_lite0_same_padding_and_depthwise(tmp_path, rng):
    """Random weights (the pretrained ones if installed): 'same' padding with TensorFlow's odd
    pixel at the bottom/right (asymmetric pads), depthwise groups, ReLU6, residual adds."""
    try:
        model = efficientnet_lite0(pretrained=True)
    except ModuleNotFoundError:
        model = _randomize_statistics(efficientnet_lite0(), rng)
    proto = _check(model, rng.standard_normal((1, 3, 224, 224), dtype=np.float32), tmp_path)
    pads = {tuple(a.ints) for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"}
    assert (0, 0, 1, 1) in pads and (1, 1, 1, 1) in pads and (1, 1, 2, 2) in pads


def test_a_transfer_model(tmp_path, rng):
    net = _randomize_statistics(EfficientNetLite(num_classes=0), rng)
    model = TransferModel(net.stages(), classifier_head(1280, 5)).freeze_backbone()
    _check(model, rng.standard_normal((2, 3, 64, 48), dtype=np.float32), tmp_path)


@pytest.mark.parametrize("layer", [
    nn.Conv2d(4, 6, 3, stride=2, padding="same", groups=2),
    nn.Conv2d(4, 4, (2, 3), padding="same", dilation=2, groups=4),
    nn.Conv2d(4, 3, 3, stride=2, padding=(1, 0), bias=False),
    nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    nn.AvgPool2d(2, padding=1, count_include_pad=False),
    nn.AvgPool2d(3, stride=1, padding=1),
    nn.ReLU6(), nn.Dropout(0.5), nn.GlobalAvgPool2d(),
    nn.Sequential(nn.Flatten(), nn.Linear(4 * 9 * 7, 5), nn.BatchNorm1d(5), nn.ReLU()),
], ids=repr)
def test_single_layers(layer, tmp_path, rng):
    _randomize_statistics(layer, rng)
    _check(layer, rng.standard_normal((2, 4, 9, 7), dtype=np.float32) * 4, tmp_path)


def test_unknown_layers_and_drifting_graphs_are_refused(tmp_path, rng):
    x = rng.standard_normal((1, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"cannot export layer '1' \(GELU\)"):
        export_onnx(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GELU()), x, tmp_path / "a.onnx")

    class Drifting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return minicnn.ops.relu(self.conv(x))

        def onnx_forward(self, g, x):
            return g(self.conv, x)                       # forgot the ReLU

    with pytest.raises(ValueError, match="computes something else than its forward"):
        export_onnx(Drifting(), x, tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()
