"""2-D convolution layer (see ``minicnn.ops.conv`` for the math and the kernels)."""
import numpy as np

from .. import ops
from ..ops.checks import check_array
from ..ops.checks import as_pair
from . import init
from .module import Module
from .parameter import Parameter


class Conv2d(Module):
    """y = x ⋆ W + b.   x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo).

    weight (out_channels, in_channels/groups, kh, kw), bias (out_channels,).
    ``kernel_size``, ``stride``, ``dilation``: int or pair; ``padding``: int, pair,
    'valid' or 'same' (stride > 1: TensorFlow's rule, see :func:`minicnn.ops.conv2d`);
    ``groups`` must divide both channel counts (groups == in_channels: depthwise).
    Init: Kaiming normal (fan_in = in_channels/groups·kh·kw, ReLU gain √2), zero bias.
    This differs from PyTorch's default (Kaiming uniform with a=√5 and a uniform bias):
    He init suits the ReLU networks minicnn builds.

    >>> conv = Conv2d(3, 16, 3, padding=1)
    >>> conv(x).shape        # x (8, 3, 32, 32)
    (8, 16, 32, 32)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32):
        super().__init__()
        layer = "Conv2d"
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{layer}: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"{layer}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = as_pair(kernel_size, "kernel_size", layer, 1)
        self.stride = as_pair(stride, "stride", layer, 1)
        self.dilation = as_pair(dilation, "dilation", layer, 1)
        self.padding = padding if isinstance(padding, str) else as_pair(padding, "padding", layer, 0)
        self.weight = Parameter(np.empty((out_channels, in_channels // groups) + self.kernel_size, dtype))
        init.kaiming_normal_(self.weight)
        self.register_parameter("bias", Parameter(np.zeros(out_channels, dtype)) if bias else None)

    def forward(self, x):
        check_array(x, "conv2d")
        return ops.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}")
