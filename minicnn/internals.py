"""Look inside a model: what each layer's activations and gradients look like on a batch.

    report = inspect(model, x, loss_fn=ops.cross_entropy, target=y)
    print(report)                  # one row per layer call, then one per parameter
    report.column("std")           # the numbers, for plots (minicnn.viz.internals)

Per layer (every leaf module and every module holding parameters, once per call,
found with forward hooks): output shape, mean, standard deviation and the
fraction of exact zeros (after a ReLU: the units that are off for this batch;
near 1, the layer is dying).  With a loss, after one backward, per parameter:
‖p‖₂, ‖∂L/∂p‖₂ and their ratio (roughly the relative step SGD would take per
unit learning rate; orders of magnitude apart across layers means some layers
learn much faster than others).

Looking changes nothing: ``inspect`` and ``capture`` run the model in the mode it
is in (train mode: BatchNorm normalizes with the batch's own statistics, dropout
drops) and say which, but leave the running statistics, every other buffer and
the global random stream as they found them.

Where the network looks (Grad-CAM, saliency maps) is :mod:`minicnn.attribution`;
its functions are exported here too.

:func:`init_depth_study` runs the classic experiment behind He initialisation:
through a deep plain stack of 3x3 conv + ReLU layers, the activation std stays
roughly constant with Kaiming init (Var w = 2/fan_in) and shrinks by a constant
factor per layer, ≈ 0.01·√(fan_in/2) (0.12 for 32 channels), with N(0, 0.01²)
weights.  (With Kaiming it still wanders: a product of finite random layers
drifts in log scale; over 30 seeds of the default study every std stayed within
[0.11, 1.4] and within a factor 7 across depth, against ~1e-19 at depth 20 for
N(0, 0.01²).)
"""
import contextlib
from dataclasses import dataclass, field

import numpy as np

from . import nn
from .attribution import Attribution, grad_cam, saliency, upsample  # noqa: F401  (part of this API)
from .random import get_state, new_rng, set_state
from .tensor import Tensor, no_grad


@dataclass
class LayerStats:
    """One call of one layer: ``name`` (dotted, as in state_dict), ``kind`` (class name),
    output ``shape``, the output's ``mean``, ``std`` and ``zero_fraction``, and after a
    backward ``grad_norm`` = ‖∂L/∂a‖ of the output a (None without a loss)."""
    name: str
    kind: str
    shape: tuple
    mean: float
    std: float
    zero_fraction: float
    grad_norm: float = None


@dataclass
class ParamStats:
    """One parameter after a backward: ``norm`` = ‖p‖₂, ``grad_norm`` = ‖∂L/∂p‖₂."""
    name: str
    shape: tuple
    norm: float
    grad_norm: float


@dataclass
class Report:
    """What :func:`inspect` found: ``layers`` in call order, ``params`` (empty without a
    loss), the ``loss`` value (or None), the ``mode`` the model ran in (see :func:`mode_of`)
    and ``notes`` on how to read the rows."""
    layers: list
    params: list = field(default_factory=list)
    loss: float = None
    mode: str = None
    notes: list = field(default_factory=list)

    def column(self, attr, kind=None):
        """One field of every layer row (e.g. "std"), optionally only layers of class name ``kind``."""
        return [getattr(s, attr) for s in self.layers if kind is None or s.kind == kind]

    def table(self):
        """The mode line, the layers table, its notes and, after a backward, the parameters table."""
        out = f"{describe_mode(self.mode)}\n\n" if self.mode else ""
        grads = any(s.grad_norm is not None for s in self.layers)
        out += format_table(("layer", "type", "output shape", "mean", "std", "zeros") + (("‖∂L/∂a‖",) if grads else ()),
                            [(s.name, s.kind, str(s.shape), f"{s.mean:+.3e}", f"{s.std:.3e}",
                              f"{100 * s.zero_fraction:.1f}%")
                             + ((f"{s.grad_norm:.3e}" if s.grad_norm is not None else "-",) if grads else ())
                             for s in self.layers], align="lllrrr" + "r" * grads)
        out += "".join(f"\nnote: {n}" for n in self.notes)
        if self.params:
            out += f"\n\nloss {self.loss:.6g}; gradients after one backward:\n"
            out += format_table(("parameter", "shape", "‖p‖", "‖grad‖", "‖grad‖/‖p‖"),
                                [(p.name, str(p.shape), f"{p.norm:.3e}", f"{p.grad_norm:.3e}",
                                  f"{p.grad_norm / p.norm:.3e}" if p.norm else "-") for p in self.params],
                                align="llrrr")
        return out

    __str__ = table


