"""Linear (fully connected) layer."""
import numpy as np

from .. import ops
from . import init
from .module import Module
from .parameter import Parameter


class Linear(Module):
    """y = x Wᵀ + b.   x (..., in_features) -> y (..., out_features).

    weight (out_features, in_features), bias (out_features,).
    Init: Kaiming normal (fan_in, ReLU gain √2) for the weight, zeros for the
    bias.  This differs from PyTorch's default (Kaiming uniform with a=√5 and
    a uniform bias): He init suits the ReLU networks minicnn builds.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(np.empty((out_features, in_features), dtype))
        init.kaiming_normal_(self.weight)
        self.register_parameter("bias", Parameter(np.zeros(out_features, dtype)) if bias else None)

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
