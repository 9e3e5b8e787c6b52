"""ONNX export: a minicnn model as an ONNX graph (the optional extra ``onnx``).

``export_onnx(model, sample_input, path)`` writes the model's *plain* graph (never the
fused one: ``nn.fuse`` only changes how minicnn runs it), in eval mode: batch norms with
their running statistics, dropout as the identity.  The batch axis is left free (``N``).

How the graph is found.  The exporter walks the module tree from the top, with an
:class:`OnnxGraph` ``g`` that both emits ONNX nodes and computes their values on
``sample_input``:

- the layers of :mod:`minicnn.nn` it knows map to one node each (table below);
  ``Sequential`` is its layers in order;
- a module with other wiring (a residual block, a model whose ``forward`` adds, pools
  or slices between its layers) defines ``onnx_forward(self, g, x)``, its forward spelt
  with ``g``: ``g(layer, x)``, ``g.relu``, ``g.relu6``, ``g.add``, ``g.flatten``,
  ``g.global_avg_pool``, ``g.slice``, ``g.pad``;
- anything else is refused, naming the layer's path and type.

At the end the graph's value on ``sample_input`` must equal ``model(sample_input)``
(to 1e-4 relative to its scale), so an ``onnx_forward`` that drifts from its module's
``forward`` fails the export instead of writing a wrong file.

==========================  ===================================================
minicnn                     ONNX (opset 17)
==========================  ===================================================
Conv2d                      Conv (pads from 'same'/'valid'/ints: [top, left,
                            bottom, right], TensorFlow's odd pixel at the end)
BatchNorm1d/2d              BatchNormalization (running statistics)
ReLU / ReLU6                Relu / Clip(0, 6)
MaxPool2d / AvgPool2d       MaxPool / AveragePool (ceil_mode, count_include_pad)
GlobalAvgPool2d, adaptive 1 GlobalAveragePool
Linear                      Gemm (transB=1)
Flatten                     Flatten (axis=start_dim; end_dim must be -1)
Dropout, Dropout2d,Identity (nothing: eval mode)
g.add / g.slice / g.pad     Add / Slice / Pad (constant 0)
==========================  ===================================================
"""
from pathlib import Path

import numpy as np

from .. import nn
from ..ops.conv import conv_padding
from ..tensor import Tensor, no_grad

__all__ = ["OPSET", "OnnxGraph", "export_onnx"]

OPSET = 17
INSTALL_HINT = "ONNX export needs the 'onnx' package: pip install onnx (or 'minicnn[onnx]')"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ModuleNotFoundError(INSTALL_HINT) from None
    return onnx


def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


class Value:
    """A tensor of the graph: its ONNX name and its value on the sample input."""

    def __init__(self, name, value):
        self.name, self.value = name, value


