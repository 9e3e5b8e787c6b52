"""Normalization: batch, instance, group and layer norm: the reference.

All four normalize x by the mean μ and the biased variance var of a group of n
of its elements, then apply an affine map:

    x̂ = (x - μ) / σ,   σ = √(var + eps),   var = Σ (x - μ)² / n,   y = w·x̂ + b

They differ only in the group (x is (N, C, *)):

    BatchNorm     per channel, over N and *                 w, b: (C,)
    InstanceNorm  per (sample, channel), over *             w, b: (C,)
    GroupNorm     per (sample, group of C/G channels), over those channels and *
    LayerNorm     per leading index, over the trailing `ndim` axes   w, b: their shape

Backward, with g = dL/dy and the means taken over the same group as μ:

    dL/dx̂ = g·w
    dL/dx  = (1/σ)·(dL/dx̂ - mean(dL/dx̂) - x̂·mean(dL/dx̂·x̂))
    dL/dw  = Σ g·x̂,   dL/db = Σ g          (over every axis w is broadcast along)

(Differentiate x̂ = (x - μ)/σ through μ and σ, which depend on every x of the
group: the two mean terms are what μ and σ pass back.)  With fixed statistics
(eval-mode batch norm), μ and σ are constants and dL/dx = dL/dx̂ / σ.

Running statistics (batch and instance norm): r ← (1 - momentum)·r + momentum·batch,
with the unbiased variance var·n/(n - 1), updated in place in r's own dtype.
Statistics are computed in float64; y and dL/dx keep x's dtype.  ``minicnn.fast.norm``
runs the same Functions on Numba kernels (two passes over memory per direction).
"""
import numpy as np

from ..tensor import Function
from . import dispatch
from .util import raw


def moments(x, axes):
    """Mean and biased variance of x over `axes`, float64, keeping the reduced axes."""
    x = x.astype(np.float64)
    return x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)


def normalize(x, mean, var, eps):
    """x̂ = (x - μ)/σ and σ = √(var + eps), float64."""
    std = np.sqrt(var + eps)
    return (x.astype(np.float64) - mean) / std, std


def normalize_backward(g_xhat, xhat, std, axes):
    """dL/dx from dL/dx̂ when μ, σ are x's own statistics over `axes`:
    (1/σ)·(dL/dx̂ - mean(dL/dx̂) - x̂·mean(dL/dx̂·x̂)).  axes None: fixed statistics, dL/dx̂ / σ."""
    if axes is None:
        return g_xhat / std
    mean_g = g_xhat.mean(axis=axes, keepdims=True)
    mean_gx = (g_xhat * xhat).mean(axis=axes, keepdims=True)
    return (g_xhat - mean_g - xhat * mean_gx) / std


def update_running(running, stat, momentum):
    """running ← (1 - momentum)·running + momentum·stat, in place, in running's dtype."""
    running[...] = (1 - momentum) * running + momentum * stat.reshape(running.shape)


