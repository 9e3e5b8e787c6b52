"""Containers and shape-only layers: Sequential, ModuleList, Flatten, Identity."""
from .module import Module


class Sequential(Module):
    """Calls its layers in order; indexable (``net[0]``, ``net[1:]``), ``len``, ``append``.

    Children are named "0", "1", ... as in PyTorch, so state-dict keys match.  The plain
    loop, always: ``minicnn.nn.fuse`` turns a Sequential into one whose adjacent layers
    run fused, when asked.
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
        for layer in self:
            x = layer(x)
        return x


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