def format_table(head, rows, align=None):
    """Plain-text table; ``align`` has one 'l' or 'r' per column (default: the first
    column left-aligned, the others right-aligned)."""
    align = align or "l" + "r" * (len(head) - 1)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(r, widths, align))
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


def watched_layers(model, kinds=None):
    """(name, module) of every leaf module and every module with its own parameters
    (or, if ``kinds`` is a class or tuple of classes, of the modules of those classes)."""
    for name, m in model.named_modules():
        if kinds is not None:
            chosen = isinstance(m, kinds)
        else:
            chosen = not m._modules or any(p is not None for p in m._parameters.values())
        if chosen:
            yield name or "model", m


@contextlib.contextmanager
def forward_hooks(model, record, kinds=None):
    """Within the block, ``record(name, module, output)`` runs after each call of a watched layer."""
    handles = [m.register_forward_hook(lambda mod, inputs, out, name=name: record(name, mod, out))
               for name, m in watched_layers(model, kinds)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def mode_of(model):
    """'train' or 'eval' if every module is in that mode, else 'mixed (train: <names>)'."""
    training = [name or "model" for name, m in model.named_modules() if m.training]
    if not training:
        return "eval"
    if len(training) == len(list(model.modules())):
        return "train"
    return f"mixed (train: {', '.join(training)})"


def describe_mode(mode):
    """One line saying what ``mode`` (from :func:`mode_of`) means for a report's numbers."""
    if mode == "eval":
        return "eval mode: BatchNorm normalizes with its running statistics, dropout is off"
    if mode == "train":
        return ("train mode: BatchNorm normalizes with this batch's statistics, dropout drops "
                "(running statistics left untouched)")
    return f"{mode} mode; running statistics left untouched"


@contextlib.contextmanager
def untouched(model):
    """Within the block the model may run in train mode: its buffers (BatchNorm's running
    statistics) and the global random stream (dropout) are restored afterwards."""
    saved = [(m, name, np.array(b, copy=True)) for m in model.modules() for name, b in m._buffers.items()
             if b is not None]
    rng = get_state()
    try:
        yield
    finally:
        set_state(rng)
        for m, name, b in saved:
            now = m._buffers[name]
            if isinstance(now, np.ndarray) and now.shape == b.shape and now.flags.writeable:
                np.copyto(now, b, casting="unsafe")
            else:
                m._buffers[name] = b


class Captured(list):
    """The list :func:`capture` returns, with the ``mode`` the model ran in."""
    mode = None


def capture(model, x, kinds=None):
    """Run ``model(x)`` without a graph and return [(name, module, output ndarray)] for each
    call of a watched layer (see :func:`watched_layers`), in call order.  The result's
    ``mode`` says which mode the model ran in; buffers are left untouched."""
    seen = Captured()
    seen.mode = mode_of(model)
    with (forward_hooks(model, lambda name, m, out: seen.append((name, m, np.array(out.data))), kinds),
          no_grad(), untouched(model)):
        model(_as_tensor(x))
    return seen


def fresh_batch_norms(model):
    """Names of the eval-mode batch norms with fresh statistics (running mean 0, variance 1)
    and γ = 1, β = 0: each computes x/√(1 + eps), the identity to within eps/2."""
    found = []
    for name, m in model.named_modules():
        if (isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and not m.training and m.track_running_stats
                and not m.running_mean.any() and np.all(m.running_var == 1)
                and (not m.affine or (np.all(m.weight.data == 1) and not m.bias.data.any()))):
            found.append(name or "model")
    return found


def inspect(model, x, loss_fn=None, target=None):
    """Run ``model`` on the batch ``x`` (in its current train/eval mode, which the report
    names) and report per layer output shape, mean, std and fraction of zeros.  Running
    statistics and the global random stream are left as they were.

    With ``loss_fn``: loss = loss_fn(output, target) (or loss_fn(output) if target is None)
    is backpropagated once, after clearing the gradients, and the report adds per layer
    ‖∂L/∂a‖ of its output a and per parameter ‖p‖ and ‖∂L/∂p‖ (the gradients stay in ``p.grad``).
    """
    layers = []

    outputs = []

    def record(name, m, out):
        if isinstance(out, Tensor):
            if out.requires_grad:
                out.retain_grad()             # ∂L/∂a of this layer's output, after the backward
            outputs.append(out)
            a = out.data
            layers.append(LayerStats(name, type(m).__name__, tuple(a.shape), float(a.mean(dtype=np.float64)),
                                     float(a.std(dtype=np.float64)), float(np.count_nonzero(a == 0)) / max(a.size, 1)))

    x = _as_tensor(x)
    mode = mode_of(model)
    fresh = fresh_batch_norms(model)
    notes = [f"{', '.join(fresh)}: eval-mode BatchNorm with fresh statistics (running mean 0, var 1) and "
             "γ = 1, β = 0 is the identity (x/√(1 + eps)), so its row repeats the one before"] if fresh else []
    if loss_fn is None:
        with forward_hooks(model, record), no_grad(), untouched(model):
            model(x)
        return Report(layers, mode=mode, notes=notes)
    model.zero_grad()
    with forward_hooks(model, record), untouched(model):
        out = model(x)
    loss = loss_fn(out) if target is None else loss_fn(out, target)
    loss.backward()
    for stats, a in zip(layers, outputs):
        stats.grad_norm = float(np.linalg.norm(a.grad)) if a.grad is not None else None
    params = [ParamStats(name, tuple(p.shape), float(np.linalg.norm(p.data)),
                         float(np.linalg.norm(p.grad)) if p.grad is not None else 0.0)
              for name, p in model.named_parameters()]
    return Report(layers, params, float(loss.item()), mode, notes)


def _as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))


