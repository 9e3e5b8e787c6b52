"""Normalization: batch, instance, group and layer norm, each one Function with a fused backward.

All four compute  x̂ = (x - μ)/σ,  σ = √(var + eps),  y = w·x̂ + b,  with the
biased variance var = Σ(x - μ)²/n over a group of n elements; they differ in
the group (x is (N, C, *), S = prod(*)):

    batch_norm     per channel c, over N and *        n = N·S     (or fixed running stats)
    instance_norm  per (sample, channel), over *      n = S
    group_norm     per (sample, group), over C/G channels and *    n = (C/G)·S
    layer_norm     per leading index, over the trailing normalized_shape

w and b are per channel (C,) for the first three and elementwise
(normalized_shape) for layer_norm.  With g = dL/dy and means over the group:

    dL/dx̂ = g·w
    dL/dx = (1/σ)·(dL/dx̂ - mean(dL/dx̂) - x̂·mean(dL/dx̂·x̂))    batch statistics
    dL/dx = (1/σ)·dL/dx̂                                         fixed (running) statistics
    dL/dw = Σ g·x̂,   dL/db = Σ g                                 over every axis but w's

Computation.  x is viewed as rows of a (R, L) matrix (R = N·C rows of L = S for
the channel norms, one row per sample for layer_norm).  The kernels in
``minicnn.kernels.norm`` take each row's moments in one pass; the rows are then
pooled into groups (Chan's formula, exact in float64):

    μ = mean over rows of μ_r,   M2 = Σ M2_r + L·Σ (μ_r - μ)²,   var = M2 / n

The backward takes Σg and Σg·(x - μ) per row in one pass, turns them into
per-row coefficients, and writes dL/dx = α·g + β·(x - μ) + γ in a second pass.
Statistics and coefficients are float64; y and dL/dx keep x's dtype.

Epilogue (``batch_norm(..., residual=r, relu=True)``, a ResNet block's end):
out = ReLU(y + r) in the normalizing pass itself.  The backward masks g by
[out > 0] first; that masked g is also dL/dr, and goes on through the formulas above.
"""
import numpy as np

from ..kernels.norm import (col_sums, grad_cols, grad_rows, normalize_cols, normalize_rows, row_grad_sums,
                            row_moments)
from ..tensor import Function
from ._util import EMPTY, nhwc, raw
from .activation import CLAMPS, relu_grad


# Row slices of the channels-last (column) kernels: fixed, so the bits do not depend on the thread count.
_COL_SLICES = 16


def _row_stats(rows, columns=False):
    """Mean and M2 = Σ(x - mean)² of each row of a contiguous (R, L) array, or with
    ``columns`` of each column of a (P, C) one; float64."""
    if columns:
        shift = rows[0].astype(np.float64)        # the shifted-data algorithm, as row_moments
        s = np.empty((min(_COL_SLICES, rows.shape[0]), rows.shape[1]))
        ss = np.empty_like(s)
        col_sums(rows, shift, rows, shift, s, ss)
        s, ss = s.sum(axis=0), ss.sum(axis=0)
        return shift + s / rows.shape[0], np.maximum(ss - s * s / rows.shape[0], 0.0)
    mean = np.empty(rows.shape[0])
    m2 = np.empty(rows.shape[0])
    row_moments(rows, mean, m2)
    return mean, m2


def _row_sums(g_rows, rows, mean_r, columns=False):
    """Σg and Σg·(x - mean_r) of each row (or with ``columns``, each column), float64."""
    if columns:
        sg = np.empty((min(_COL_SLICES, rows.shape[0]), rows.shape[1]))
        sgx = np.empty_like(sg)
        col_sums(g_rows, np.zeros(rows.shape[1]), rows, mean_r, sg, sgx)
        return sg.sum(axis=0), sgx.sum(axis=0)
    sg = np.empty(rows.shape[0])
    sgx = np.empty(rows.shape[0])
    row_grad_sums(g_rows, rows, mean_r, sg, sgx)
    return sg, sgx


