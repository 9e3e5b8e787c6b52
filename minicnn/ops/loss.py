"""Losses, computed from logits (log-softmax inside, never log(softmax(x))).

Cross-entropy and NLL share one formulation.  For each sample i a row of
target weights Q_i· is built from the target, the class weights w and label
smoothing ε (C classes):

    integer target y_i:      Q_ic = w_c·((1-ε)[c = y_i] + ε/C),   norm = Σ_i w_{y_i}
    probability target t_i:  Q_ic = w_c·((1-ε) t_ic + ε/C),       norm = N

and then, with ℓ = log_softmax(x):

    loss_i = -Σ_c Q_ic ℓ_ic,   mean reduction = Σ_i loss_i / norm
    d loss_i / d x_ic = softmax(x)_ic · Σ_c' Q_ic' - Q_ic

These are PyTorch's definitions (including the weighted-mean denominator);
rows whose target is ``ignore_index`` get Q = 0 and leave the denominator.
"""
import numpy as np

from ..tensor import Function, Tensor
from .activation import log_softmax_array, stable_sigmoid
from .checks import check_array

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _target_weights(logits, target, weight, label_smoothing, ignore_index):
    """Q (N, C) and the mean-reduction denominator, as in the module docstring."""
    n, c = logits.shape
    if isinstance(weight, Tensor):
        weight = weight.data
    w = np.ones(c, logits.dtype) if weight is None else np.asarray(weight, logits.dtype)
    if w.shape != (c,):
        raise ValueError(f"class weight must have shape ({c},), got {w.shape}")
    eps = label_smoothing
    if np.issubdtype(target.dtype, np.floating):
        q = ((1 - eps) * target + eps / c) * w
        return q.astype(logits.dtype), float(n)
    keep = target != ignore_index
    y = np.where(keep, target, 0)
    if np.any((y < 0) | (y >= c)):
        bad = target[keep & ((target < 0) | (target >= c))][0]
        raise ValueError(f"target class {bad} is outside [0, {c})")
    q = np.zeros((n, c), logits.dtype)
    q[np.arange(n), y] = 1 - eps
    q += eps / c
    q *= w
    q[~keep] = 0
    return q, float(w[y][keep].sum())


class WeightedNLL(Function):
    """loss = -Σ_c Q_ic·ℓ_ic per sample, reduced; ℓ = log_softmax(x) if ``from_logits``
    else x itself (``nll_loss`` takes log-probabilities)."""
    @staticmethod
    def forward(ctx, x, q=None, norm=1.0, reduction="mean", from_logits=True):
        logp = log_softmax_array(x, axis=1) if from_logits else x
        per_sample = -(q * logp).sum(axis=1)
        ctx.save_for_backward(logp, q)
        ctx.norm, ctx.reduction, ctx.from_logits = norm, reduction, from_logits
        if reduction == "none":
            return per_sample
        total = per_sample.sum()
        return np.asarray(total / norm if reduction == "mean" else total, dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):
        logp, q = ctx.saved
        if ctx.reduction == "none":
            scale = g[:, None]
        else:
            scale = g / ctx.norm if ctx.reduction == "mean" else g
        if ctx.from_logits:
            return (np.exp(logp) * q.sum(axis=1, keepdims=True) - q) * scale
        return -q * scale


def _class_last(x):
    """(N, C, d1, ...) -> (N·d1·..., C) so every loss works on rows; returns the reshaper too."""
    if x.ndim == 2:
        return x, lambda v: v
    spatial = x.shape[2:]
    moved = x.transpose(0, *range(2, x.ndim), 1).reshape(-1, x.shape[1])
    return moved, lambda v: v.reshape(x.shape[0], *spatial)


def _cross_entropy(x, target, weight, reduction, label_smoothing, ignore_index, from_logits):
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    op = "cross_entropy" if from_logits else "nll_loss"
    check_array(x, op)
    if x.ndim < 2:
        raise ValueError(f"expected input of shape (N, C) or (N, C, d1, ...), got {x.shape}")
    target = target.data if isinstance(target, Tensor) else np.asarray(target)
    _check_target(op, x.shape, target)
    if reduction == "mean" and 0 in (x.shape[0],) + tuple(x.shape[2:]):
        # PyTorch returns NaN (0/0), which then spreads through a training run unnoticed.
        raise ValueError(f"{op}: empty batch (input shape {tuple(x.shape)}): the mean loss over no samples "
                         "is undefined; skip empty batches, or use reduction='sum'")
    rows, unflatten = _class_last(x)
    if np.issubdtype(target.dtype, np.floating):
        target = _class_last(target)[0]
    else:
        target = target.reshape(-1)
    q, norm = _target_weights(rows.data, target, weight, label_smoothing, ignore_index)
    out = WeightedNLL.apply(rows, q=q, norm=norm, reduction=reduction, from_logits=from_logits)
    return unflatten(out) if reduction == "none" else out


