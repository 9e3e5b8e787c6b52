"""Fusion, only when asked: ``minicnn.nn.fuse(model)``, as PyTorch's ``fuse_modules``.

Every layer of an unfused model runs on its own, as written, so a learner's debugger
and a forward hook see each one.  ``fuse(model)`` switches on, in place, rewrites of
adjacent layers that save passes over memory; none changes a result beyond rounding:

- Conv2d -> batch norm -> ReLU or ReLU6 -> 2x2 MaxPool2d (the last three each optional,
  at least one there) in eval mode, where no gradient is wanted, runs as one
  convolution with the rest in its epilogue (:func:`conv_bn`,
  ``minicnn.fast.conv2d_fused``): the batch norm is then a per-channel affine map
  s = weight/√(running_var + eps), t = bias - running_mean·s, applied with the
  activation to each chunk of the convolution's output while it is in cache, and the
  pooling too, so only the pooled quarter of the output is ever written.
- Conv2d -> ReLU or ReLU6 (optional) -> 2x2 MaxPool2d, no batch norm, runs so in
  training too: the epilogue records each window's winner, and the backward pass
  rebuilds the convolution's output gradient from the pooled one chunk by chunk.
- A batch norm followed by a ReLU (and a residual added between them, in a ResNet
  block) runs as one pass (``minicnn.fast.batch_norm_fused``), in training too.
- A ReLU followed by a MaxPool2d runs as the pool, then the ReLU: max pooling commutes
  with a non-decreasing function, max(relu(x)) = relu(max(x)), and the gradients agree
  too, so the result is the same, bit for bit, with the ReLU on a quarter of the values.

Sequentials become :class:`FusedSequential` (same children, same names, so state dicts
are unchanged); a module that defines ``fused_forward`` (a ResNet block, an
EfficientNet conv-BN-activation) runs that instead of ``forward``.  Printed, a fused
model says which layers run fused.  Layers with forward hooks always run as written.
"""
import numpy as np

from .. import ops
from ..fast import batch_norm_fused, conv2d_fused
from ..tensor import is_grad_enabled
from .activation import ReLU, ReLU6
from .container import Sequential
from .conv import Conv2d
from .module import annotate_error
from .norm import BatchNorm
from .pool import MaxPool2d

__all__ = ["FusedSequential", "bn_act", "conv_bn", "fuse"]


def fuse(model):
    """Switch on the fused execution of ``model`` (in place; see the module docstring) and
    return it (a new :class:`FusedSequential` if ``model`` itself is a plain Sequential)."""
    for _, parent in reversed(list(model.named_modules())):     # children first: nested Sequentials
        for name, child in list(parent._modules.items()):
            if type(child) is Sequential:
                parent._modules[name] = FusedSequential(*child)
    for _, m in model.named_modules():
        if hasattr(m, "fused_forward") and "forward" not in m.__dict__:
            object.__setattr__(m, "forward", m.fused_forward)
    return FusedSequential(*model) if type(model) is Sequential else model


def is_fused(module):
    """True if ``module`` runs fused (a FusedSequential, or its ``fused_forward``)."""
    return isinstance(module, FusedSequential) or "forward" in module.__dict__


def _plain_bn(m):
    """True for a batch norm that computes what BatchNorm.forward does (not a subclass with
    a forward of its own, e.g. SyncBatchNorm's statistics over all ranks) and has no hooks."""
    return isinstance(m, BatchNorm) and type(m).forward is BatchNorm.forward and not m._forward_hooks


def _folds_into(conv, bn, x, residual=None, pool=None):
    """True if ``conv_bn(conv, bn, x, residual, ..., pool)`` runs as one convolution with an
    epilogue: no forward hooks, and either no gradient wanted for any of its tensors and
    no batch norm or a plain one with running statistics (inference), or a pooling after
    and neither a batch norm nor a residual (the epilogue that passes gradients)."""
    tensors = (conv.weight, conv.bias, x, residual) + (() if bn is None else (bn.weight, bn.bias))
    wants_grad = is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in tensors)
    if conv._forward_hooks:
        return False
    if wants_grad:
        return bn is None and residual is None and pool == 2
    return bn is None or (_plain_bn(bn) and not bn.training and bn.track_running_stats)


def bn_act(bn, x, residual=None, relu=False):
    """relu(bn(x) + residual) (either part optional) in one pass over the activation
    (``minicnn.fast.batch_norm_fused``).  With forward hooks on ``bn``, or a batch norm with
    a forward of its own (SyncBatchNorm), it runs as written."""
    if not _plain_bn(bn):
        y = bn(x)
        y = y if residual is None else y + residual
        return ops.relu(y) if relu else y
    try:
        bn._check_input(x)
        use_batch, momentum = bn._batch_mode()
        return batch_norm_fused(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=use_batch,
                                momentum=momentum, eps=bn.eps, residual=residual, relu=relu)
    except Exception as exc:
        annotate_error(exc, bn)          # named as if called
        raise


