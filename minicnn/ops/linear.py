"""Fully connected layer as one Function."""
import numpy as np

from .._runtime import parallel_for
from ..tensor import Function
from .checks import check_array, check_dtypes

MIN_PARALLEL = 1 << 20   # multiply-adds per GEMM below which the GEMMs run in turn, unsplit


class Linear(Function):
    """y = x Wᵀ + b.   x (..., in), W (out, in), b (out,) -> y (..., out).

    dL/dx = g W,   dL/dW = gᵀ x (leading axes flattened),   dL/db = Σ g.
    """
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] * w.size >= MIN_PARALLEL and w.shape[0] >= 2:
            # Halves of the output features on two workers, each a single-threaded GEMM
            # (Fashion-MNIST CNN's 3136->128, batch 64: 0.67 -> 0.43 ms; halves of the
            # batch instead, each reading all of W: 0.53 ms).
            halves = (slice(0, w.shape[0] // 2), slice(w.shape[0] // 2, None))
            parts = [None, None]

            def half(k):
                parts[k] = x2 @ w[halves[k]].T
            parallel_for(2, half)
            y = np.concatenate(parts, axis=1).reshape(x.shape[:-1] + (w.shape[0],))
        else:
            y = x @ w.T
        if b is not None:
            y += b
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        products = {0: lambda: g @ w, 1: lambda: g2.T @ x2}
        wanted = [i for i in (0, 1) if ctx.needs_input_grad[i]]
        grads = [None, None]

        def task(k):
            grads[wanted[k]] = products[wanted[k]]()

        # BLAS runs single-threaded (see minicnn._runtime), so large dx and dW GEMMs run
        # on two workers side by side.  Splitting one GEMM into row or column slices was
        # slower at the Fashion-MNIST CNN's 3136->128 (batch 64): 0.52 -> 0.58-0.65 ms for
        # dW; side by side, dx + dW took 1.17 -> 0.88 ms.
        if g2.shape[0] * w.size >= MIN_PARALLEL:
            parallel_for(len(wanted), task)
        else:
            for k in range(len(wanted)):
                task(k)
        gb = g2.sum(axis=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grads[0], grads[1], gb


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
    return Linear.apply(x, weight, bias)
