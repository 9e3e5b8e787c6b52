"""SyncBatchNorm: batch norm whose batch statistics cover every rank's share of the batch.

With plain BatchNorm2d each rank normalizes its B/N images with their own mean
and variance, so N ranks do not train as one process with batch B.  Here, per
channel over the images of all ranks (n values in all),

    forward:   (count, mean, M2) of each rank gathered and pooled (Chan's formula,
               in rank order, float64), var = M2/n;  x̂ = (x - μ)/σ,  y = w·x̂ + b
    backward:  Σg and Σg·x̂ summed over the ranks;
               dL/dx = (w/σ)·(g - Σg/n - x̂·Σg·x̂/n)

Each rank's g is the gradient of its own mean loss, N times its share of the
global one, and DistributedOptimizer divides the summed weight gradients by N:
together this is exactly the single-process gradient.  The running statistics
are updated from the global ones (unbiased variance n/(n - 1)), so they are
equal on every rank.  Eval mode uses them as BatchNorm2d does, without
communication.  Run such a model unfused: ``minicnn.nn.fuse`` runs batch norms
through its own fused kernel, which knows nothing of the other ranks.

    model = convert_sync_batchnorm(model)   # every BatchNorm2d, weights and buffers kept
"""
import numpy as np

from ..nn import BatchNorm2d
from ..tensor import Function
from .comm import allsum, world


def _channels_first(a):
    """(N, C, *) -> (C, N·prod(*)) float64."""
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).astype(np.float64)


def _per_channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _global_moments(x):
    """Per channel (n, mean, var) over the x of every rank, the same bits on every rank."""
    rows = _channels_first(x)
    m = rows.shape[1]
    mean = rows.mean(axis=1)
    m2 = ((rows - mean[:, None]) ** 2).sum(axis=1)
    gathered = world().allgather((m, mean, m2))
    n, mu, M2 = 0, np.zeros_like(mean), np.zeros_like(m2)
    for m_r, mean_r, m2_r in gathered:        # Chan et al.: pooling two groups' moments
        if m_r == 0:
            continue
        total = n + m_r
        delta = mean_r - mu
        mu = mu + delta * (m_r / total)
        M2 = M2 + m2_r + delta * delta * (n * m_r / total)
        n = total
    return n, mu, M2 / n


class SyncBatchNormFunction(Function):
    """w·(x - μ)/σ + b with μ, σ over every rank; see the module docstring.
    running=(running_mean, running_var, momentum) are updated in place."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5, running=None):
        n, mean, var = _global_moments(x)
        if n <= 1:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel over all ranks, "
                             f"got {n} (input shape here {tuple(x.shape)})")
        if running is not None:
            running_mean, running_var, momentum = running
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * var * (n / (n - 1))
        rstd = 1 / np.sqrt(var + eps)
        xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(rstd, x.ndim)
        w = np.ones_like(mean) if weight is None else weight.astype(np.float64)
        y = xhat * _per_channel(w, x.ndim)
        if bias is not None:
            y += _per_channel(bias.astype(np.float64), x.ndim)
        ctx.save_for_backward(xhat, rstd, w)
        ctx.n, ctx.has_weight, ctx.has_bias = n, weight is not None, bias is not None
        return y.astype(x.dtype)

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, w = ctx.saved
        g64 = _channels_first(g)
        local = np.stack([g64.sum(axis=1), (g64 * _channels_first(xhat)).sum(axis=1)])
        gw = local[1].astype(g.dtype) if ctx.has_weight and ctx.needs_input_grad[1] else None
        gb = local[0].astype(g.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        gx = None
        if ctx.needs_input_grad[0]:
            sg, sgx = allsum(local)
            gx = _per_channel(w * rstd, g.ndim) * (g - _per_channel(sg / ctx.n, g.ndim)
                                                   - xhat * _per_channel(sgx / ctx.n, g.ndim))
            gx = gx.astype(g.dtype)
        return gx, gw, gb


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are taken over the batch of every rank.

    Same arguments, parameters, buffers and state dict as :class:`minicnn.nn.BatchNorm2d`
    (so checkpoints load into either); in eval mode it is a BatchNorm2d (running
    statistics, no communication).  Every rank must call it the same number of times
    (each training-mode call is a collective).  Input (N, C, *); N may differ per rank.
    """

    def forward(self, x):
        if not (self.training or not self.track_running_stats):
            return super().forward(x)
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm({self.num_features}): expected input (N, {self.num_features}, *), "
                             f"got shape {tuple(x.shape)}")
        running = None
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            running = (self.running_mean, self.running_var, momentum)
        return SyncBatchNormFunction.apply(x, self.weight, self.bias, eps=self.eps, running=running)


def convert_sync_batchnorm(module):
    """Replace every BatchNorm2d in ``module`` (itself included) by a SyncBatchNorm that keeps
    its Parameter objects, buffers and mode; returns the (possibly new) top module.
    Convert before building the optimizer, or pass the same parameters: they are kept."""
    if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        for name, p in module.named_parameters():
            setattr(sync, name, p)
        for name, b in module.named_buffers():
            setattr(sync, name, b)
        sync.train(module.training)
        return sync
    for name, child in list(module.named_children()):
        new = convert_sync_batchnorm(child)
        if new is not child:
            module.add_module(name, new)
    return module