class OnnxGraph:
    """Nodes and initializers of the graph being built for ``model``; see the module docstring."""

    def __init__(self, model):
        self.onnx = _onnx()
        self.nodes, self.initializers = [], []
        self.paths = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
        self.array_names = {}
        for name, arr in [*model.named_parameters(), *model.named_buffers()]:
            self.array_names.setdefault(id(arr.data if isinstance(arr, Tensor) else arr), name)
        self._used = set()

    # ------------------------------------------------------------------ plumbing
    def _fresh(self, hint):
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def const(self, array, hint, dtype=np.float32):
        """An initializer holding ``array`` (a parameter keeps its state-dict name)."""
        data = array.data if isinstance(array, Tensor) else array
        name = self._fresh(self.array_names.get(id(data), hint))
        tensor = self.onnx.numpy_helper.from_array(np.array(data, dtype, order="C"), name)   # 0-d stays 0-d
        self.initializers.append(tensor)
        return name

    def node(self, op, inputs, value, hint, **attrs):
        out = self._fresh(hint)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return Value(out, value)

    def path(self, module):
        return self.paths.get(id(module), type(module).__name__)

    # ------------------------------------------------------------------ modules
    def __call__(self, module, x):
        """Emit ``module`` applied to ``x``; returns its output Value."""
        custom = getattr(module, "onnx_forward", None)
        if custom is not None:
            return custom(self, x)
        if isinstance(module, nn.Sequential):
            for layer in module:
                x = self(layer, x)
            return x
        if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            return x
        for kind, emit in _LAYERS:
            if isinstance(module, kind):
                with no_grad():
                    value = module(Tensor(x.value)).data
                return emit(self, module, x, value, self.path(module))
        raise ValueError(f"cannot export layer {self.path(module)!r} ({type(module).__name__}) to ONNX: "
                         f"not one of the layers of minicnn.io.onnx_export, and it defines no onnx_forward")

    # ------------------------------------------------------------------ functions between layers
    def relu(self, x, name="relu"):
        return self.node("Relu", [x.name], np.maximum(x.value, 0), name)

    def relu6(self, x, name="relu6"):
        lo, hi = self.const(np.float32(0), "zero"), self.const(np.float32(6), "six")
        return self.node("Clip", [x.name, lo, hi], np.clip(x.value, 0, 6), name)

    def add(self, a, b):
        return self.node("Add", [a.name, b.name], a.value + b.value, "add")

    def flatten(self, x, axis=1):
        return self.node("Flatten", [x.name], x.value.reshape(*x.value.shape[:axis], -1), "flatten", axis=axis)

    def global_avg_pool(self, x):
        return self.node("GlobalAveragePool", [x.name], x.value.mean(axis=(2, 3), keepdims=True), "pool")

    def slice(self, x, axes, starts=None, ends=None, steps=None):
        """x[..., start:end:step, ...] along ``axes`` (defaults: whole axes, step 1)."""
        n = len(axes)
        starts = [0] * n if starts is None else list(starts)
        ends = [np.iinfo(np.int64).max] * n if ends is None else list(ends)
        steps = [1] * n if steps is None else list(steps)
        index = [slice(None)] * x.value.ndim
        for a, s, e, k in zip(axes, starts, ends, steps):
            index[a] = slice(s, e, k)
        ints = [self.const(np.array(v, np.int64), h, np.int64)
                for v, h in ((starts, "starts"), (ends, "ends"), (list(axes), "axes"), (steps, "steps"))]
        return self.node("Slice", [x.name, *ints], x.value[tuple(index)], "slice")

    def pad(self, x, widths):
        """Zero padding: ``widths`` one (before, after) pair per axis, as ``np.pad``."""
        pads = [int(b) for b, _ in widths] + [int(a) for _, a in widths]
        name = self.const(np.array(pads, np.int64), "pads", np.int64)
        return self.node("Pad", [x.name, name], np.pad(x.value, widths), "pad", mode="constant")


# ---------------------------------------------------------------------- one node per layer
def _conv(g, m, x, value, path):
    (top, bottom), (left, right) = conv_padding(m.padding, x.value.shape[2:], m.kernel_size, m.stride, m.dilation,
                                                path)
    inputs = [x.name, g.const(m.weight, f"{path}.weight")]
    if m.bias is not None:
        inputs.append(g.const(m.bias, f"{path}.bias"))
    return g.node("Conv", inputs, value, path, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  dilations=list(m.dilation), group=m.groups, pads=[top, left, bottom, right])


def _batch_norm(g, m, x, value, path):
    c = m.num_features
    if m.running_mean is None:
        raise ValueError(f"cannot export layer {path!r}: a batch norm without running statistics "
                         "normalizes with each batch's own, which ONNX inference does not")
    weight = m.weight if m.weight is not None else np.ones(c, np.float32)
    bias = m.bias if m.bias is not None else np.zeros(c, np.float32)
    inputs = [x.name, g.const(weight, f"{path}.weight"), g.const(bias, f"{path}.bias"),
              g.const(m.running_mean, f"{path}.running_mean"), g.const(m.running_var, f"{path}.running_var")]
    return g.node("BatchNormalization", inputs, value, path, epsilon=float(m.eps))


