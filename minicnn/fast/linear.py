"""Large linear layers on two workers: BLAS runs single-threaded (``minicnn.fast.runtime``),
so a large layer's forward GEMM runs as two halves of its outputs side by side, and its
input- and weight-gradient GEMMs run side by side.  Same function as
``minicnn.ops.linear.Linear``; small layers keep the reference.
"""
import numpy as np

from ..ops import dispatch
from ..ops.linear import Linear as ReferenceLinear
from .runtime import parallel_for

MIN_PARALLEL = 1 << 20   # multiply-adds per GEMM below which the reference (one GEMM each) runs


class Linear(ReferenceLinear):
    """``minicnn.ops.linear.Linear`` with large GEMMs on the two workers."""
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] * w.size >= MIN_PARALLEL and w.shape[0] >= 2:
            # Halves of the output features on two workers, each a single-threaded GEMM
            # (halves of the batch read all of W twice: docs/performance.md, "Linear layers").
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

        # BLAS runs single-threaded (see minicnn.fast.runtime), so large dx and dW GEMMs run
        # on two workers side by side, which beat slicing one GEMM (docs/performance.md).
        if g2.shape[0] * w.size >= MIN_PARALLEL:
            parallel_for(len(wanted), task)
        else:
            for k in range(len(wanted)):
                task(k)
        gb = g2.sum(axis=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grads[0], grads[1], gb


def _choose(key, route):
    rows, out_features, in_features = key
    return Linear if route == "halves" or rows * out_features * in_features >= MIN_PARALLEL else None


dispatch.register("linear", _choose, ("halves",))
