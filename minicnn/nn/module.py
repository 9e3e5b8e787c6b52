"""Module: the base of every layer and model, with PyTorch's registration rules.

Assigning a :class:`Parameter` or a :class:`Module` to an attribute registers
it; ``register_buffer`` registers non-learned state (BatchNorm's running
statistics) that is saved in ``state_dict`` but not returned by
``parameters()``.  Names are dotted paths (``features.0.weight``), exactly as
PyTorch names them, so PyTorch state dicts load with renames only.
"""
import functools
from collections import OrderedDict

import numpy as np

from ..tensor import Function, Tensor, is_grad_enabled
from .parameter import Parameter


class Module:
    """Base class.  Subclasses set attributes in ``__init__`` and define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_backward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---------------------------------------------------------- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        if name in self._buffers and (value is None or isinstance(value, np.ndarray)):
            self._buffers[name] = value
            return
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for store in ("_parameters", "_modules", "_buffers"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._modules, self._buffers):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """Register non-learned state (an ndarray, or None) saved in ``state_dict``."""
        self.__dict__.pop(name, None)
        self._buffers[name] = None if array is None else np.asarray(array)

    def register_parameter(self, name, param):
        """Register a Parameter (or None, for e.g. an absent bias)."""
        if param is None:
            self._parameters[name] = None
        else:
            setattr(self, name, param)

    def add_module(self, name, module):
        self._modules[name] = module

    # ------------------------------------------------------------- traversal
    def named_modules(self, prefix=""):
        """(dotted name, module) for self and every descendant, depth first."""
        stack = [(prefix, self)]
        seen = set()
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            for child_name, child in reversed(mod._modules.items()):
                if child is not None:
                    stack.append((f"{name}.{child_name}" if name else child_name, child))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter), each shared parameter once."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self):
        for mod_name, mod in self.named_modules():
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    # ------------------------------------------------------------------ modes
    def train(self, mode=True):
        """Set training mode (dropout active, BatchNorm uses batch statistics); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter; returns self."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ----------------------------------------------------------------- dtype
    def to(self, dtype):
        """Convert every parameter (and its ``.grad``) and every floating-point buffer to
        ``dtype`` (np.float32 or np.float64), in place; integer buffers such as
        ``num_batches_tracked`` stay as they are.  Returns self.

        The Parameter objects stay the same, so an optimizer built before the conversion
        still holds them, but its state (momentum, Adam's moments) keeps the old dtype:
        build the optimizer after converting.

        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).to(np.float64)
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}.to: expected np.float32 or np.float64, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype, copy=False)
            if p.grad is not None:
                p.grad = p.grad.astype(dtype, copy=False)
        for mod in self.modules():
            for name, b in mod._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    mod._buffers[name] = b.astype(dtype, copy=False)
        return self

    def double(self):
        """``to(np.float64)``: for gradient checks, whose finite differences need float64."""
        return self.to(np.float64)

    def float(self):
        """``to(np.float32)``, the default dtype of layers."""
        return self.to(np.float32)

    # ----------------------------------------------------------------- calls
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        """``forward``, then the forward hooks.  An exception from either keeps its type and
        traceback, and its message names the failing layer (see :func:`annotate_error`)."""
        if self._backward_hooks and is_grad_enabled():
            args = _BackwardHooks(self).inputs(args)
        try:
            out = self.forward(*args, **kwargs)
        except Exception as exc:
            annotate_error(exc, self)
            raise
        for hook in list(self._forward_hooks.values()):
            try:
                result = hook(self, args, out)
            except Exception as exc:
                annotate_error(exc, self, hook=True)
                raise
            if result is not None:
                out = result
        if isinstance(args, _HookedArgs):
            args.hooks.output(out)
        return out

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after each forward; a non-None
        return value replaces the output.  Returns a handle with ``remove()``."""
        key = object()
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    def register_full_backward_hook(self, hook):
        """Call ``hook(module, grad_input, grad_output)`` when backward has computed the
        gradients of this layer's inputs: tuples of dL/d(input) per positional input (None
        for an input that wants none) and of dL/d(output), as ndarrays.  For reading
        (e.g. activation gradients layer by layer); the return value is ignored.  Returns a
        handle with ``remove()``."""
        key = object()
        self._backward_hooks[key] = hook
        return _HookHandle(self._backward_hooks, key)

    # ----------------------------------------------------------- state dicts
    def state_dict(self):
        """Ordered name -> ndarray copy of every parameter and buffer."""
        sd = OrderedDict()
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    sd[pre + name] = p.data.copy()
            for name, b in mod._buffers.items():
                if b is not None:
                    sd[pre + name] = np.array(b, copy=True)
        return sd

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into the parameters and buffers.

        With ``strict`` every key must match and no key may be left over.
        Shapes must always match, and every value must convert to its target's
        dtype without losing anything: real numbers only (no strings, objects
        or complex values), no floats into integer buffers, integers in range,
        floats finite after conversion.  Errors list every problem at once;
        nothing is modified unless the whole dict is valid.  Returns (missing, unexpected).
        """
        targets = {}
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    targets[pre + name] = (mod, name, "param")
            for name, b in mod._buffers.items():
                if b is not None:
                    targets[pre + name] = (mod, name, "buffer")
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        problems, converted = [], {}
        for k, (mod, name, kind) in targets.items():
            if k not in state_dict:
                continue
            have = mod._parameters[name].data if kind == "param" else np.asarray(mod._buffers[name])
            try:
                got = np.asarray(state_dict[k])
            except ValueError as e:  # ragged nested lists
                problems.append(f"  {k}: not an array ({e})")
                continue
            if have.shape != got.shape:
                problems.append(f"  {k}: checkpoint shape {got.shape}, model shape {have.shape}")
                continue
            # Converting first lets the range check see what would actually be stored.
            accepted = {"f": "biuf", "i": "biu", "u": "biu", "b": "b"}.get(have.dtype.kind, "")
            if got.dtype.kind not in accepted:
                lost = " (the imaginary part would be lost)" if got.dtype.kind == "c" else ""
                problems.append(f"  {k}: dtype {got.dtype} cannot be loaded into the {have.dtype} {kind}{lost}")
                continue
            if have.dtype.kind in "iu" and got.size and got.dtype.kind != "b":
                lo, hi = np.iinfo(have.dtype).min, np.iinfo(have.dtype).max
                if int(got.min()) < lo or int(got.max()) > hi:
                    problems.append(f"  {k}: values outside the range of the {have.dtype} {kind}")
                    continue
            value = np.array(got, dtype=have.dtype)
            if have.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int(value.size - np.count_nonzero(np.isfinite(value)))
                problems.append(f"  {k}: not finite ({bad} NaN or infinite values as {have.dtype})")
                continue
            converted[k] = value
        if strict and missing:
            problems.append("  missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("  unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed:\n" + "\n".join(problems))
        for k, value in converted.items():
            mod, name, kind = targets[k]
            if kind == "param":
                mod._parameters[name].data = value
            else:
                mod._buffers[name] = value
        return missing, unexpected

    # ------------------------------------------------------------------ repr
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        fused = "[fused] " if "forward" in self.__dict__ else ""     # nn.fuse switched it to fused_forward
        head = f"{type(self).__name__}({fused}{self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class _Identity(Function):
    """y = x: a node of its own, so that a layer's input gradient is its own contribution."""
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, g):
        return g