def conv_bn(conv, bn, x, residual=None, activation=None, pool=None):
    """pool(act(bn(conv(x)) + residual)), ``bn`` None or a batch norm, ``activation`` None,
    'relu' or 'relu6', ``pool`` None or 2 (a 2x2 max pooling), with as much fused as the
    mode allows (see the module docstring): one convolution with an epilogue in eval mode
    without gradients, or with gradients when it pools and has no batch norm or residual;
    otherwise the convolution, then :func:`bn_act` (and ReLU6 and the pooling on their own)."""
    if not _folds_into(conv, bn, x, residual, pool):
        y = conv(x)
        if bn is not None:
            y = bn_act(bn, y, residual, relu=activation == "relu")
        elif residual is not None:
            y = y + residual
        if activation == "relu6" or (activation == "relu" and bn is None):
            y = (ops.relu6 if activation == "relu6" else ops.relu)(y)
        return ops.max_pool2d(y, 2) if pool else y
    scale, shift = None, conv.bias     # a parameter: with a gradient where one is wanted
    if bn is not None:
        scale = 1 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            scale = scale * bn.weight.data
            shift = shift * bn.weight.data + bn.bias.data
        if conv.bias is not None:
            shift = shift + conv.bias.data * scale
        shift = shift.astype(conv.weight.dtype)
    try:
        return conv2d_fused(x, conv.weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups,
                            scale=scale, residual=residual, activation=activation, pool=pool)
    except Exception as exc:
        annotate_error(exc, conv)         # the input reached the convolution
        raise


class FusedSequential(Sequential):
    """A Sequential whose adjacent layers run fused where that is exact (see the module
    docstring); same children, names and state dict as the Sequential it came from."""

    def groups(self):
        """(first index, last index, what) of each run of layers that may run fused."""
        layers, runs, i = list(self), [], 0
        while i < len(layers):
            end, kind = _match(layers, i)
            if kind is None:
                i += 1
                continue
            what = _WHAT[kind]
            if kind == "conv":
                names = "+".join(type(m).__name__.lower() for m in layers[i:end])
                if _of(layers[i:end], BatchNorm) is None and _of(layers[i:end], MaxPool2d) is not None:
                    what = f"{names} (one convolution with its epilogue, in training too)"
                else:
                    train = [_WHAT[k] for k in _kinds(layers[:end], i + 1)]
                    what = f"{names} (eval: one convolution with its epilogue" + (
                        f"; otherwise the convolution, then {', '.join(train)}" if train else "") + ")"
            runs.append((i, end - 1, what))
            i = end
        return runs

    def extra_repr(self):
        return "fused: " + ("; ".join(f"{a}-{b} {what}" for a, b, what in self.groups()) or "nothing")

    def forward(self, x):
        layers = list(self)
        i = 0
        while i < len(layers):
            end, kind = _match(layers, i)
            bn = _of(layers[i:end], BatchNorm) if kind == "conv" else None
            pool = 2 if kind == "conv" and _of(layers[i:end], MaxPool2d) is not None else None
            if kind == "conv" and _folds_into(layers[i], bn, x, pool=pool):
                act = _of(layers[i:end], (ReLU, ReLU6))
                x = conv_bn(layers[i], bn, x, activation=None if act is None else type(act).__name__.lower(),
                            pool=pool)
            elif kind == "bn+relu":
                x = bn_act(layers[i], x, relu=True)
            elif kind == "relu+maxpool":
                x = layers[i](layers[i + 1](x))
            else:           # one layer as written (a convolution that cannot fold: the rest matches next)
                x = layers[i](x)
                end = i + 1
            i = end
        return x


_WHAT = {"conv": None, "bn+relu": "bn+relu in one pass", "relu+maxpool": "relu, maxpool run as maxpool, relu"}


def _match(layers, i):
    """(end, kind) of the run of ``layers`` that may run fused from ``i`` (kind a key of
    _WHAT), or (i + 1, None).  Whether a convolution's run fuses depends on the mode
    (forward asks ``_folds_into``); where it does not, its layers after the convolution
    match on their own."""
    a, b, c = (layers[i:i + 3] + [None, None])[:3]
    if type(a) is Conv2d and not a._forward_hooks:
        end = i + 1
        if end < len(layers) and _plain_bn(layers[end]):
            end += 1
        if end < len(layers) and type(layers[end]) in (ReLU, ReLU6) and not layers[end]._forward_hooks:
            end += 1
        if end < len(layers) and _pools_2x2(layers[end]):
            end += 1
        if end > i + 1:
            return end, "conv"
    if _relu_fuses(a, b) and not _pool_commutes(b, c):
        return i + 2, "bn+relu"
    if _pool_commutes(a, b):
        return i + 2, "relu+maxpool"
    return i + 1, None


def _kinds(layers, i):
    """The kinds of the fused runs that ``layers`` from ``i`` on break into."""
    kinds = []
    while i < len(layers):
        end, kind = _match(layers, i)
        if kind is not None:
            kinds.append(kind)
        i = end
    return kinds


def _of(run, types):
    """The layer of ``run`` that is an instance of ``types``, or None."""
    return next((m for m in run if isinstance(m, types)), None)


def _pools_2x2(m):
    """True for a MaxPool2d of 2x2 windows, stride 2, no padding, floor mode, no hooks: what
    the convolution's epilogue pools."""
    pair = lambda v: v if isinstance(v, tuple) else (v, v)   # noqa: E731
    return (type(m) is MaxPool2d and not m._forward_hooks and pair(m.kernel_size) == (2, 2)
            and pair(2 if m.stride is None else m.stride) == (2, 2) and pair(m.padding) == (0, 0) and not m.ceil_mode)


def _relu_fuses(norm, act):
    """True if ``norm`` then ``act`` may run as one fused batch norm + ReLU."""
    return _plain_bn(norm) and type(act) is ReLU and not act._forward_hooks


def _pool_commutes(act, pool):
    """True if ``act`` then ``pool`` may run as ``pool`` then ``act``."""
    return (type(act) is ReLU and type(pool) is MaxPool2d
            and not act._forward_hooks and not pool._forward_hooks)
