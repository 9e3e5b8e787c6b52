"""The CIFAR ResNets of He et al. 2016 (sec. 4.2): ResNet-20/32/44/56.

Layout for depth 6n + 2 (n = 3, 5, 7, 9), input (N, 3, 32, 32):

    conv1 3x3, 16  -> bn1 -> ReLU                                  (N, 16, 32, 32)
    layer1: n BasicBlocks, 16 channels                             (N, 16, 32, 32)
    layer2: n BasicBlocks, 32 channels, the first with stride 2    (N, 32, 16, 16)
    layer3: n BasicBlocks, 64 channels, the first with stride 2    (N, 64,  8,  8)
    global average pool -> linear 64 -> 10                         (N, 10) logits

BasicBlock:  y = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x)), 3x3
convolutions without bias.  Shortcuts are "option A", parameter-free: the
identity, or where the block changes shape, x subsampled with stride 2 and
zero-padded with planes/4 channels on each side.  ``forward`` runs every layer on
its own; after ``nn.fuse(model)`` the blocks run ``fused_forward``, each conv -> BN
chain with what follows fused (``nn.conv_bn``): bn1 -> ReLU and bn2 -> + shortcut ->
ReLU in the batch norm's pass while training, the whole chain in the convolution's
epilogue in eval mode without gradients; the same values as the separate ops.

Parameter names are those of github.com/akamaster/pytorch_resnet_cifar10
without its ``module.`` prefix (``conv1.weight``, ``layer2.0.bn1.running_mean``,
``linear.bias``, ...), so its checkpoints load with renames only.  Init as
there: Kaiming normal for conv and linear weights; zero linear bias, BatchNorm
weight 1 and bias 0.  Parameters: 269,722 / 464,154 / 658,586 / 853,018.
``pretrained=PATH`` loads akamaster's checkpoint (see ``minicnn.models.pretrained``); the
model then carries its input convention and the CIFAR-10 names (``model.preprocess``,
``model.classes``; None without pretrained weights).  ``dtype=np.float64`` returns the model
in float64 (for gradient checks).
"""
import numpy as np

from .. import nn, ops
from .pretrained import load_cifar_resnet

__all__ = ["BasicBlock", "ShortcutA", "ResNetCIFAR", "resnet20", "resnet32", "resnet44", "resnet56"]


class ShortcutA(nn.Module):
    """Option-A shortcut: y = x[:, :, ::2, ::2] with ``pad`` zero channels added on each side.

    (N, C, H, W) -> (N, C + 2·pad, ceil(H/2), ceil(W/2)).  No parameters.
    """

    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return ops.pad(x[:, :, ::2, ::2], ((0, 0), (self.pad, self.pad), (0, 0), (0, 0)))

    def onnx_forward(self, g, x):
        """``forward`` as ONNX Slice and Pad (:func:`minicnn.io.export_onnx`)."""
        return g.pad(g.slice(x, axes=(2, 3), steps=(2, 2)), ((0, 0), (self.pad, self.pad), (0, 0), (0, 0)))

    def extra_repr(self):
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs and an option-A shortcut; see the module docstring.

    (N, in_planes, H, W) -> (N, planes, H/stride, W/stride).
    """

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2 or planes != 2 * in_planes:
                raise ValueError("option-A shortcuts need stride 2 and doubled channels where the shape "
                                 f"changes, got {in_planes}->{planes} with stride {stride}")
            self.shortcut = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = ops.relu(self.bn1(self.conv1(x)))
        return ops.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    def fused_forward(self, x):
        """``forward`` with each conv -> BN chain fused (``nn.fuse``)."""
        out = nn.conv_bn(self.conv1, self.bn1, x, activation="relu")
        return nn.conv_bn(self.conv2, self.bn2, out, residual=self.shortcut(x), activation="relu")

    def onnx_forward(self, g, x):
        """``forward`` spelt for :func:`minicnn.io.export_onnx`."""
        out = g.relu(g(self.bn1, g(self.conv1, x)))
        return g.relu(g.add(g(self.bn2, g(self.conv2, out)), g(self.shortcut, x)))


class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``num_blocks`` = (n, n, n).  See the module docstring."""

    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        if len(num_blocks) != 3 or min(num_blocks) < 1:
            raise ValueError(f"num_blocks must be three positive counts, got {num_blocks!r}")
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, (planes, count) in enumerate(zip((16, 32, 64), num_blocks)):
            blocks = []
            for j in range(count):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        self.preprocess, self.classes = None, None
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        return self.head(ops.relu(self.bn1(self.conv1(x))))

    def fused_forward(self, x):
        """``forward`` with the stem's conv -> BN -> ReLU fused (``nn.fuse``)."""
        return self.head(nn.conv_bn(self.conv1, self.bn1, x, activation="relu"))

    def head(self, out):
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(ops.adaptive_avg_pool2d(out, 1).flatten(1))

    def onnx_forward(self, g, x):
        """``forward`` spelt for :func:`minicnn.io.export_onnx`."""
        out = g.relu(g(self.bn1, g(self.conv1, x)))
        out = g(self.layer3, g(self.layer2, g(self.layer1, out)))
        return g(self.linear, g.flatten(g.global_avg_pool(out)))


def resnet20(num_classes=10, pretrained=None, dtype=np.float32):
    """ResNet-20 (3 blocks per stage, 269,722 parameters)."""
    return load_cifar_resnet(ResNetCIFAR((3, 3, 3), num_classes), pretrained).to(dtype)


def resnet32(num_classes=10, pretrained=None, dtype=np.float32):
    """ResNet-32 (5 blocks per stage, 464,154 parameters)."""
    return load_cifar_resnet(ResNetCIFAR((5, 5, 5), num_classes), pretrained).to(dtype)


def resnet44(num_classes=10, pretrained=None, dtype=np.float32):
    """ResNet-44 (7 blocks per stage, 658,586 parameters)."""
    return load_cifar_resnet(ResNetCIFAR((7, 7, 7), num_classes), pretrained).to(dtype)


def resnet56(num_classes=10, pretrained=None, dtype=np.float32):
    """ResNet-56 (9 blocks per stage, 853,018 parameters)."""
    return load_cifar_resnet(ResNetCIFAR((9, 9, 9), num_classes), pretrained).to(dtype)
