"""Gradient checks for what users write: a whole layer or model (:func:`gradcheck_module`)
and a Function with its own backward (:func:`check_function`)."""
import inspect

import numpy as np

from .. import random as mc_random
from ..gradcheck import GradcheckError, check_gradients
from ..tensor import Context, Tensor
from .compare import assert_close


def gradcheck_module(module, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, full_limit=4096, directions=3, seed=0):
    """Check the gradient of every floating input and every trainable parameter of ``module``
    against finite differences; returns a :class:`~minicnn.gradcheck.GradcheckResult` (its
    ``method`` says whether the full Jacobian or ``directions`` random projections per input
    were compared) or raises :class:`~minicnn.gradcheck.GradcheckError` naming the input
    (``input 0``) or the parameter by its dotted name (``parameter 2.weight``) and the worst
    element.

    Inputs are ndarrays or Tensors; floating ones are checked, others (integer labels, a
    Tensor with ``requires_grad=False``) pass through as they are.  Use float64 throughout (``module.to(np.float64)``).  Every forward
    starts from the same buffers and the same global random state, so batch norm's
    running statistics do not drift across the hundreds of forwards and dropout draws the
    same mask each time; afterwards buffers, random state and the parameters' ``.grad``
    are as they were.

    >>> block = minicnn.nn.Sequential(minicnn.nn.Conv2d(2, 3, 3, padding=1), minicnn.nn.BatchNorm2d(3)).double()
    >>> gradcheck_module(block, np.random.default_rng(0).standard_normal((2, 2, 4, 4))).method
    'random directions'
    """
    tensors = [Tensor(np.array(_raw(x)), requires_grad=True) if _floating(x) and getattr(x, "requires_grad", True)
               else x for x in inputs]
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    names = [f"input {i}" for i in range(len(tensors))] + [f"parameter {name}" for name, _ in named]
    buffers = {name: np.array(b, copy=True) for name, b in module.named_buffers()}
    owners = dict(module.named_modules())
    random_state = mc_random.get_state()
    saved_grads = [p.grad for _, p in named]

    def restore():
        for name, value in buffers.items():
            owner, _, attr = name.rpartition(".")
            setattr(owners[owner], attr, value.copy())
        mc_random.set_state(random_state)

    def forward(*args):
        restore()
        return module(*args[:len(tensors)])

    try:
        return check_gradients(forward, tensors + [p for _, p in named], names=names, eps=eps, atol=atol,
                               rtol=rtol, full_limit=full_limit, directions=directions, seed=seed, stacklevel=3)
    finally:
        restore()
        for (_, p), g in zip(named, saved_grads):
            p.grad = g


def check_function(function, *inputs, tolerance=None, seed=0, **options):
    """Check a :class:`~minicnn.Function` subclass on ``inputs`` (with keyword ``options``
    passed to its forward), raising :class:`~minicnn.gradcheck.GradcheckError` at the first
    problem:

    1. ``backward`` returns one gradient per positional input of ``forward`` (None allowed
       only for inputs that take no gradient), each of its input's shape and dtype;
    2. the gradients equal central finite differences in float64 (inputs named by
       forward's parameter names, the worst element located);
    3. forward and backward in float32 keep float32 and agree with float64 to ``float32``
       (relative to the largest value).

    Floating inputs (ndarrays, Tensors that require grad) are differentiated; others (integer
    indices, a Tensor with ``requires_grad=False``) are passed as they are.  ``tolerance``
    overrides ``dict(eps=1e-6, atol=1e-5, rtol=1e-3, float32=1e-4)``.  Returns True.

    >>> class Square(minicnn.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         x, = ctx.saved
    ...         return 2 * x * g
    >>> check_function(Square, np.array([0.5, -1.0, 2.0]))
    True
    """
    tol = dict(eps=1e-6, atol=1e-5, rtol=1e-3, float32=1e-4, **(tolerance or {}))
    differentiable = [_floating(x) and getattr(x, "requires_grad", True) for x in inputs]
    names = _input_names(function, len(inputs))
    results = {}
    for dtype in (np.float64, np.float32):
        raw = [_raw(x).astype(dtype) if _floating(x) else _raw(x) for x in inputs]
        results[dtype] = _forward_backward(function, raw, differentiable, names, options, seed, dtype)
    tensors = [Tensor(_raw(x).astype(np.float64), requires_grad=d) if _floating(x) else x
               for x, d in zip(inputs, differentiable)]
    if any(differentiable):
        check_gradients(lambda *ts: function.apply(*ts, **options), tensors, names=names, eps=tol["eps"],
                        atol=tol["atol"], rtol=tol["rtol"], seed=seed)
    (out64, grads64), (out32, grads32) = results[np.float64], results[np.float32]
    for what, got, want in [("forward output", out32, out64)] + [
            (f"gradient of {names[i]}", g32, g64) for i, (g32, g64) in enumerate(zip(grads32, grads64))
            if differentiable[i]]:
        scale = tol["float32"] * max(1.0, float(np.abs(want).max(initial=0.0)))
        try:
            assert_close(got, want, rtol=tol["float32"], atol=scale, name=f"{function.__name__} {what}")
        except AssertionError as exc:
            raise GradcheckError(f"float32 disagrees with float64: {exc}") from None
    return True


def _forward_backward(function, raw, differentiable, names, options, seed, dtype):
    """forward and backward called directly, as Function.apply and Tensor.backward would, with
    every structural check; returns (output, gradients).  The output gradient is drawn from
    ``seed``, the same values in either dtype."""
    label = f"{function.__name__} in {np.dtype(dtype)}"
    ctx = Context(tuple(differentiable))
    out = function.forward(ctx, *raw, **options)
    if not isinstance(out, np.ndarray):
        raise GradcheckError(f"{label}: forward returned {type(out).__name__}, expected an ndarray")
    if out.dtype != dtype:
        raise GradcheckError(f"{label}: forward returned dtype {out.dtype} for {np.dtype(dtype)} inputs")
    g = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
    grads = function.backward(ctx, g)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(raw):
        raise GradcheckError(f"{label}: backward returned {len(grads)} gradient(s) for {len(raw)} input(s) "
                             f"({', '.join(names)}): return one per positional input of forward, None where "
                             "there is none")
    for name, x, d, gx in zip(names, raw, differentiable, grads):
        if not d:
            continue
        if gx is None:
            raise GradcheckError(f"{label}: backward returned None for {name}, which needs a gradient")
        if not isinstance(gx, np.ndarray) or gx.shape != x.shape or gx.dtype != x.dtype:
            got = f"{type(gx).__name__} of shape {getattr(gx, 'shape', None)}, dtype {getattr(gx, 'dtype', None)}"
            raise GradcheckError(f"{label}: the gradient of {name} is {got}; expected an ndarray of "
                                 f"the input's shape {x.shape} and dtype {x.dtype}")
    return out, grads


def _floating(x):
    return isinstance(x, (np.ndarray, Tensor)) and np.issubdtype(x.dtype, np.floating)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _input_names(function, n):
    """'input 0 (x)', ... from forward's parameters after ctx; plain 'input i' past them."""
    params = [p.name for p in inspect.signature(function.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
    return [f"input {i} ({params[i]})" if i < len(params) else f"input {i}" for i in range(n)]