class _HookedArgs(tuple):
    """A layer's positional arguments, the tensors among them behind an _Identity each."""


class _BackwardHooks:
    """One call's backward hooks: dL/d(output) is kept when it arrives, and the hooks run
    when the last input that wants a gradient has received its own (or at once, if none does)."""

    def __init__(self, module):
        self.module, self.grad_output = module, None

    def inputs(self, args):
        wrapped = [_Identity.apply(a) if isinstance(a, Tensor) and a.requires_grad else a for a in args]
        self.grad_input = [None] * len(args)
        self.waiting = {i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad}
        for i in self.waiting:
            wrapped[i].register_hook(functools.partial(self._input_grad, i))
        hooked = _HookedArgs(wrapped)
        hooked.hooks = self
        return hooked

    def output(self, out):
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._output_grad)

    def _output_grad(self, g):
        self.grad_output = (g,)
        if not self.waiting:
            self._fire()

    def _input_grad(self, i, g):
        self.grad_input[i] = g
        self.waiting.discard(i)
        if not self.waiting:
            self._fire()

    def _fire(self):
        for hook in list(self.module._backward_hooks.values()):
            hook(self.module, tuple(self.grad_input), self.grad_output)


class _HookHandle:
    def __init__(self, hooks, key):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)


# ------------------------------------------------------------- errors that name the layer
def annotate_error(exc, module, hook=False):
    """Name ``module`` in ``exc`` as the exception passes up through ``module.__call__``.

    The first call to see ``exc`` belongs to the failing layer: it is recorded as
    ``exc.minicnn_module``.  Each enclosing call finds the module seen last among its
    own descendants, extends the dotted path ``exc.minicnn_path`` and rewrites the
    message's prefix, so the outermost call reads ``features.3 (Conv2d): <message>``
    (``forward hook of features.3 (Conv2d): ...`` when a hook failed).  The path is
    searched only here, so a forward that succeeds pays nothing.  A layer called on its
    own keeps its message.  Fused code that runs a layer's computation without calling
    it (``nn.conv_bn``) calls this with that layer, so the error still names it.

    The exception object, its type and its traceback stay the same.  Where the message
    is not a single string argument (KeyError, OSError), handlers read the arguments:
    they stay, and the layer is named in a note (``__notes__``) instead.
    """
    failure = exc.__dict__.get("_minicnn_failure")
    if failure is None:
        failure = _Failure(exc, module, hook)
        exc._minicnn_failure = failure
    elif failure.anchor is module:
        return
    else:
        path = next((name for name, m in module.named_modules() if m is failure.anchor), None)
        if path is None:     # the last module seen is not registered under this one (e.g. in a plain list)
            return
        failure.path = f"{path}.{failure.path}" if failure.path else path
        failure.anchor = module
    exc.minicnn_module, exc.minicnn_path = failure.module, failure.path
    failure.rename(exc)


class _Failure:
    """The failing module, the outermost module seen so far (``anchor``) and the path between them."""

    def __init__(self, exc, module, hook):
        self.module, self.anchor, self.path, self.hook = module, module, "", hook
        plain = len(exc.args) == 1 and isinstance(exc.args[0], str) and type(exc).__str__ is BaseException.__str__
        self.message = exc.args[0] if plain else None
        self.note = None

    def where(self):
        name = type(self.module).__name__
        where = f"{self.path} ({name})" if self.path else name
        return f"forward hook of {where}" if self.hook else where if self.path else None

    def rename(self, exc):
        where = self.where()
        if self.message is not None:
            exc.args = (f"{where}: {self.message}" if where else self.message,)
            return
        notes = exc.__dict__.setdefault("__notes__", [])
        if self.note in notes:
            notes.remove(self.note)
        self.note = None if where is None else f"in {where}"
        if self.note:
            notes.append(self.note)