def _per_row(a, shape):
    """Broadcast a small per-group array to ``shape`` and flatten it to one float64 value per row."""
    return np.ascontiguousarray(np.broadcast_to(a, shape), dtype=np.float64).reshape(-1)


def _normalize(rows, mean_r, scale_r, shift_r, dtype, columns=False, res=None, relu=False):
    """(x - μ_r)·scale_r + shift_r per row (or column), plus ``res`` (rows' shape) if given,
    through ReLU if ``relu``; as a new array of ``dtype``."""
    out = np.empty(rows.shape, dtype)
    res = EMPTY[np.dtype(dtype)][2] if res is None else res
    (normalize_cols if columns else normalize_rows)(rows, mean_r, scale_r, shift_r, res,
                                                    *CLAMPS["relu" if relu else None], out)
    return out


def _input_grad(g_rows, rows, mean_r, alpha, beta, gamma, columns=False):
    """dL/dx = α·g + β·(x - μ) + γ per row (or column), in x's dtype."""
    gx = np.empty(rows.shape, np.result_type(g_rows, rows))
    (grad_cols if columns else grad_rows)(g_rows, rows, mean_r, alpha, beta, gamma, gx)
    return gx


def _as_rows(a, shape, columns):
    """An (N, C, *) array as the kernels' contiguous (R, L) rows, or with ``columns`` as
    the (N·H·W, C) columns of its NHWC memory (no copy if it is channels-last)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1) if columns else a).reshape(shape)


def _from_rows(a, shape, columns):
    """The adjoint view of _as_rows: rows (or columns) back to the (N, C, *) ``shape``."""
    if columns:
        return a.reshape(shape[0], *shape[2:], shape[1]).transpose(0, 3, 1, 2)
    return a.reshape(shape)


class ChannelNorm(Function):
    """Batch, instance and group norm: per-channel affine, statistics over groups of rows.

    x (N, C, *) is viewed as rows (N, C, S), and the channels as (G, K), K = C/G:

        over_batch=True   statistics per group g over (N, K, S)     batch norm (G = C)
        over_batch=False  statistics per (n, g) over (K, S)        group norm; instance norm is G = C

    weight, bias: (C,) or None.  stats=(mean, var), each (C,): fixed statistics
    (eval-mode batch norm) instead of the batch's.  residual (x's shape) or None,
    relu: the output is ReLU(y + residual) in the same pass (a ResNet block's
    BN -> add -> ReLU; gradients: g·[out > 0] to y and to the residual).  running=(running_mean,
    running_var, momentum): the per-channel running estimates are updated in
    place, r ← (1 - momentum)·r + momentum·batch, with the unbiased variance
    var·n/(n - 1) (instance norm averages its per-sample statistics over N first).
    """
    @staticmethod
    def forward(ctx, x, weight, bias, residual=None, groups=1, over_batch=False, eps=1e-5, stats=None,
                running=None, relu=False):
        N, C = x.shape[:2]
        K = C // groups
        # Batch norm of a channels-last x (see ops._util.nhwc) works on its memory as
        # columns (N·H·W, C): one "row" of N·H·W values per channel, grid (1, C, 1).
        columns = over_batch and K == 1 and not x.flags.c_contiguous and nhwc(x) is not None
        if columns:
            grid = (1, C, 1)
            rows = nhwc(x).reshape(-1, C)
            L = rows.shape[0]
        else:
            grid = (N, groups, K)
            rows = np.ascontiguousarray(x).reshape(N * C, -1)
            L = rows.shape[1]
        if stats is None:
            axes = (0, 2) if over_batch else (2,)
            mean_r, m2_r = (a.reshape(grid) for a in _row_stats(rows, columns))
            mean = mean_r.mean(axis=axes, keepdims=True)
            m2 = m2_r.sum(axis=axes, keepdims=True) + L * ((mean_r - mean) ** 2).sum(axis=axes, keepdims=True)
            n = L * int(np.prod([grid[a] for a in axes]))
            var = m2 / n
            if running is not None:
                running_mean, running_var, momentum = running
                unbiased = var * (n / (n - 1)) if n > 1 else var
                running_mean *= 1 - momentum
                running_mean += momentum * mean.mean(axis=0).reshape(C)
                running_var *= 1 - momentum
                running_var += momentum * unbiased.mean(axis=0).reshape(C)
            ctx.axes, ctx.n = axes, n
        else:
            mean = np.asarray(stats[0], np.float64).reshape(1, groups, K)
            var = np.asarray(stats[1], np.float64).reshape(1, groups, K)
            ctx.axes = None
        rstd = 1 / np.sqrt(var + eps)
        w = 1.0 if weight is None else weight.reshape(1, groups, K)
        mean_r = _per_row(mean, grid)
        res = None if residual is None else _as_rows(residual, rows.shape, columns)
        y = _normalize(rows, mean_r, _per_row(w * rstd, grid),
                       _per_row(0.0 if bias is None else bias.reshape(1, groups, K), grid), x.dtype, columns,
                       res, relu)
        ctx.save_for_backward(rows, mean_r, rstd, weight, y if relu else None)
        ctx.shape, ctx.grid, ctx.columns = x.shape, grid, columns
        ctx.bias_dtype = None if bias is None else bias.dtype
        return _from_rows(y, x.shape, columns)

    @staticmethod
    def backward(ctx, g):
        rows, mean_r, rstd, weight, y = ctx.saved
        grid, columns = ctx.grid, ctx.columns
        g_rows = _as_rows(g, rows.shape, columns)
        if y is not None:                                   # fused ReLU: its gradient first
            g_rows = relu_grad(g_rows, y)
        g_res = _from_rows(g_rows, ctx.shape, columns) if ctx.needs_input_grad[3:] == (True,) else None
        sg, sgx = (a.reshape(grid) for a in _row_sums(g_rows, rows, mean_r, columns))
        sgxhat = sgx * rstd                                 # Σ g·x̂ per row
        C = grid[1] * grid[2]
        gw = gb = gx = None
        if weight is not None and ctx.needs_input_grad[1]:
            gw = sgxhat.sum(axis=0).reshape(C).astype(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            gb = sg.sum(axis=0).reshape(C).astype(ctx.bias_dtype)
        if ctx.needs_input_grad[0]:
            w = 1.0 if weight is None else weight.reshape(1, grid[1], grid[2])
            beta = gamma = 0.0
            if ctx.axes is not None:
                mean_gxhat = (w * sg).sum(axis=ctx.axes, keepdims=True) / ctx.n
                mean_gxhat_xhat = (w * sgxhat).sum(axis=ctx.axes, keepdims=True) / ctx.n
                beta = -rstd * rstd * mean_gxhat_xhat
                gamma = -rstd * mean_gxhat
            gx = _from_rows(_input_grad(g_rows, rows, mean_r, _per_row(w * rstd, grid),
                                        _per_row(beta, grid), _per_row(gamma, grid), columns), ctx.shape, columns)
        return gx, gw, gb, g_res


class LayerNorm(Function):
    """Layer norm over the last ``ndim`` axes, with an elementwise affine of those axes' shape.

    x (..., *S) is viewed as rows (R, prod(S)); weight, bias: S or None.
    """
    @staticmethod
    def forward(ctx, x, weight, bias, ndim=1, eps=1e-5):
        norm_shape = x.shape[x.ndim - ndim:]
        rows = np.ascontiguousarray(x).reshape(-1, int(np.prod(norm_shape)))
        mean_r, m2_r = _row_stats(rows)
        rstd = 1 / np.sqrt(m2_r / rows.shape[1] + eps)
        y = _normalize(rows, mean_r, rstd, np.zeros_like(rstd), x.dtype)
        if weight is not None:
            y *= weight.reshape(-1)
        if bias is not None:
            y += bias.reshape(-1)
        ctx.save_for_backward(rows, mean_r, rstd, weight)
        ctx.shape, ctx.norm_shape = x.shape, norm_shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        rows, mean_r, rstd, weight = ctx.saved
        L = rows.shape[1]
        g_rows = np.ascontiguousarray(g).reshape(rows.shape)
        gw = gb = gx = None
        if weight is not None and ctx.needs_input_grad[1]:
            xhat = _normalize(rows, mean_r, rstd, np.zeros_like(rstd), g_rows.dtype)  # not kept from forward
            gw = np.einsum("rl,rl->l", g_rows, xhat).reshape(ctx.norm_shape).astype(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            gb = g_rows.sum(axis=0).reshape(ctx.norm_shape).astype(ctx.bias_dtype)
        if ctx.needs_input_grad[0]:
            g_xhat = g_rows if weight is None else g_rows * weight.reshape(-1)
            sg, sgx = _row_sums(g_xhat, rows, mean_r)
            beta = -rstd * rstd * (sgx * rstd) / L
            gx = _input_grad(g_xhat, rows, mean_r, rstd, beta, -rstd * sg / L).reshape(ctx.shape)
        return gx, gw, gb


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


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, residual=None, relu=False):
    """Batch norm of ``input`` (N, C, *), as ``torch.nn.functional.batch_norm``.

    training=True: normalize with the batch's statistics per channel (biased
    variance) and, if running_mean/running_var (ndarrays (C,)) are given, update
    them in place with ``momentum`` (unbiased variance).  training=False:
    normalize with running_mean/running_var.  weight, bias: (C,) or None.

    A minicnn extension fuses what a ResNet does next: ``residual`` (input's shape
    and dtype) is added and ``relu=True`` applies ReLU, relu(bn(x) + residual), in
    the normalizing pass itself.  Same values (rounded once instead of two or three
    times) and the same gradients as the separate ops, with two to four fewer passes
    over the activation in the forward pass.
    """
    C = _channels("batch_norm", input)
    _check_running("batch_norm", running_mean, running_var, C)
    _check_shape("batch_norm", "weight", weight, (C,))
    _check_shape("batch_norm", "bias", bias, (C,))
    _check_shape("batch_norm", "residual", residual, input.shape)
    if residual is not None and residual.dtype != input.dtype:
        raise TypeError(f"batch_norm: residual dtype {residual.dtype} differs from input dtype {input.dtype}")
    fused = dict(groups=C, over_batch=True, eps=eps, relu=bool(relu))
    if training:
        if input.size // max(C, 1) <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                             f"got input shape {tuple(input.shape)}")
        running = None if running_mean is None else (raw(running_mean), raw(running_var), momentum)
        return ChannelNorm.apply(input, weight, bias, residual, running=running, **fused)
    if running_mean is None:
        raise ValueError("batch_norm: running_mean and running_var are needed when training=False")
    return ChannelNorm.apply(input, weight, bias, residual, stats=(raw(running_mean), raw(running_var)), **fused)


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
        if input.size // max(input.shape[0] * C, 1) <= 1:
            raise ValueError(f"instance_norm: expected more than 1 spatial element per channel, "
                             f"got input shape {tuple(input.shape)}")
        running = None if running_mean is None else (raw(running_mean), raw(running_var), momentum)
        return ChannelNorm.apply(input, weight, bias, groups=C, over_batch=False, eps=eps, running=running)
    if running_mean is None:
        raise ValueError("instance_norm: running_mean and running_var are needed when use_input_stats=False")
    return ChannelNorm.apply(input, weight, bias, groups=C, over_batch=True, eps=eps,
                             stats=(raw(running_mean), raw(running_var)))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Group norm of ``input`` (N, C, *) with ``num_groups`` groups of C/num_groups
    channels, as ``torch.nn.functional.group_norm``.  weight, bias: (C,) or None."""
    C = _channels("group_norm", input)
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: num_groups={num_groups!r} must be a positive int dividing "
                         f"the {C} channels of the input of shape {tuple(input.shape)}")
    _check_shape("group_norm", "weight", weight, (C,))
    _check_shape("group_norm", "bias", bias, (C,))
    return ChannelNorm.apply(input, weight, bias, groups=int(num_groups), over_batch=False, eps=eps)


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
    return LayerNorm.apply(input, weight, bias, ndim=k, eps=eps)
