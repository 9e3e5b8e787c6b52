"""Fast normalization: batch, instance, group and layer norm on Numba kernels.

The reference and its formulas are ``minicnn.ops.norm``; this module registers, for
each norm, a Function with the reference's signature that computes the same values
in two passes over memory per direction, and the fused batch norm + residual + ReLU
that ``minicnn.nn.fuse`` uses.  All four compute  x̂ = (x - μ)/σ,  σ = √(var + eps),  y = w·x̂ + b,  with the
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
``minicnn.fast.kernels.norm`` take each row's moments in one pass; the rows are then
pooled into groups (Chan's formula, exact in float64):

    μ = mean over rows of μ_r,   M2 = Σ M2_r + L·Σ (μ_r - μ)²,   var = M2 / n

The backward takes Σg and Σg·(x - μ) per row in one pass, turns them into
per-row coefficients, and writes dL/dx = α·g + β·(x - μ) + γ in a second pass.
Statistics and coefficients are float64; y and dL/dx keep x's dtype.

Epilogue (:func:`batch_norm_fused` with ``residual=r, relu=True``, a ResNet block's end):
out = ReLU(y + r) in the normalizing pass itself.  The backward masks g by
[out > 0] first; that masked g is also dL/dr, and goes on through the formulas above.
"""
import numpy as np

from ..ops import dispatch
from ..ops.norm import check_batch_norm
from ..ops.util import raw
from ..tensor import Function
from .kernels.norm import (CLAMPS, fold, grad_rows, grad_tiles, normalize_rows, normalize_tiles, row_grad_sums,
                           row_moments, tile, tile_sums)
from .layout import EMPTY, nhwc
from .runtime import configure


# Row slices of the channels-last (column) kernels: fixed, so the bits do not depend on the thread count.
_COL_SLICES = 16


def _row_stats(rows, columns=False):
    """Mean and M2 = Σ(x - mean)² of each row of a contiguous (R, L) array, or with
    ``columns`` of each column of a (P, C) one; float64."""
    if columns:
        P, C = rows.shape
        shift = tile(rows[0], C)        # the shifted-data algorithm, as row_moments
        s = np.empty((min(_COL_SLICES, P), shift.size))
        ss = np.empty_like(s)
        flat, none = rows.reshape(-1), EMPTY[rows.dtype][1]
        tile_sums(flat, shift, flat, shift, none, s, ss, none)
        s, ss = fold(s, C), fold(ss, C)
        return shift[:C] + s / P, np.maximum(ss - s * s / P, 0.0)
    mean = np.empty(rows.shape[0])
    m2 = np.empty(rows.shape[0])
    row_moments(rows, mean, m2)
    return mean, m2


def _row_sums(g_rows, rows, mean_r, columns=False, mask=None, keep=False):
    """Σv and Σv·(x - mean_r) of each row (or with ``columns``, each column), float64, with
    v = g·[mask > 0] (a fused ReLU's output) or g; and v as an array if ``keep``, else None."""
    empty = EMPTY[g_rows.dtype][1 if columns else 2]
    mask = empty if mask is None else mask
    gm = np.empty_like(g_rows) if keep else empty
    if columns:
        P, C = rows.shape
        mean_t = tile(mean_r, C)
        sg = np.empty((min(_COL_SLICES, P), mean_t.size))
        sgx = np.empty_like(sg)
        tile_sums(g_rows.reshape(-1), np.zeros(mean_t.size), rows.reshape(-1), mean_t, mask.reshape(-1),
                  sg, sgx, gm.reshape(-1))
        sg, sgx = fold(sg, C), fold(sgx, C)
    else:
        sg = np.empty(rows.shape[0])
        sgx = np.empty(rows.shape[0])
        row_grad_sums(g_rows, mask, rows, mean_r, sg, sgx, gm)
    return sg, sgx, gm if keep else None


def _per_row(a, shape):
    """Broadcast a small per-group array to ``shape`` and flatten it to one float64 value per row."""
    return np.ascontiguousarray(np.broadcast_to(a, shape), dtype=np.float64).reshape(-1)


def _normalize(rows, mean_r, scale_r, shift_r, dtype, columns=False, res=None, relu=False):
    """(x - μ_r)·scale_r + shift_r per row (or column), plus ``res`` (rows' shape) if given,
    through ReLU if ``relu``; as a new array of ``dtype``."""
    out = np.empty(rows.shape, dtype)
    clamp = CLAMPS["relu" if relu else None]
    if columns:
        C = rows.shape[1]
        res = EMPTY[np.dtype(dtype)][1] if res is None else res.reshape(-1)
        normalize_tiles(rows.reshape(-1), tile(mean_r, C), tile(scale_r, C), tile(shift_r, C), res, *clamp,
                        out.reshape(-1))
    else:
        normalize_rows(rows, mean_r, scale_r, shift_r, EMPTY[np.dtype(dtype)][2] if res is None else res, *clamp,
                       out)
    return out