class _Norm(Function):
    """What the four norms share: y = w·x̂ + b and the backward of the module docstring.

    A subclass's forward picks the statistics and calls _affine with
      stat_shape  a reshape of x in which the statistics are taken over `axes`
                  (GroupNorm: (N, G, rest); the others: x's own shape);
      axes        those axes, or None for fixed statistics;
      w_shape     how w and b broadcast against x (BatchNorm: (1, C, 1, 1)).
    """

    @staticmethod
    def _affine(ctx, x, weight, bias, mean, var, eps, stat_shape, axes, w_shape):
        xhat, std = normalize(x.reshape(stat_shape), mean, var, eps)
        xhat = xhat.reshape(x.shape)
        y = xhat if weight is None else xhat * weight.reshape(w_shape)
        if bias is not None:
            y = y + bias.reshape(w_shape)
        ctx.save_for_backward(xhat, std, weight, bias)
        ctx.shapes, ctx.axes, ctx.x_dtype = (stat_shape, w_shape), axes, x.dtype
        return y.astype(x.dtype)

    @staticmethod
    def backward(ctx, g):
        xhat, std, weight, bias = ctx.saved
        stat_shape, w_shape = ctx.shapes
        g = g.astype(np.float64)
        over = tuple(a for a, n in enumerate(w_shape) if n == 1)   # the axes w is broadcast along
        gx = gw = gb = None
        if weight is not None and ctx.needs_input_grad[1]:
            gw = (g * xhat).sum(axis=over).reshape(weight.shape).astype(weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            gb = g.sum(axis=over).reshape(bias.shape).astype(bias.dtype)
        if ctx.needs_input_grad[0]:
            g_xhat = g if weight is None else g * weight.reshape(w_shape)
            gx = normalize_backward(g_xhat.reshape(stat_shape), xhat.reshape(stat_shape), std, ctx.axes)
            gx = gx.reshape(g.shape).astype(ctx.x_dtype)
        return gx, gw, gb


def _channel_shape(x):
    """(1, C, 1, ..., 1): how a per-channel array broadcasts against x (N, C, *)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


class BatchNorm(_Norm):
    """Batch norm of x (N, C, *): statistics per channel over N and *, or (training=False)
    the running ones.  weight, bias: (C,) or None; running_mean, running_var: (C,) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean=None, running_var=None, training=True,
                momentum=0.1, eps=1e-5):
        c_shape = _channel_shape(x)
        if training:
            axes = tuple(a for a in range(x.ndim) if a != 1)
            mean, var = moments(x, axes)
            if running_mean is not None:
                n = x.size // x.shape[1]
                update_running(running_mean, mean, momentum)
                update_running(running_var, var * n / (n - 1), momentum)
        else:
            axes = None
            mean, var = (np.asarray(r, np.float64).reshape(c_shape) for r in (running_mean, running_var))
        return _Norm._affine(ctx, x, weight, bias, mean, var, eps, x.shape, axes, c_shape)


