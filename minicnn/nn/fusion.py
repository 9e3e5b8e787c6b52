"""Fusion, only when asked: ``minicnn.nn.fuse(model)``, as PyTorch's ``fuse_modules``.

Every layer of an unfused model runs on its own, as written, so a learner's debugger
and a forward hook see each one.  ``fuse(model)`` switches on, in place, rewrites of
adjacent layers that save passes over memory; none changes a result beyond rounding:

- Conv2d -> batch norm (-> ReLU or ReLU6) in eval mode, where no gradient is wanted,
  runs as one convolution with the rest in its epilogue (:func:`conv_bn`): the batch
  norm is then a per-channel affine map s = weight/√(running_var + eps),
  t = bias - running_mean·s, applied to each chunk of the convolution's output while
  it is in cache (``minicnn.fast.conv2d_fused``).
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


def _folds_into(conv, bn, *inputs):
    """True if ``conv_bn(conv, bn, *inputs)`` runs as the convolution's inference epilogue:
    running statistics, a plain batch norm, no forward hooks, and no gradient wanted for
    any of its tensors."""
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias) + inputs
    wants_grad = is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in tensors)
    return _plain_bn(bn) and not (bn.training or not bn.track_running_stats or wants_grad or conv._forward_hooks)


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


def conv_bn(conv, bn, x, residual=None, activation=None):
    """act(bn(conv(x)) + residual), each of the last two optional (``activation`` None,
    'relu' or 'relu6'), with as much fused as the mode allows (see the module docstring):
    in eval mode without gradients one convolution with an epilogue, otherwise the
    convolution, then :func:`bn_act` (and ReLU6 on its own)."""
    if not _folds_into(conv, bn, x, residual):
        y = bn_act(bn, conv(x), residual, relu=activation == "relu")
        return ops.relu6(y) if activation == "relu6" else y
    scale = 1 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale = scale * bn.weight.data
        shift = shift * bn.weight.data + bn.bias.data
    if conv.bias is not None:
        shift = shift + conv.bias.data * scale
    try:
        return conv2d_fused(x, conv.weight, shift.astype(conv.weight.dtype), conv.stride, conv.padding,
                            conv.dilation, conv.groups, scale=scale, residual=residual, activation=activation)
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
            a, b, c = (layers[i:i + 3] + [None, None])[:3]
            if type(a) is Conv2d and _plain_bn(b):
                n = 3 if type(c) in (ReLU, ReLU6) else 2
                runs.append((i, i + n - 1, "conv+bn" + ("+" + type(c).__name__.lower() if n == 3 else "")
                             + " (eval: one conv with epilogue; train: bn+relu one pass)"))
                i += n
            elif _relu_fuses(a, b) and not _pool_commutes(b, c):
                runs.append((i, i + 1, "bn+relu in one pass"))
                i += 2
            elif _pool_commutes(a, b):
                runs.append((i, i + 1, "relu, maxpool run as maxpool, relu"))
                i += 2
            else:
                i += 1
        return runs

    def extra_repr(self):
        return "fused: " + ("; ".join(f"{a}-{b} {what}" for a, b, what in self.groups()) or "nothing")

    def forward(self, x):
        layers = list(self)
        i = 0
        while i < len(layers):
            a, b, c = (layers[i:i + 3] + [None, None])[:3]
            if type(a) is Conv2d and isinstance(b, BatchNorm) and _folds_into(a, b, x):
                act = {ReLU: "relu", ReLU6: "relu6"}.get(type(c)) if c is not None and not c._forward_hooks else None
                x = conv_bn(a, b, x, activation=act)
                i += 2 if act is None else 3
            elif _relu_fuses(a, b) and not _pool_commutes(b, c):
                x = bn_act(a, x, relu=True)
                i += 2
            elif _pool_commutes(a, b):
                x = a(b(x))
                i += 2
            else:
                x = a(x)
                i += 1
        return x


def _relu_fuses(norm, act):
    """True if ``norm`` then ``act`` may run as one fused batch norm + ReLU."""
    return _plain_bn(norm) and type(act) is ReLU and not act._forward_hooks


def _pool_commutes(act, pool):
    """True if ``act`` then ``pool`` may run as ``pool`` then ``act``."""
    return (type(act) is ReLU and type(pool) is MaxPool2d
            and not act._forward_hooks and not pool._forward_hooks)
