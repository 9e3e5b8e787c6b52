"""Tensor and reverse-mode automatic differentiation.

A :class:`Tensor` wraps a NumPy array.  Every differentiable operation is a
:class:`Function` subclass whose ``forward`` and ``backward`` sit side by side
(see ``minicnn/ops``).  Applying a Function to tensors that require grad records
a node on the output: the Function, its context (what forward saved) and its
input tensors.  ``loss.backward()`` then walks that graph once, in reverse
topological order, without recursion:

    dL/d(input_i) = sum over uses of  Function.backward(ctx, dL/d(output))[i]

Gradients of leaf tensors (parameters, inputs) accumulate in ``.grad`` across
backward calls until cleared, as in PyTorch; gradients of intermediate tensors
are freed as soon as they have been consumed, and so is what each node saved.
"""
import functools
import threading

import numpy as np

_grad_mode = threading.local()      # per thread, as PyTorch's: worker threads record nothing


def is_grad_enabled():
    """True unless inside :class:`no_grad` (on this thread)."""
    return getattr(_grad_mode, "enabled", True)


class no_grad:
    """Context manager and decorator that stops graph recording on this thread.

    >>> with no_grad():
    ...     y = model(x)        # no graph, no saved buffers
    """

    def __enter__(self):
        self._prev = is_grad_enabled()
        _grad_mode.enabled = False

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        return wrapper


class Context:
    """What a Function's forward hands to its backward.

    ``needs_input_grad[i]`` says whether positional input ``i`` wants a
    gradient (so backward can skip work); all False when no graph is recorded
    (``no_grad``), so forward can skip keeping what only backward needs;
    ``save_for_backward`` stores arrays;
    any other attribute (``ctx.stride = ...``) may be set freely.
    """

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved = ()

    def save_for_backward(self, *objs):
        self.saved = objs


class Function:
    """Base class of differentiable operations.

    Subclasses define two static methods::

        forward(ctx, *inputs, **options) -> ndarray
        backward(ctx, grad_out) -> one gradient per positional input

    ``forward`` receives raw ndarrays in place of Tensor inputs; ``options``
    (strides, axes, ...) are keyword arguments and get no gradient.
    ``backward`` returns a tuple (or a single array for one input) with an
    ndarray of the input's shape, or None, per positional input.
    """

    @staticmethod
    def forward(ctx, *inputs, **options):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        """Run forward on ``inputs`` and record the node if a gradient is needed."""
        enabled = is_grad_enabled()
        needs = tuple(enabled and isinstance(a, Tensor) and a.requires_grad for a in inputs)
        ctx = Context(needs)
        raw = [a.data if isinstance(a, Tensor) else a for a in inputs]
        out = Tensor(cls.forward(ctx, *raw, **options))
        if any(needs):
            out.requires_grad = True
            out._fn, out._ctx = cls, ctx
            out._parents = tuple(a if isinstance(a, Tensor) else None for a in inputs)
        return out


