"""Fully connected layer as one Function."""
import numpy as np

from ..tensor import Function
from . import dispatch
from .checks import check_array, check_dtypes


class Linear(Function):
    """y = x Wᵀ + b.   x (..., in), W (out, in), b (out,) -> y (..., out).

    dL/dx = g W,   dL/dW = gᵀ x (leading axes flattened),   dL/db = Σ g.
    """
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        y = x @ w.T
        return y if b is None else y + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = g @ w if ctx.needs_input_grad[0] else None
        gw = g2.T @ x2 if ctx.needs_input_grad[1] else None
        gb = g2.sum(axis=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x, weight, bias=None):
    """y = x Wᵀ + b, as ``torch.nn.functional.linear``.  x, weight and bias share one dtype."""
    layer = "linear"
    check_array(x, layer)
    out, inp = weight.shape
    if x.ndim < 1:
        raise ValueError(f"{layer}: expected an input of shape (..., {inp}), got shape {tuple(x.shape)}")
    if x.shape[-1] != inp:
        raise ValueError(f"{layer}: input {tuple(x.shape)} has {x.shape[-1]} features on its last axis, "
                         f"weight {tuple(weight.shape)} expects {inp}")
    if bias is not None and tuple(bias.shape) != (out,):
        raise ValueError(f"{layer}: bias must have shape ({out},), got {tuple(bias.shape)}")
    check_dtypes(layer, x, weight=weight, bias=bias)
    rows = int(np.prod(x.shape[:-1]))
    return dispatch.implementation("linear", Linear, (rows,) + tuple(weight.shape)).apply(x, weight, bias)
