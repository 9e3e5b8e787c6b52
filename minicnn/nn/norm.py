"""Normalization layers with PyTorch's names, defaults, buffers and semantics.

One private base, :class:`_NormBase`, holds what they share: the affine
``weight`` (ones) and ``bias`` (zeros), the optional running statistics
(``running_mean`` zeros, ``running_var`` ones, ``num_batches_tracked`` an int64
0-d array) and the input checks.  The subclasses only say which axes they
accept and which op they call (see ``minicnn.ops.norm`` for the formulas):

    BatchNorm1d(C)      (N, C) or (N, C, L)   statistics per channel over the batch
    BatchNorm2d(C)      (N, C, H, W)          same; eval mode uses the running statistics
    InstanceNorm2d(C)   (N, C, H, W)          per sample and channel; affine and tracking off by default
    GroupNorm(G, C)     (N, C, *)             per sample and group of C/G channels
    LayerNorm(S)        (*, *S)               per sample over the trailing axes S; elementwise affine

Running statistics (BatchNorm, and InstanceNorm with track_running_stats=True)
are updated in training mode as  r ← (1 - m)·r + m·batch,  with the unbiased
batch variance; momentum=None makes m = 1/num_batches_tracked, the cumulative
average of all batches so far.

>>> bn = BatchNorm2d(16)                  # eps=1e-5, momentum=0.1, affine, tracking
>>> y = bn(x)                             # x (N, 16, H, W); updates bn.running_mean/var
>>> bn.eval(); y = bn(x)                  # normalizes with the running statistics
"""
import numpy as np

from .. import ops
from ..ops.checks import check_array
from .module import Module
from .parameter import Parameter


class _NormBase(Module):
    """Affine parameters of ``shape`` and, if ``track_running_stats``, running statistics of
    ``shape`` (one per channel).  Subclasses set ``_ndims`` (accepted input ranks, None for
    any from 2) and ``_layout`` (shape description for errors), and define ``forward``."""

    _ndims = ()
    _layout = ""

    def __init__(self, shape, eps, momentum, affine, track_running_stats, dtype=np.float32):
        super().__init__()
        self._shape, self.eps, self.momentum = tuple(shape), eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1] or None, got {momentum}")
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be positive, got {eps}")
        self.register_parameter("weight", Parameter(np.ones(self._shape, dtype)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(self._shape, dtype)) if affine else None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(self._shape, dtype))
            self.register_buffer("running_var", np.ones(self._shape, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self):
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        """Running statistics reset, weight 1, bias 0."""
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def _check_input(self, x):
        """Rank in ``_ndims`` and channel axis (axis 1) equal to ``shape[0]``."""
        name = f"{type(self).__name__}({self._label_args()})"
        check_array(x, name)
        if x.ndim < 2 or (self._ndims is not None and x.ndim not in self._ndims):
            raise ValueError(f"{name}: expected input of shape {self._layout}, got shape {tuple(x.shape)}")
        if x.shape[1] != self._shape[0]:
            raise ValueError(f"{name}: expected {self._shape[0]} channels on axis 1, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")

    def _label_args(self):
        return str(self._shape[0])

    def _tracking_factor(self):
        """The momentum for this training step (counts the batch; None -> cumulative average)."""
        self.num_batches_tracked += 1
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def extra_repr(self):
        return (f"{self._shape[0]}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm(_NormBase):
    """y = (x - μ)/√(var + eps)·weight + bias, statistics per channel over every other axis.

    Training mode (or track_running_stats=False): the batch's statistics, biased
    variance; the running statistics are updated.  Eval mode: the running ones.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__((num_features,), eps, momentum, affine, track_running_stats, dtype)
        self.num_features = num_features

    def forward(self, x):
        self._check_input(x)
        use_batch, momentum = self._batch_mode()
        if x.shape[0] == 0 and not use_batch:
            # An empty batch gives an empty output, as in PyTorch.
            return ops.mul(x, 1)
        return ops.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                              training=use_batch, momentum=momentum, eps=self.eps)

    def _batch_mode(self):
        """(normalize with the batch's statistics?, momentum of the running update)."""
        use_batch = self.training or not self.track_running_stats
        return use_batch, self._tracking_factor() if self.training and self.track_running_stats else 0.0


class BatchNorm1d(BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs; statistics per channel over N (and L)."""
    _ndims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(BatchNorm):
    """Batch norm over (N, C, H, W) inputs; statistics per channel over N, H and W."""
    _ndims = (4,)
    _layout = "(N, C, H, W)"


class InstanceNorm2d(_NormBase):
    """y = (x - μ)/√(var + eps)·weight + bias, statistics per sample and channel over H, W.

    Defaults as PyTorch: affine=False, track_running_stats=False (so eval mode
    also uses each image's own statistics).  With tracking, the running
    statistics average the per-sample ones, and eval mode uses them; as in
    PyTorch, momentum=None then means momentum 0 (no update), not a cumulative
    average, and num_batches_tracked stays 0.
    """
    _ndims = (4,)
    _layout = "(N, C, H, W)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 dtype=np.float32):
        super().__init__((num_features,), eps, momentum, affine, track_running_stats, dtype)
        self.num_features = num_features

    def forward(self, x):
        self._check_input(x)
        return ops.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                 use_input_stats=self.training or not self.track_running_stats,
                                 momentum=0.0 if self.momentum is None else self.momentum, eps=self.eps)


class GroupNorm(_NormBase):
    """y = (x - μ)/√(var + eps)·weight + bias, statistics per sample over each of
    ``num_groups`` groups of num_channels/num_groups consecutive channels.
    x (N, C, *); weight, bias (C,).  GroupNorm(1, C) normalizes each sample over
    all of (C, *); GroupNorm(C, C) is instance norm with a per-channel affine.
    """
    _ndims = None
    _layout = "(N, C, *)"

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_groups={num_groups} must be a positive divisor of "
                             f"num_channels={num_channels}")
        super().__init__((num_channels,), eps, None, affine, False, dtype)
        self.num_groups, self.num_channels = num_groups, num_channels

    def _label_args(self):
        return f"{self.num_groups}, {self.num_channels}"

    def forward(self, x):
        self._check_input(x)
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(_NormBase):
    """y = (x - μ)/√(var + eps)·weight + bias, statistics per sample over the trailing
    ``normalized_shape`` axes; weight (ones) and bias (zeros) have that shape.
    ``elementwise_affine=False`` drops both; ``bias=False`` drops the bias only.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        super().__init__(shape, eps, None, elementwise_affine, False, dtype)
        self.normalized_shape, self.elementwise_affine = shape, elementwise_affine
        if elementwise_affine and not bias:
            self.register_parameter("bias", None)

    def forward(self, x):
        check_array(x, "layer_norm")
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