def _as_array(data, dtype):
    """ndarray from ``data``: ndarrays keep their dtype, Python floats become float32."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    arr = np.asarray(data)
    if arr.dtype == np.float64 and not isinstance(data, (np.ndarray, np.generic)):
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    Attributes: ``data`` (ndarray), ``grad`` (ndarray or None, same shape),
    ``requires_grad`` (bool).  Build one with :func:`tensor`.
    """

    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor's reflected op
    __hash__ = object.__hash__  # == is elementwise, identity is the hash

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self._fn = self._ctx = None
        self._parents = ()
        self._hooks = ()               # gradient hooks (register_hook); retain_grad adds one
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ---------------------------------------------------------------- basics
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._fn is None)

    def __len__(self):
        return len(self.data)

    def __bool__(self):
        return bool(self.data)  # NumPy's rule: ambiguous for more than one element

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad})"

    def numpy(self):
        """The underlying ndarray (shared, not copied)."""
        return self.data

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def detach(self):
        """A new leaf tensor sharing ``data``, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` in place (leaf tensors only); returns self."""
        if not self.is_leaf:
            raise RuntimeError("requires_grad_ can only be changed on leaf tensors")
        if requires_grad and not np.issubdtype(self.dtype, np.floating):
            raise TypeError(f"only floating-point tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self):
        self.grad = None

    def register_hook(self, hook):
        """Call ``hook(grad)`` with dL/d(self) whenever backward computes it; a non-None
        return value replaces the gradient.  Returns a handle with ``remove()``."""
        if not self.requires_grad:
            raise RuntimeError("register_hook on a tensor that does not require grad")
        self._hooks = self._hooks + (hook,)
        return _TensorHookHandle(self, hook)

    def retain_grad(self):
        """Keep dL/d(self) in ``.grad`` for an intermediate tensor too (as leaves do),
        accumulated across backward calls; e.g. an activation's gradient."""
        if self.is_leaf or any(getattr(h, "retains", False) for h in self._hooks):
            return
        def retain(grad):
            _accumulate(self, grad)
        retain.retains = True
        self.register_hook(retain)

    # -------------------------------------------------------------- autograd
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is dL/d(self); it defaults to 1 for a one-element tensor.
        The graph's saved buffers are freed unless ``retain_graph``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() needs a grad argument for a non-scalar output of shape {self.shape}")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape}, expected {self.shape}")
        if self.is_leaf:
            _accumulate(self, _run_hooks(self, grad))
            return
        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:  # every path from this node to the output is grad-free
                continue
            g = _run_hooks(node, g)
            if node._ctx is None:
                raise RuntimeError("backward through a graph whose buffers were freed; "
                                   "pass retain_graph=True to the first backward()")
            in_grads = node._fn.backward(node._ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) != len(node._parents):
                raise RuntimeError(f"{node._fn.__name__}.backward returned {len(in_grads)} gradient(s) for "
                                   f"{len(node._parents)} input(s): return one per positional input of "
                                   "forward (None where there is none)")
            for parent, pg in zip(node._parents, in_grads):
                if parent is None or pg is None or not parent.requires_grad:
                    continue
                if pg.shape != parent.shape:
                    raise RuntimeError(f"{node._fn.__name__}.backward returned a gradient of shape "
                                       f"{pg.shape} for an input of shape {parent.shape}")
                if parent.is_leaf:
                    _accumulate(parent, _run_hooks(parent, pg))
                else:
                    key = id(parent)
                    grads[key] = grads[key] + pg if key in grads else pg
            if not retain_graph:
                node._ctx, node._parents = None, ()

    # Arithmetic operators and array methods (+, @, [], .sum(), .reshape(), ...) are
    # attached by minicnn.ops, where their Functions live: this module knows no op.

    # Comparisons give boolean tensors and no gradient.
    def __lt__(self, other): return Tensor(self.data < _raw(other))
    def __le__(self, other): return Tensor(self.data <= _raw(other))
    def __gt__(self, other): return Tensor(self.data > _raw(other))
    def __ge__(self, other): return Tensor(self.data >= _raw(other))
    def __eq__(self, other): return Tensor(self.data == _raw(other))
    def __ne__(self, other): return Tensor(self.data != _raw(other))


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _run_hooks(t, grad):
    for hook in t._hooks:
        out = hook(grad)
        if out is not None:
            grad = np.asarray(out.data if isinstance(out, Tensor) else out, dtype=grad.dtype)
    return grad


class _TensorHookHandle:
    def __init__(self, t, hook):
        self._t, self._hook = t, hook

    def remove(self):
        self._t._hooks = tuple(h for h in self._t._hooks if h is not self._hook)


def _accumulate(leaf, grad):
    """leaf.grad += grad, never aliasing an array the graph still uses."""
    if leaf.grad is None:
        leaf.grad = np.array(grad, dtype=leaf.dtype)
    else:
        leaf.grad += grad


def _topological_order(root):
    """Interior nodes reachable from ``root``, each after all of its inputs.

    Iterative depth-first post-order, so a chain of any length is fine.
    """
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in node._parents:
            if p is not None and not p.is_leaf and id(p) not in seen:
                stack.append((p, False))
    return order


def tensor(data, requires_grad=False, dtype=None):
    """Make a Tensor.  Python floats become float32; ndarrays keep their dtype.

    >>> x = tensor([[1.0, 2.0]], requires_grad=True)   # float32
    """
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)
