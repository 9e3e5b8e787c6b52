"""Differentiable operations: one Function per op, forward and backward side by side.

Functional forms follow ``torch.nn.functional``'s names and signatures.
"""
from .activation import gelu, leaky_relu, log_softmax, relu, relu6, sigmoid, softmax, tanh
from .arith import abs, add, astype, clip, div, exp, log, matmul, mul, neg, pow, sqrt, sub, where
from .linear import linear
from .loss import binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss
from .reduce import max, mean, min, sum, var
from .shape import concatenate, flatten, getitem, pad, reshape, squeeze, stack, transpose, unsqueeze
from .norm import batch_norm, group_norm, instance_norm, layer_norm
from .dropout import dropout, dropout2d
from .conv import conv2d
from .pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d

from ..tensor import Tensor as _Tensor  # noqa: E402


def _attach_tensor_methods():
    """Tensor's arithmetic operators and array methods, each dispatching to its op here."""
    methods = {
        "__add__": lambda a, b: add(a, b), "__radd__": lambda a, b: add(b, a),
        "__sub__": lambda a, b: sub(a, b), "__rsub__": lambda a, b: sub(b, a),
        "__mul__": lambda a, b: mul(a, b), "__rmul__": lambda a, b: mul(b, a),
        "__truediv__": lambda a, b: div(a, b), "__rtruediv__": lambda a, b: div(b, a),
        "__pow__": lambda a, b: pow(a, b), "__rpow__": lambda a, b: pow(b, a),
        "__matmul__": lambda a, b: matmul(a, b), "__rmatmul__": lambda a, b: matmul(b, a),
        "__neg__": neg, "__getitem__": getitem,
        "sum": sum, "mean": mean, "max": max, "min": min, "var": var, "reshape": reshape,
        "transpose": transpose, "permute": transpose, "flatten": flatten, "squeeze": squeeze,
        "unsqueeze": unsqueeze, "pad": pad, "exp": exp, "log": log, "sqrt": sqrt, "abs": abs,
        "clip": clip, "astype": astype, "T": property(lambda t: transpose(t)),
    }
    for name, fn in methods.items():
        setattr(_Tensor, name, fn)


_attach_tensor_methods()

