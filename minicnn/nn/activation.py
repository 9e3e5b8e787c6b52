"""Activation layers: thin Modules over the functions in ``minicnn.ops.activation``."""
from .. import ops
from .module import Module


class ReLU(Module):
    """y = max(x, 0)."""
    def forward(self, x):
        return ops.relu(x)


class ReLU6(Module):
    """y = min(max(x, 0), 6)."""
    def forward(self, x):
        return ops.relu6(x)


class LeakyReLU(Module):
    """y = x if x > 0 else negative_slope·x (default 0.01)."""
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return ops.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class GELU(Module):
    """y = x·Φ(x); ``approximate='tanh'`` for the tanh approximation."""
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return ops.gelu(x, self.approximate)


class Sigmoid(Module):
    """y = 1 / (1 + e⁻ˣ)."""
    def forward(self, x):
        return ops.sigmoid(x)


class Tanh(Module):
    """y = tanh x."""
    def forward(self, x):
        return ops.tanh(x)


class Softmax(Module):
    """Softmax over ``dim`` (default the last axis)."""
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return ops.softmax(x, self.dim)
