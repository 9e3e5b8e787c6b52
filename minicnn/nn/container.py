"""Containers and shape-only layers: Sequential, ModuleList, Flatten, Identity."""
from .activation import ReLU, ReLU6
from .conv import Conv2d
from .module import Module
from .norm import _BatchNorm, _folds_into, conv_bn
from .pool import MaxPool2d


class Sequential(Module):
    """Calls its layers in order; indexable (``net[0]``, ``net[1:]``), ``len``, ``append``.

    Children are named "0", "1", ... as in PyTorch, so state-dict keys match.

    Rewrites of adjacent layers, none of which changes a result beyond rounding:

    - Conv2d -> batch norm (-> ReLU or ReLU6) in eval mode, where no gradient is wanted, runs as
      one convolution with the rest in its epilogue (``conv_bn``).
    - A batch norm followed by a ReLU runs as one fused pass, ``bn.fused(x, relu=True)``,
      unless a MaxPool2d follows: the rewrite below then saves more, as the fused
      ReLU's backward pass would run on the whole activation rather than a quarter.
    - A ReLU followed by a MaxPool2d runs as the pool, then the ReLU.  Max pooling
      commutes with a non-decreasing function, max(relu(x)) = relu(max(x)), and the
      gradients agree too (a window whose max is <= 0 passes no gradient either way),
      so the result is the same, bit for bit, with the ReLU on the pooled values only
      (a quarter of them for 2x2 pooling).  On the Fashion-MNIST CNN (batch 64, two
      cores) a training step took 18.2 ms instead of 19.4-19.9 ms.

    Layers with forward hooks (e.g. ``minicnn.internals``) run as written: a hook must
    see its layer's own output.
    """

    def __init__(self, *layers):
        super().__init__()
        for layer in layers:
            self.append(layer)

    def append(self, layer):
        self.add_module(str(len(self._modules)), layer)
        return self

    def __getitem__(self, i):
        layers = list(self._modules.values())
        return Sequential(*layers[i]) if isinstance(i, slice) else layers[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            a, b, c = (layers[i:i + 3] + [None, None])[:3]
            if type(a) is Conv2d and isinstance(b, _BatchNorm) and _folds_into(a, b, x):
                act = {ReLU: "relu", ReLU6: "relu6"}.get(type(c)) if c is not None and not c._forward_hooks else None
                x = conv_bn(a, b, x, activation=act)
                i += 2 if act is None else 3
            elif _relu_fuses(a, b) and not _pool_commutes(b, c):
                x = a.fused(x, relu=True)
                i += 2
            elif _pool_commutes(a, b):
                x = a(b(x))
                i += 2
            else:
                x = a(x)
                i += 1
        return x


def _relu_fuses(norm, act):
    """True if ``norm`` then ``act`` may run as one fused batch norm + ReLU (see Sequential)."""
    return (isinstance(norm, _BatchNorm) and type(act) is ReLU
            and not norm._forward_hooks and not act._forward_hooks)


def _pool_commutes(act, pool):
    """True if ``act`` then ``pool`` may run as ``pool`` then ``act`` (see Sequential)."""
    return (type(act) is ReLU and type(pool) is MaxPool2d
            and not act._forward_hooks and not pool._forward_hooks)


class ModuleList(Module):
    """A list of Modules whose parameters are registered (named "0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1·d2·...): axes start_dim..end_dim merged (default 1..-1)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)


class Identity(Module):
    """y = x (a placeholder, e.g. for a removed head)."""

    def forward(self, x):
        return x