class InstanceNorm(_Norm):
    """Instance norm of x (N, C, *): statistics per (sample, channel) over *, or
    (use_input_stats=False) the running ones.  The running statistics are updated
    with the per-sample statistics averaged over N, as PyTorch."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean=None, running_var=None, use_input_stats=True,
                momentum=0.1, eps=1e-5):
        c_shape = _channel_shape(x)
        if use_input_stats:
            axes = tuple(range(2, x.ndim))
            mean, var = moments(x, axes)                       # (N, C, 1, ...)
            if running_mean is not None:
                n = x[0, 0].size
                update_running(running_mean, mean.mean(axis=0), momentum)
                update_running(running_var, (var * n / (n - 1)).mean(axis=0), momentum)
        else:
            axes = None
            mean, var = (np.asarray(r, np.float64).reshape(c_shape) for r in (running_mean, running_var))
        return _Norm._affine(ctx, x, weight, bias, mean, var, eps, x.shape, axes, c_shape)


class GroupNorm(_Norm):
    """Group norm of x (N, C, *): statistics per sample and group of C/num_groups
    consecutive channels, over those channels and *.  weight, bias: (C,) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps=1e-5):
        stat_shape = (x.shape[0], num_groups, int(np.prod(x.shape[1:])) // num_groups)   # (N, G, C/G · prod(*))
        mean, var = moments(x.reshape(stat_shape), (2,))
        return _Norm._affine(ctx, x, weight, bias, mean, var, eps, stat_shape, (2,), _channel_shape(x))


class LayerNorm(_Norm):
    """Layer norm of x over its trailing `ndim` axes; weight, bias: the shape of those
    axes, or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, ndim, eps=1e-5):
        lead = x.ndim - ndim
        axes = tuple(range(lead, x.ndim))
        mean, var = moments(x, axes)
        w_shape = (1,) * lead + x.shape[lead:]
        return _Norm._affine(ctx, x, weight, bias, mean, var, eps, x.shape, axes, w_shape)


def _channels(name, x, min_ndim=2):
    """C of an (N, C, *) input, with a clear error for too few axes."""
    if x.ndim < min_ndim:
        raise ValueError(f"{name}: expected an input of shape (N, C, *) with at least {min_ndim} "
                         f"dimensions, got shape {tuple(x.shape)}")
    return x.shape[1]


def _check_shape(name, what, a, shape):
    if a is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} has shape {tuple(a.shape)}, expected {tuple(shape)}")


def _check_running(name, running_mean, running_var, C):
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    _check_shape(name, "running_mean", running_mean, (C,))
    _check_shape(name, "running_var", running_var, (C,))


def check_batch_norm(input, running_mean, running_var, weight, bias, training, name="batch_norm"):
    """Check batch norm's arguments (clear errors naming ``name``); returns C."""
    C = _channels(name, input)
    _check_running(name, running_mean, running_var, C)
    _check_shape(name, "weight", weight, (C,))
    _check_shape(name, "bias", bias, (C,))
    if training and input.size // max(C, 1) <= 1:
        raise ValueError(f"{name}: expected more than 1 value per channel when training, "
                         f"got input shape {tuple(input.shape)}")
    if not training and running_mean is None:
        raise ValueError(f"{name}: running_mean and running_var are needed when training=False")
    return C


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch norm of ``input`` (N, C, *), as ``torch.nn.functional.batch_norm``.

    training=True: normalize with the batch's statistics per channel (biased
    variance) and, if running_mean/running_var (ndarrays (C,)) are given, update
    them in place with ``momentum`` (unbiased variance).  training=False:
    normalize with running_mean/running_var.  weight, bias: (C,) or None.
    """
    check_batch_norm(input, running_mean, running_var, weight, bias, training)
    return _run("batch_norm", BatchNorm, input, weight, bias, running_mean=raw(running_mean),
                running_var=raw(running_var), training=bool(training), momentum=momentum, eps=eps)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Instance norm of ``input`` (N, C, *), as ``torch.nn.functional.instance_norm``.

    use_input_stats=True: statistics per (sample, channel) over the spatial
    axes; running_mean/running_var, if given, are updated in place with the
    per-sample statistics averaged over N.  use_input_stats=False: normalize
    with running_mean/running_var.
    """
    C = _channels("instance_norm", input, min_ndim=3)
    _check_running("instance_norm", running_mean, running_var, C)
    _check_shape("instance_norm", "weight", weight, (C,))
    _check_shape("instance_norm", "bias", bias, (C,))
    if use_input_stats:
        if int(np.prod(input.shape[2:])) <= 1:
            raise ValueError(f"instance_norm: expected more than 1 spatial element per channel, "
                             f"got input shape {tuple(input.shape)}")
    elif running_mean is None:
        raise ValueError("instance_norm: running_mean and running_var are needed when use_input_stats=False")
    return _run("instance_norm", InstanceNorm, input, weight, bias, running_mean=raw(running_mean),
                running_var=raw(running_var), use_input_stats=bool(use_input_stats), momentum=momentum, eps=eps)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Group norm of ``input`` (N, C, *) with ``num_groups`` groups of C/num_groups
    channels, as ``torch.nn.functional.group_norm``.  weight, bias: (C,) or None."""
    C = _channels("group_norm", input)
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: num_groups={num_groups!r} must be a positive int dividing "
                         f"the {C} channels of the input of shape {tuple(input.shape)}")
    _check_shape("group_norm", "weight", weight, (C,))
    _check_shape("group_norm", "bias", bias, (C,))
    return _run("group_norm", GroupNorm, input, weight, bias, num_groups=int(num_groups), eps=eps)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer norm over the trailing ``normalized_shape`` axes of ``input``, as
    ``torch.nn.functional.layer_norm``.  weight, bias: ``normalized_shape`` or None."""
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.ndim < k or tuple(input.shape[input.ndim - k:]) != shape:
        raise ValueError(f"layer_norm: normalized_shape={shape} must match the trailing axes of the "
                         f"input, got input shape {tuple(input.shape)}")
    _check_shape("layer_norm", "weight", weight, shape)
    _check_shape("layer_norm", "bias", bias, shape)
    return _run("layer_norm", LayerNorm, input, weight, bias, ndim=k, eps=eps)


def _run(op, reference, x, weight, bias, **options):
    return dispatch.implementation(op, reference, None).apply(x, weight, bias, **options)
