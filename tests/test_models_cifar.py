"""CIFAR-10 reference models: parameter counts, shapes, option-A shortcuts, names, and that
each can fit one batch."""
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import nn, ops
from minicnn.models.cifar import (AirNet, airnet_cifar, improved_cnn_cifar, mlp_cifar,
                                  patch_whitening, seed_cnn_cifar, vgg_cifar)
from minicnn.models.resnet_cifar import ShortcutA, resnet20, resnet32, resnet44, resnet56
from minicnn.optim import SGD, Adam

PRETRAINED = Path("/work/shared/weights/cifar10-resnet")


def n_params(model):
    return sum(p.data.size for p in model.parameters())


def images(n, seed=0):
    return minicnn.tensor(np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32))


# ------------------------------------------------------------------------ parameter counts

@pytest.mark.parametrize("build, expected", [
    (mlp_cifar, 411_146),          # the seeds' DNN
    (seed_cnn_cifar, 1_634_058),   # the seeds' CNN
    (improved_cnn_cifar, 814_570),
    (resnet20, 269_722),           # He et al. 2016: "0.27M"
    (resnet32, 464_154),           # "0.46M"
    (resnet44, 658_586),           # "0.66M"
    (resnet56, 853_018),           # "0.85M"
])
def test_parameter_counts(build, expected):
    assert n_params(build()) == expected


def test_vgg11_parameter_count_and_depths():
    # 8 conv-BN layers (weights + BN affine, no conv bias) and a 512 -> 10 classifier.
    assert n_params(vgg_cifar(11)) == 9_228_362
    with pytest.raises(ValueError, match="depth"):
        vgg_cifar(12)


def test_airnet_parameter_count_and_frozen_parts():
    net = airnet_cifar()
    # whitening conv 24*3*2*2 + 24 bias; convs (no bias); BN weight+bias; head 256*10.
    convs = 24 * 64 * 9 + 64 * 64 * 9 + 64 * 256 * 9 + 256 * 256 * 9 * 3
    bn = 2 * 2 * (64 + 256 + 256)
    assert n_params(net) == 24 * 12 + 24 + convs + bn + 2560
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen and "layers.0.norm1.weight" in frozen
    assert "whiten.bias" not in frozen and "layers.2.norm2.bias" not in frozen


# ------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("build", [mlp_cifar, seed_cnn_cifar, improved_cnn_cifar, resnet20,
                                   lambda: airnet_cifar((8, 16, 16)), lambda: vgg_cifar(11)])
def test_output_shape(build):
    model = build()
    model.eval()
    with minicnn.no_grad():
        assert model(images(2)).shape == (2, 10)


# ------------------------------------------------------------------------ ResNet specifics

def test_resnet_parameter_names_match_the_pretrained_checkpoints():
    names = list(resnet20().state_dict())
    assert names[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                         "bn1.running_var", "bn1.num_batches_tracked"]
    assert "layer1.0.conv1.weight" in names and "layer2.2.bn2.running_var" in names
    assert "layer3.0.conv2.weight" in names and "layer4.0.conv1.weight" not in names
    assert names[-2:] == ["linear.weight", "linear.bias"]
    # 20 weighted layers: 19 convs (the stem + 2 per block) and the linear; no shortcut params.
    assert sum(n.endswith("conv1.weight") or n.endswith("conv2.weight") for n in names) == 19
    assert not any("shortcut" in n for n in names)


@pytest.mark.parametrize("build, name", [(resnet20, "resnet20-12fca82f.th"), (resnet56, "resnet56-4bfd9763.th")])
def test_resnet_keys_and_shapes_equal_the_pretrained_checkpoints_minus_the_prefix(build, name):
    path = PRETRAINED / name
    if not path.is_file():
        pytest.skip(f"pretrained checkpoint {path} not on this machine")
    from minicnn.io import load_torch
    theirs = {k.removeprefix("module."): tuple(v.shape) for k, v in load_torch(path)["state_dict"].items()}
    ours = {k: v.shape for k, v in build().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert theirs == ours


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = np.random.default_rng(1).standard_normal((2, 16, 8, 8)).astype(np.float32)
    y = ShortcutA(8)(minicnn.tensor(x)).data
    assert y.shape == (2, 32, 4, 4)
    np.testing.assert_array_equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_option_a_shortcut_gradient_reaches_only_the_kept_pixels():
    x = minicnn.tensor(np.ones((1, 4, 4, 4), np.float32), requires_grad=True)
    ShortcutA(2)(x).sum().backward()
    expected = np.zeros((1, 4, 4, 4), np.float32)
    expected[:, :, ::2, ::2] = 1
    np.testing.assert_array_equal(x.grad, expected)


def test_resnet_stage_shapes_and_downsampling_blocks():
    net = resnet20()
    assert isinstance(net.layer2[0].shortcut, ShortcutA) and net.layer2[0].shortcut.pad == 8
    assert isinstance(net.layer3[0].shortcut, ShortcutA) and net.layer3[0].shortcut.pad == 16
    assert isinstance(net.layer1[0].shortcut, nn.Identity) and isinstance(net.layer2[1].shortcut, nn.Identity)
    net.eval()
    with minicnn.no_grad():
        h = ops.relu(net.bn1(net.conv1(images(1))))
        shapes = []
        for stage in (net.layer1, net.layer2, net.layer3):
            h = stage(h)
            shapes.append(h.shape)
    assert shapes == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]