def _check_target(op, shape, target):
    """Class indices: integers of the input's shape without the class axis.  Probabilities:
    floats of the input's shape."""
    index_shape = (shape[0],) + tuple(shape[2:])
    if target.dtype.kind == "f":
        if target.shape == index_shape:
            raise ValueError(f"{op}: float targets of shape {target.shape} for input {tuple(shape)}: class indices "
                             "must be integers (convert them with .astype(np.int64)); probability targets "
                             "must have the input's shape")
        if target.shape != tuple(shape):
            raise ValueError(f"{op}: probability targets must have the input's shape {tuple(shape)}, "
                             f"got {target.shape}")
    elif target.dtype.kind in "iu":
        if target.shape != index_shape:
            raise ValueError(f"{op}: class-index targets must have shape {index_shape}, got {target.shape}")
    else:
        raise TypeError(f"{op}: targets must be integer class indices or float probabilities, "
                        f"got dtype {target.dtype}")


def cross_entropy(input, target, weight=None, reduction="mean", label_smoothing=0.0,  # noqa: A002
                  ignore_index=-100):
    """Cross-entropy between logits ``input`` (N, C[, d...]) and ``target``.

    ``target`` holds class indices (N[, d...]) or class probabilities (same
    shape as ``input``).  ``weight`` (C,) re-weights classes (e.g. for class
    imbalance); ``label_smoothing`` ε mixes the target with the uniform
    distribution.  Defaults as ``torch.nn.functional.cross_entropy``.
    """
    return _cross_entropy(input, target, weight, reduction, label_smoothing, ignore_index, True)


def nll_loss(input, target, weight=None, reduction="mean", ignore_index=-100):  # noqa: A002
    """Negative log-likelihood of log-probabilities ``input`` (N, C[, d...]) at class indices ``target``."""
    return _cross_entropy(input, target, weight, reduction, 0.0, ignore_index, False)


class BCEWithLogits(Function):
    """loss = -w·[p·y·log σ(x) + (1-y)·log(1-σ(x))], with
    log σ(x) = -softplus(-x) and log(1-σ(x)) = -softplus(x) (finite for any x).

    dloss/dx = w·[(p·y + 1 - y)·σ(x) - p·y].
    """
    @staticmethod
    def forward(ctx, x, y=None, weight=None, pos_weight=None, reduction="mean"):
        p = 1.0 if pos_weight is None else pos_weight
        w = 1.0 if weight is None else weight
        log1p_term = np.log1p(np.exp(-np.abs(x)))
        softplus_pos = np.maximum(x, 0) + log1p_term     # softplus(x)
        softplus_neg = np.maximum(-x, 0) + log1p_term    # softplus(-x), not softplus(x) - x: no cancellation
        loss = w * (p * y * softplus_neg + (1 - y) * softplus_pos)
        ctx.save_for_backward(x, y)
        ctx.w, ctx.p, ctx.reduction = w, p, reduction
        if reduction == "none":
            return loss.astype(x.dtype)
        return np.asarray(loss.mean() if reduction == "mean" else loss.sum(), dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved
        p, w = ctx.p, ctx.w
        grad = w * ((p * y + 1 - y) * stable_sigmoid(x) - p * y)
        if ctx.reduction == "mean":
            grad = grad / x.size
        return (grad * g).astype(x.dtype)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):  # noqa: A002
    """Binary cross-entropy on logits.  ``pos_weight`` (broadcast over the last
    axis, one per class) up-weights positives; ``weight`` rescales each element."""
    _check_reduction(reduction)
    target = target.data if isinstance(target, Tensor) else np.asarray(target)
    if target.shape != input.shape:
        raise ValueError(f"target shape {target.shape} must equal input shape {input.shape}")
    as_arr = lambda v: None if v is None else np.asarray(v.data if isinstance(v, Tensor) else v, input.dtype)  # noqa: E731
    return BCEWithLogits.apply(input, y=target.astype(input.dtype), weight=as_arr(weight),
                               pos_weight=as_arr(pos_weight), reduction=reduction)


def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """Mean squared error: mean((input - target)²); 'sum' and 'none' as in PyTorch."""
    _check_reduction(reduction)
    sq = (input - target) ** 2
    return sq.mean() if reduction == "mean" else sq.sum() if reduction == "sum" else sq