def _input_grad(g_rows, rows, mean_r, alpha, beta, gamma, columns=False, mask=None):
    """dL/dx = α·v + β·(x - μ) + γ per row (or column), v = g·[mask > 0] or g, in x's dtype."""
    gx = np.empty(rows.shape, np.result_type(g_rows, rows))
    if columns:
        C = rows.shape[1]
        mask = EMPTY[g_rows.dtype][1] if mask is None else mask.reshape(-1)
        grad_tiles(g_rows.reshape(-1), mask, rows.reshape(-1), tile(mean_r, C), tile(alpha, C), tile(beta, C),
                   tile(gamma, C), gx.reshape(-1))
    else:
        grad_rows(g_rows, EMPTY[g_rows.dtype][2] if mask is None else mask, rows, mean_r, alpha, beta, gamma, gx)
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
        configure()                     # before the first prange kernel starts Numba's threads
        N, C = x.shape[:2]
        K = C // groups
        # Batch norm of a channels-last x (see fast.layout.nhwc) works on its memory as
        # columns (N·H·W, C): one "row" of N·H·W values per channel, grid (1, C, 1).
        columns = over_batch and K == 1 and not x.flags.c_contiguous and nhwc(x) is not None
        if columns:
            grid = (1, C, 1)
            rows = nhwc(x).reshape(-1, C)
            L = rows.shape[0]
        else:
            grid = (N, groups, K)
            rows = np.ascontiguousarray(x).reshape(N * C, int(np.prod(x.shape[2:])))
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
        # A fused ReLU's gradient mask [y > 0] is applied by the kernels as they read g; the
        # masked gradient is written out only when it is also the residual's gradient.
        needs_res = ctx.needs_input_grad[3:] == (True,)
        sg, sgx, g_masked = _row_sums(g_rows, rows, mean_r, columns, y, keep=needs_res and y is not None)
        if g_masked is not None:
            g_rows, y = g_masked, None
        g_res = _from_rows(g_rows, ctx.shape, columns) if needs_res else None
        sg, sgx = sg.reshape(grid), sgx.reshape(grid)
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
            gx = _from_rows(_input_grad(g_rows, rows, mean_r, _per_row(w * rstd, grid), _per_row(beta, grid),
                                        _per_row(gamma, grid), columns, y), ctx.shape, columns)
        return gx, gw, gb, g_res


class LayerNorm(Function):
    """Layer norm over the last ``ndim`` axes, with an elementwise affine of those axes' shape.

    x (..., *S) is viewed as rows (R, prod(S)); weight, bias: S or None.
    """
    @staticmethod
    def forward(ctx, x, weight, bias, ndim=1, eps=1e-5):
        configure()
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
            sg, sgx, _ = _row_sums(g_xhat, rows, mean_r)
            beta = -rstd * rstd * (sgx * rstd) / L
            gx = _input_grad(g_xhat, rows, mean_r, rstd, beta, -rstd * sg / L).reshape(ctx.shape)
        return gx, gw, gb


def _per_channel(ctx, x, weight, bias, running_mean, running_var, own_stats, momentum, eps, over_batch):
    """Batch or instance norm (``over_batch``) with the sample's statistics, updating the
    running ones if given, or (``own_stats`` False) with the running statistics."""
    C = x.shape[1]
    if own_stats:
        running = None if running_mean is None else (running_mean, running_var, momentum)
        return ChannelNorm.forward(ctx, x, weight, bias, groups=C, over_batch=over_batch, eps=eps, running=running)
    return ChannelNorm.forward(ctx, x, weight, bias, groups=C, over_batch=True, eps=eps,
                               stats=(running_mean, running_var))


class BatchNorm(ChannelNorm):
    """``minicnn.ops.norm.BatchNorm``'s signature on the fused kernels."""
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
        return _per_channel(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, True)

    @staticmethod
    def backward(ctx, g):
        return ChannelNorm.backward(ctx, g)[:3]


class InstanceNorm(ChannelNorm):
    """``minicnn.ops.norm.InstanceNorm``'s signature on the fused kernels."""
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean=None, running_var=None, use_input_stats=True, momentum=0.1,
                eps=1e-5):
        return _per_channel(ctx, x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, False)

    backward = BatchNorm.backward


class GroupNorm(ChannelNorm):
    """``minicnn.ops.norm.GroupNorm``'s signature on the fused kernels."""
    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps=1e-5):
        return ChannelNorm.forward(ctx, x, weight, bias, groups=num_groups, over_batch=False, eps=eps)

    backward = BatchNorm.backward


def batch_norm_fused(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-5, *, residual=None, relu=False):
    """relu(batch_norm(x) + residual) in the normalizing pass itself (each part optional).

    Arguments as ``minicnn.ops.batch_norm`` (checked there), plus ``residual`` (x's shape
    and dtype) and ``relu``.  Same values (rounded once instead of two or three times)
    and the same gradients as the separate ops, with two to four fewer passes over the
    activation in the forward pass.  Used by ``minicnn.nn.fuse``."""
    check_batch_norm(x, running_mean, running_var, weight, bias, training)
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"batch_norm_fused: residual has shape {tuple(residual.shape)}, expected {tuple(x.shape)}")
    if residual is not None and residual.dtype != x.dtype:
        raise TypeError(f"batch_norm_fused: residual dtype {residual.dtype} differs from input dtype {x.dtype}")
    fused = dict(groups=x.shape[1], over_batch=True, eps=eps, relu=bool(relu))
    if training:
        running = None if running_mean is None else (raw(running_mean), raw(running_var), momentum)
        return ChannelNorm.apply(x, weight, bias, residual, running=running, **fused)
    return ChannelNorm.apply(x, weight, bias, residual, stats=(raw(running_mean), raw(running_var)), **fused)


for _op, _fn in (("batch_norm", BatchNorm), ("instance_norm", InstanceNorm), ("group_norm", GroupNorm),
                 ("layer_norm", LayerNorm)):
    dispatch.register(_op, lambda key, route, fn=_fn: fn, ("numba",))