def test_resnet_forward_matches_torch_reference_with_the_same_weights():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = resnet20()
    net.eval()
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in net.state_dict().items()}

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], False, 0.0, 1e-5)

    x = images(2, seed=3)
    with torch.no_grad():
        h = F.relu(bn(F.conv2d(torch.from_numpy(x.data), sd["conv1.weight"], padding=1), "bn1"))
        for s, planes in enumerate((16, 32, 64), start=1):
            for b in range(3):
                p = f"layer{s}.{b}"
                stride = 2 if s > 1 and b == 0 else 1
                out = F.relu(bn(F.conv2d(h, sd[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
                out = bn(F.conv2d(out, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
                sc = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)) if stride == 2 else h
                h = F.relu(out + sc)
        ref = F.linear(h.mean((2, 3)), sd["linear.weight"], sd["linear.bias"]).numpy()
    with minicnn.no_grad():
        got = net(x).data
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("build", [resnet20, improved_cnn_cifar])
def test_fused_batch_norm_epilogues_change_only_rounding(build):
    """The ResNet blocks' relu(bn(x) + shortcut) and Sequential's BN -> ReLU run fused;
    a forward hook on every batch norm makes them run layer by layer.  One training
    step either way, in float64: the same loss, gradients and running statistics up to
    rounding (a mis-wired residual or mask would differ at order 1).  In float32 the two
    orders of rounding can put a pre-activation that sits within ~1e-6 of zero on either
    side of its ReLU, and all gradients upstream of it then differ at ~1e-4."""
    labels = np.arange(8) % 10

    def step(unfused):
        minicnn.manual_seed(0)
        net = build()
        for p in net.parameters():
            p.data = p.data.astype(np.float64)
        for m in net.modules():
            m._buffers.update({k: b.astype(np.float64) for k, b in m._buffers.items()
                               if b is not None and b.dtype.kind == "f"})
            if unfused and isinstance(m, nn.BatchNorm2d):
                m.register_forward_hook(lambda *args: None)
        loss = ops.cross_entropy(net(minicnn.tensor(images(8, seed=5).data.astype(np.float64))), labels)
        loss.backward()
        return [loss.data] + [p.grad for p in net.parameters()] + [b for _, b in net.named_buffers() if b.dtype.kind == "f"]

    fused, unfused = step(False), step(True)
    assert len(fused) == len(unfused)
    for got, want in zip(fused, unfused):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("build", [resnet20, improved_cnn_cifar])
def test_eval_logits_with_batch_norms_folded_into_the_convolutions(build):
    """Eval mode without gradients folds every conv -> BN (-> + shortcut) (-> ReLU) into the
    convolution's epilogue; forward hooks on the batch norms force the layer-by-layer path."""
    minicnn.manual_seed(1)
    net = build()
    rng = np.random.default_rng(2)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[:] = rng.standard_normal(m.num_features) * 0.1
            m.running_var[:] = rng.uniform(0.5, 2, m.num_features)
    net.eval()
    x = images(4, seed=7)
    with minicnn.no_grad():
        fused = net(x).data
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_hook(lambda *args: None)
        unfused = net(x).data
    np.testing.assert_allclose(fused, unfused, rtol=1e-4, atol=1e-5 * np.abs(unfused).max())


# ------------------------------------------------------------------------ AirNet specifics

def test_patch_whitening_decorrelates_patches():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((64, 3, 12, 12))
    imgs = base + 0.8 * np.roll(base, 1, axis=3) + 0.5 * base[:, :1]   # correlated pixels and channels
    w = patch_whitening(imgs, 2, eps=0.0)
    assert w.shape == (24, 3, 2, 2)
    np.testing.assert_array_equal(w[12:], -w[:12])
    win = np.lib.stride_tricks.sliding_window_view(imgs, (2, 2), axis=(2, 3))
    patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    cov = np.cov(patches @ w[:12].reshape(12, -1).astype(np.float64).T, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(12), atol=1e-3)


def test_airnet_whiten_sets_the_first_filters():
    net = AirNet((8, 16, 16))
    imgs = np.random.default_rng(4).standard_normal((16, 3, 32, 32)).astype(np.float32)
    net.whiten_(imgs)
    np.testing.assert_allclose(net.whiten.weight.data, patch_whitening(imgs))


def test_airnet_convs_start_as_identities_on_their_input_channels():
    group = AirNet((8, 16, 16)).layers[1]            # conv1: 8 -> 16, conv2: 16 -> 16
    w = group.conv1.weight.data
    assert np.all(w[np.arange(8), np.arange(8), 1, 1] == 1)
    assert np.count_nonzero(w[:8]) == 8
    assert np.count_nonzero(w[8:]) > 0.9 * w[8:].size


def test_airnet_rejects_bad_widths_and_activation():
    with pytest.raises(ValueError, match="widths"):
        AirNet((8, 16))
    with pytest.raises(ValueError, match="activation"):
        AirNet((8, 16, 16), activation="swish")


# ------------------------------------------------------------------------ learning

@pytest.mark.parametrize("build, make_opt", [
    (mlp_cifar, lambda p: Adam(p, lr=1e-3)),
    (seed_cnn_cifar, lambda p: Adam(p, lr=1e-3)),
    (resnet20, lambda p: SGD(p, lr=0.05, momentum=0.9)),
    (lambda: airnet_cifar((16, 32, 32)), lambda p: SGD([q for q in p if q.requires_grad], lr=0.05,
                                                       momentum=0.9, nesterov=True)),
])
def test_overfits_one_batch(build, make_opt):
    """A net that works drives the loss on one fixed batch of 16 random images near zero."""
    minicnn.manual_seed(0)
    model = build()
    x = images(16, seed=5)
    y = np.arange(16) % 10
    opt = make_opt(model.parameters())
    losses = []
    for _ in range(40):
        loss = ops.cross_entropy(model(x), y)
        losses.append(float(loss.data))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with minicnn.no_grad():
        acc = float((model(x).data.argmax(1) == y).mean())
    assert losses[0] > 1.5 and losses[-1] < 0.2 * losses[0]
    assert acc == 1.0
