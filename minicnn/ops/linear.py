"""Fully connected layer as one Function."""
import numpy as np

from ..tensor import Function


class Linear(Function):
    """y = x Wᵀ + b.   x (..., in), W (out, in), b (out,) -> y (..., out).

    dL/dx = g W,   dL/dW = gᵀ x (leading axes flattened),   dL/db = Σ g.
    """
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        y = x @ w.T
        if b is not None:
            y += b
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g @ w) if ctx.needs_input_grad[0] else None
        gw = (g2.T @ x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        gb = g2.sum(axis=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x, weight, bias=None):
    """y = x Wᵀ + b, as ``torch.nn.functional.linear``."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features on its last axis, "
                         f"weight {tuple(weight.shape)} expects {weight.shape[1]}")
    return Linear.apply(x, weight, bias)
