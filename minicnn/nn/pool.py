"""Pooling layers (see ``minicnn.ops.pool`` for the windows and the gradients)."""
from .. import ops
from ..ops.checks import check_array
from .module import Module


class MaxPool2d(Module):
    """Max over each kernel_size window.  x (N, C, H, W) -> (N, C, Ho, Wo).

    stride defaults to kernel_size; padding at most kernel_size/2; the gradient
    goes to the first maximum of each window in row-major order."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.ceil_mode = kernel_size, stride, padding, ceil_mode

    def forward(self, x):
        check_array(x, "max_pool2d")
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Mean over each kernel_size window.  x (N, C, H, W) -> (N, C, Ho, Wo).

    count_include_pad=True (default) divides by the window size including padding."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        check_array(x, "avg_pool2d")
        return ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")


class AdaptiveAvgPool2d(Module):
    """Average to a fixed output_size (int or pair; None keeps that input size).
    x (N, C, H, W) -> (N, C, *output_size)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        check_array(x, "adaptive_avg_pool2d")
        return ops.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class GlobalAvgPool2d(AdaptiveAvgPool2d):
    """Mean over H and W: x (N, C, H, W) -> (N, C, 1, 1)."""

    def __init__(self):
        super().__init__(1)

    def extra_repr(self):
        return ""