def conv_relu_stack(depth, channels, weight_init=nn.init.kaiming_normal_):
    """A plain stack of ``depth`` × (Conv2d(channels, channels, 3, padding=1, bias=False), ReLU),
    each conv weight set by ``weight_init(weight)`` (e.g. ``lambda w: nn.init.normal_(w, 0, 0.01)``)."""
    layers = []
    for _ in range(depth):
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        weight_init(conv.weight)
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers)


INITS = {
    "kaiming": nn.init.kaiming_normal_,
    "N(0, 0.01²)": lambda w: nn.init.normal_(w, 0.0, 0.01),
}


def init_depth_study(depth=20, channels=32, inits=None, batch=8, size=16, seed=0):
    """Std of each ReLU's output through :func:`conv_relu_stack` for each weight init.

    ``inits``: label -> weight_init (default :data:`INITS`: Kaiming vs N(0, 0.01²)).
    The input is N(0, 1) of shape (batch, channels, size, size) drawn from ``seed``.
    Returns label -> list of ``depth`` stds (layer 1 first).
    """
    x = new_rng(seed).standard_normal((batch, channels, size, size)).astype(np.float32)
    return {label: inspect(conv_relu_stack(depth, channels, fn), x).column("std", kind="ReLU")
            for label, fn in (INITS if inits is None else inits).items()}


def format_columns(columns, index="layer"):
    """Table of equal-length number columns (label -> values) against a 1-based ``index``."""
    labels = list(columns)
    rows = [(i + 1, *(f"{columns[k][i]:.3e}" for k in labels)) for i in range(len(columns[labels[0]]))]
    return format_table((index, *labels), rows)
