"""summary(model, input_shape): a Keras-style table of layers, output shapes and parameters.

One dummy batch (of one zero image) runs through the model in eval mode
without a graph; forward hooks on every leaf layer (and every layer holding its
own parameters) record each call's output shape, in call order.  A layer
called twice appears twice; a layer never called appears at the end with
output "-".  Totals count each parameter once:

    trainable = Σ size of parameters with requires_grad;  non-trainable = the frozen rest.

Buffers (BatchNorm's running statistics) are state, not parameters, and are
listed on their own line.
"""
import numpy as np

from ..tensor import Tensor
from .loop import _EvalMode


def _shape(out):
    if isinstance(out, Tensor):
        return "(None, " + ", ".join(str(d) for d in out.shape[1:]) + ")" if out.ndim > 1 else "(None,)"
    if isinstance(out, (tuple, list)):
        return "[" + ", ".join(_shape(o) for o in out) + "]"
    return type(out).__name__


def _own_params(module):
    return sum(p.size for p in module._parameters.values() if p is not None)


def summary(model, input_shape, dtype=np.float32):
    """The table as a string.  ``input_shape`` is one input without the batch axis,
    e.g. (1, 28, 28)."""
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input_shape must be positive sizes without the batch axis, got {input_shape!r}")
    layers = [(name or "model", m) for name, m in model.named_modules()
              if not m._modules or any(p is not None for p in m._parameters.values())]
    rows, handles = [], []
    for name, m in layers:
        handles.append(m.register_forward_hook(
            lambda mod, inputs, out, name=name: rows.append((name, mod, _shape(out)))))
    try:
        with _EvalMode(model):
            model(Tensor(np.zeros((1, *shape), dtype)))
    finally:
        for h in handles:
            h.remove()
    called = {id(m) for _, m, _ in rows}
    rows += [(name, m, "-") for name, m in layers if id(m) not in called]
    table = [(f"{name} ({type(m).__name__})", out, f"{_own_params(m):,}") for name, m, out in rows]
    params = list(model.parameters())
    trainable = sum(p.size for p in params if p.requires_grad)
    total = sum(p.size for p in params)
    buffers = sum(np.size(b) for _, b in model.named_buffers())
    head = ("Layer (type)", "Output Shape", "Param #")
    w0 = max(len(head[0]), *(len(r[0]) for r in table)) + 2
    w1 = max(len(head[1]), *(len(r[1]) for r in table)) + 2
    w2 = max(len(head[2]), *(len(r[2]) for r in table))
    line = "=" * (w0 + w1 + w2)
    out = [f'Model: "{type(model).__name__}"', line, f"{head[0]:<{w0}}{head[1]:<{w1}}{head[2]:>{w2}}", line]
    out += [f"{a:<{w0}}{b:<{w1}}{c:>{w2}}" for a, b, c in table]
    out += [line, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}"]
    if buffers:
        out.append(f"Buffers (running statistics, not parameters): {buffers:,}")
    out.append("_" * (w0 + w1 + w2))
    return "\n".join(out)