def _pool_attrs(m, path):
    k = _pair(m.kernel_size)
    stride = k if m.stride is None else _pair(m.stride)
    ph, pw = _pair(m.padding)
    return dict(kernel_shape=list(k), strides=list(stride), pads=[ph, pw, ph, pw], ceil_mode=int(m.ceil_mode))


def _max_pool(g, m, x, value, path):
    return g.node("MaxPool", [x.name], value, path, **_pool_attrs(m, path))


def _avg_pool(g, m, x, value, path):
    return g.node("AveragePool", [x.name], value, path, count_include_pad=int(m.count_include_pad),
                  **_pool_attrs(m, path))


def _adaptive_avg_pool(g, m, x, value, path):
    if _pair(m.output_size) != (1, 1):
        raise ValueError(f"cannot export layer {path!r}: AdaptiveAvgPool2d({m.output_size!r}); only output "
                         "size 1 (global average pooling) is exported")
    return g.node("GlobalAveragePool", [x.name], value, path)


def _linear(g, m, x, value, path):
    inputs = [x.name, g.const(m.weight, f"{path}.weight")]
    if m.bias is not None:
        inputs.append(g.const(m.bias, f"{path}.bias"))
    return g.node("Gemm", inputs, value, path, transB=1)


def _flatten(g, m, x, value, path):
    if m.end_dim not in (-1, x.value.ndim - 1):
        raise ValueError(f"cannot export layer {path!r}: Flatten(end_dim={m.end_dim}); only end_dim=-1")
    return g.node("Flatten", [x.name], value, path, axis=m.start_dim % x.value.ndim)


_LAYERS = ((nn.Conv2d, _conv), (nn.BatchNorm1d, _batch_norm), (nn.BatchNorm2d, _batch_norm),
           (nn.MaxPool2d, _max_pool), (nn.AvgPool2d, _avg_pool), (nn.AdaptiveAvgPool2d, _adaptive_avg_pool),
           (nn.Linear, _linear), (nn.Flatten, _flatten),
           (nn.ReLU, lambda g, m, x, value, path: g.relu(x, path)),
           (nn.ReLU6, lambda g, m, x, value, path: g.relu6(x, path)))


# ---------------------------------------------------------------------- the file
def _graph_value(model, sample, input_name):
    g = OnnxGraph(model)
    g._used.add(input_name)
    out = g(model, Value(input_name, sample))
    with no_grad():
        expected = model(Tensor(sample)).data
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    diff = float(np.abs(out.value - expected).max(initial=0.0)) if out.value.shape == expected.shape else np.inf
    if diff > 1e-4 * scale:
        raise ValueError(f"the exported graph of {type(model).__name__} computes something else than its forward "
                         f"(output {out.value.shape} vs {expected.shape}, max difference {diff:.3g}): an "
                         "onnx_forward does not match its module's forward")
    return g, out


def export_onnx(model, sample_input, path, opset=OPSET, input_name="input", output_name="logits"):
    """Write ``model`` as an ONNX file at ``path``; returns the path.

    sample_input: one batch (N, C, H, W) of float32 (a Tensor or an array), used to follow
        the shapes ('same' padding depends on them) and to check the graph against the
        model.  The exported batch axis is free; the other axes are the sample's.
    The model is exported in eval mode (each module's mode is restored afterwards); the
    file passes ``onnx.checker``.  Needs the ``onnx`` package (``pip install 'minicnn[onnx]'``).
    """
    onnx = _onnx()
    sample = np.ascontiguousarray(sample_input.data if isinstance(sample_input, Tensor) else sample_input,
                                  dtype=np.float32)
    if sample.ndim < 2:
        raise ValueError(f"sample_input must be a batch (N, ...), got shape {sample.shape}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        g, out = _graph_value(model, sample, input_name)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    h = onnx.helper
    g.nodes.append(h.make_node("Identity", [out.name], [output_name], name=output_name))
    graph = h.make_graph(
        g.nodes, type(model).__name__, [h.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT,
                                                                 ["N", *sample.shape[1:]])],
        [h.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, ["N", *out.value.shape[1:]])],
        initializer=g.initializers)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="minicnn")
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path
