"""Reference networks for CIFAR-10 (input (N, 3, 32, 32), output (N, 10) logits).

    mlp_cifar()            the seeds' DNN, 411,146 parameters
    seed_cnn_cifar()       the seeds' CNN, 1,634,058 parameters
    improved_cnn_cifar()   the seeds' improved CNN: conv-BN blocks, max-pool, dropout 0.5, dense 256
    vgg_cifar(depth)       VGG-11/13/16/19 with batch norm (Simonyan & Zisserman 2015, CIFAR head)
    airnet_cifar(widths)   the fast-training net of examples/cifar10.py, after KellerJordan's airbench

The seeds' two models are Keras models; :func:`glorot_init_` gives them Keras's
initialization (Glorot-uniform weights, zero biases) so that they train as the
seeds' did.  The ResNets are in :mod:`minicnn.models.resnet_cifar`.
"""
import math

import numpy as np

from .. import nn

__all__ = ["mlp_cifar", "seed_cnn_cifar", "improved_cnn_cifar", "vgg_cifar", "VGG", "VGG_CONFIGS",
           "AirNet", "ConvGroup", "airnet_cifar", "glorot_init_", "patch_whitening"]


def glorot_init_(model):
    """Keras's default initialization, in place: Glorot-uniform weights and zero biases
    for every Linear and Conv2d.  Returns ``model``."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def mlp_cifar(num_classes=10):
    """The seeds' DNN: Flatten -> Dense 128 ReLU -> Dense 128 ReLU -> Dense 10.

    3,072 -> 128 -> 128 -> 10: 411,146 parameters, Keras initialization.
    """
    return glorot_init_(nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * 32 * 32, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    ))


def seed_cnn_cifar(num_classes=10):
    """The seeds' CNN: Conv 32 3x3 valid ReLU -> Conv 64 3x3 valid ReLU -> MaxPool 2 ->
    Flatten -> Dense 128 ReLU -> Dense 64 ReLU -> Dense 10.

    Shapes (N, 3, 32, 32) -> (N, 32, 30, 30) -> (N, 64, 28, 28) -> (N, 64, 14, 14)
    -> 12,544 features.  1,634,058 parameters (98% of them in the first dense
    layer, which is why it overfits), Keras initialization.
    """
    return glorot_init_(nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 14 * 14, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    ))


def _conv_bn_relu(cin, cout):
    """Conv 3x3 'same' (no bias: the BatchNorm's shift replaces it) -> BatchNorm -> ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def improved_cnn_cifar(num_classes=10, dropout=0.5):
    """The seeds' improved CNN: three blocks of two conv-BN-ReLU layers (32, 64, 128
    channels, 3x3 'same') each closed by MaxPool 2, then Flatten (2,048) -> Dense 256
    ReLU -> Dropout 0.5 -> Dense 10.  814,570 parameters.

    The seeds give its outline (conv-BN blocks, max-pool, dropout 0.5, dense 256) and
    its optimizer (Adam, lr 2e-4); the widths here are the usual Keras tutorial's.
    """
    layers = []
    for cin, cout in ((3, 32), (32, 64), (64, 128)):
        layers += _conv_bn_relu(cin, cout) + _conv_bn_relu(cout, cout) + [nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(dropout),
               nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


# Channel counts per 3x3 conv, "M" a 2x2 max-pool (Simonyan & Zisserman 2015, table 1).
VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """``features`` (conv-BN-ReLU stack with max-pools) -> flatten -> ``classifier`` (Linear)."""

    def __init__(self, features, classifier):
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg_cifar(depth=11, num_classes=10):
    """VGG-``depth`` (11, 13, 16 or 19) with batch norm, for 32x32 inputs.

    ``features``: the conv-BN-ReLU stack of :data:`VGG_CONFIGS` with five 2x2 max-pools,
    (N, 3, 32, 32) -> (N, 512, 1, 1); ``classifier``: one Linear 512 -> 10, the usual
    CIFAR replacement for ImageNet's three 4,096-wide layers.  VGG-11: 9,228,362 parameters.
    """
    if depth not in VGG_CONFIGS:
        raise ValueError(f"vgg_cifar: depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
    layers, cin = [], 3
    for v in VGG_CONFIGS[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += _conv_bn_relu(cin, v)
            cin = v
    return VGG(nn.Sequential(*layers), nn.Linear(512, num_classes))


# ----------------------------------------------------------------------------- AirNet

def patch_whitening(images, kernel_size=2, eps=5e-4):
    """Conv weights that whiten the k x k patches of ``images`` (N, C, H, W), float.

    With Σ the covariance of the flattened patches (C·k² values, ordered as a conv
    weight's (c, i, j)) and Σ = V diag(λ) Vᵀ, the filters are the rows of
    diag(λ + eps)^(-1/2) Vᵀ, largest λ first, followed by their negatives (so a ReLU-like
    activation after them keeps both signs): weight (2·C·k², C, k, k), float32.
    """
    x = np.asarray(images, np.float64)
    if x.ndim != 4:
        raise ValueError(f"patch_whitening: expected images (N, C, H, W), got shape {x.shape}")
    C = x.shape[1]
    k = kernel_size
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # (N, C, H', W', k, k)
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, C * k * k)
    eigval, eigvec = np.linalg.eigh(np.cov(patches, rowvar=False))
    order = np.argsort(eigval)[::-1]
    w = (eigvec[:, order] / np.sqrt(eigval[order] + eps)).T.reshape(-1, C, k, k)
    return np.concatenate([w, -w]).astype(np.float32)


def _torch_default_init_(weight):
    """PyTorch's default conv/linear weight init, U(±1/√fan_in), in place.

    AirNet keeps it because the recipe's learning rates were tuned at this scale."""
    bound = 1 / math.sqrt(nn.init.fans(weight.shape)[0])
    nn.init.uniform_(weight, -bound, bound)


def _dirac_(weight):
    """Make the first min(O, C) filters of weight (O, C, k, k) identities: filter i passes
    channel i through unchanged (k odd).  Residual-like start without a residual branch."""
    O, C, kh, kw = weight.shape
    n = min(O, C)
    weight.data[:n] = 0
    weight.data[np.arange(n), np.arange(n), kh // 2, kw // 2] = 1


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _activation(name):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


def _shift_only_bn(channels, momentum):
    """BatchNorm whose scale stays 1 (frozen) and whose shift is learned."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    """conv1 3x3 -> MaxPool 2 -> norm1 -> act -> conv2 3x3 -> norm2 -> act.

    (N, cin, H, W) -> (N, cout, H/2, W/2) (floor).  Convs are 'same', without bias,
    Dirac-initialized; pooling before the first norm puts the norm and activation on
    a quarter of the pixels.
    """

    def __init__(self, cin, cout, activation="relu", bn_momentum=0.6):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _shift_only_bn(cout, bn_momentum)
        self.act = _activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _shift_only_bn(cout, bn_momentum)
        for conv in (self.conv1, self.conv2):
            _torch_default_init_(conv.weight)
            _dirac_(conv.weight)

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    """A small fast-training CIFAR net after KellerJordan's airbench (2024).

    whiten: Conv 2x2, 3 -> 24, no padding, weights fixed by :meth:`whiten_` (PCA
    whitening of the training patches), bias learned; act.
    Three :class:`ConvGroup`s of ``widths`` channels; MaxPool 3; Linear (no bias) to
    10 logits, multiplied by ``scale``.  Shapes: 32 -> 31 -> 15 -> 7 -> 3 -> 1.

    BatchNorms have a frozen scale of 1, eps 1e-12 and ``bn_momentum`` 0.6 (the
    running statistics follow the last few batches: training runs only a few
    hundred steps).  ``activation``: 'relu' (default) or 'gelu'.
    """

    def __init__(self, widths=(64, 256, 256), num_classes=10, activation="relu", bn_momentum=0.6,
                 scale=1 / 9):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"AirNet: widths must be three positive channel counts, got {widths!r}")
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = _activation(activation)
        cins = (24,) + tuple(widths[:2])
        self.layers = nn.Sequential(*(ConvGroup(cin, cout, activation, bn_momentum)
                                      for cin, cout in zip(cins, widths)))
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        _torch_default_init_(self.head.weight)
        self.scale = scale

    def whiten_(self, images, eps=5e-4):
        """Set the whitening filters from training ``images`` (N, 3, H, W), float, normalized
        as the network's inputs will be; a few thousand images suffice.  Returns self."""
        self.whiten.weight.data[...] = patch_whitening(images, 2, eps)
        return self

    def forward(self, x):
        x = self.layers(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.scale


def airnet_cifar(widths=(64, 256, 256), activation="relu"):
    """:class:`AirNet` with ``widths``; call ``whiten_(train_images)`` before training."""
    return AirNet(widths, activation=activation)
