"""Dropout layers: thin Modules over ``minicnn.ops.dropout``; active only in training mode."""
from .. import ops
from .module import Module


class DropoutBase(Module):
    """Holds ``p``, the probability of zeroing (default 0.5)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"{type(self).__name__}: probability p must be in [0, 1], got {p}")
        self.p = p

    def extra_repr(self):
        return f"p={self.p}"


class Dropout(DropoutBase):
    """Inverted dropout: in training, each element is zeroed with probability p and the
    rest are scaled by 1/(1 - p); in eval mode, the identity.  Any input shape."""

    def forward(self, x):
        return ops.dropout(x, self.p, self.training)


class Dropout2d(DropoutBase):
    """Channel dropout for (N, C, H, W): in training, each whole channel of each sample is
    zeroed with probability p and the rest scaled by 1/(1 - p); in eval mode, the identity."""

    def forward(self, x):
        return ops.dropout2d(x, self.p, self.training)
