"""Check an op's analytic gradient against central finite differences.

    from minicnn.gradcheck import gradcheck
    x = minicnn.tensor(np.random.randn(3, 4), requires_grad=True, dtype=np.float64)
    gradcheck(lambda x: minicnn.ops.tanh(x), [x])          # True, or raises

Central differences:  ∂f/∂x_i ≈ (f(x + ε e_i) - f(x - ε e_i)) / 2ε, error O(ε²).

* Small problems (inputs × outputs <= ``full_limit``): the full Jacobian is
  built both ways, one backward per output element and two forwards per input
  element, and compared entry by entry.
* Larger ones: a random-direction (vector-Jacobian) check.  With random unit
  vectors v (output) and u_k (one per input), vᵀ J_k u_k from one backward must
  equal (vᵀf(x_k + εu_k) - vᵀf(x_k - εu_k)) / 2ε, for every input k.  Repeated
  ``directions`` times.  When a projection disagrees, vᵀJ_k is computed element by
  element (inputs up to ``LOCATE_LIMIT`` elements) to name the worst element.

An entry passes when |analytic - numeric| <= atol + rtol·|numeric|.  Use
float64: in float32 the rounding error of f (~1e-7·|f|/ε) swamps the check,
so a float32 input gets a warning.  :func:`check_gradients` does the same and
returns how it checked (:class:`GradcheckResult`); ``minicnn.testing.gradcheck_module``
checks a layer's inputs and parameters by name.
"""
import warnings
from typing import NamedTuple

import numpy as np

from .tensor import Tensor, no_grad

LOCATE_LIMIT = 4096     # elements of one input: beyond, a failing projection is not localized


class GradcheckError(AssertionError):
    """Raised when analytic and numeric gradients disagree."""


class GradcheckResult(NamedTuple):
    """How a passing check was made: ``method`` is "full Jacobian" or "random directions"
    (then ``directions`` projections per input), ``checked`` the names of the inputs."""
    method: str
    directions: int
    checked: tuple


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, full_limit=4096, directions=3, seed=0):
    """Compare ``fn``'s backward with finite differences for every input that requires grad.

    ``fn(*inputs)`` must return a Tensor.  Returns True or raises
    :class:`GradcheckError` naming the input, the max abs/rel error and where.
    """
    check_gradients(fn, inputs, eps=eps, atol=atol, rtol=rtol, full_limit=full_limit,
                    directions=directions, seed=seed, stacklevel=3)
    return True


def check_gradients(fn, inputs, names=None, eps=1e-6, atol=1e-5, rtol=1e-3, full_limit=4096, directions=3,
                    seed=0, stacklevel=2):
    """:func:`gradcheck` returning a :class:`GradcheckResult`; ``names[i]`` names input i in
    failures (default ``"input i"``)."""
    inputs = list(inputs)
    names = [f"input {i}" for i in range(len(inputs))] if names is None else list(names)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    if any(inputs[i].dtype != np.float64 for i in checked):
        warnings.warn("gradcheck: inputs are not float64; finite differences will be dominated "
                      "by rounding error", stacklevel=stacklevel)
    rng = np.random.default_rng(seed)
    out_size = _evaluate(fn, inputs).size
    in_size = sum(inputs[i].size for i in checked)
    tol = (eps, atol, rtol)
    if in_size * out_size <= full_limit:
        _full_jacobian(fn, inputs, checked, names, tol)
        return GradcheckResult("full Jacobian", 0, tuple(names[i] for i in checked))
    for _ in range(directions):
        _random_direction(fn, inputs, checked, names, tol, rng)
    return GradcheckResult("random directions", directions, tuple(names[i] for i in checked))


def _evaluate(fn, inputs):
    with no_grad():
        out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    return out.data.astype(np.float64)


def _analytic_vjp(fn, inputs, checked, v):
    """The gradients vᵀJ for every checked input, from one backward pass."""
    for i in checked:
        inputs[i].grad = None
    out = fn(*inputs)
    if not out.requires_grad:
        return [np.zeros(inputs[i].shape) for i in checked]
    out.backward(v.reshape(out.shape).astype(out.dtype))
    grads = [inputs[i].grad for i in checked]
    for i in checked:
        inputs[i].grad = None
    return [np.zeros(inputs[i].shape) if g is None else g.astype(np.float64) for g, i in zip(grads, checked)]


def _central_difference(fn, inputs, i, flat_index, direction, eps):
    """(f(x_i + ε·d) - f(x_i - ε·d)) / 2ε for a unit index or a dense direction d."""
    data = inputs[i].data
    original = data.copy()
    step = np.zeros(data.shape) if flat_index is not None else direction * eps
    if flat_index is not None:
        step.flat[flat_index] = eps
    try:
        data[...] = original + step
        plus = _evaluate(fn, inputs)
        data[...] = original - step
        minus = _evaluate(fn, inputs)
    finally:
        data[...] = original
    return (plus - minus) / (2 * eps)


def _numeric_jacobian(fn, inputs, i, eps):
    """(outputs, elements of input i) by central differences, one column per element."""
    return np.stack([_central_difference(fn, inputs, i, e, None, eps).ravel()
                     for e in range(inputs[i].size)], axis=1)


def _full_jacobian(fn, inputs, checked, names, tol):
    eps, atol, rtol = tol
    y = _evaluate(fn, inputs)
    analytic = [np.zeros((y.size, inputs[i].size)) for i in checked]
    for j in range(y.size):
        v = np.zeros(y.size)
        v[j] = 1.0
        for k, g in enumerate(_analytic_vjp(fn, inputs, checked, v)):
            analytic[k][j] = g.ravel()
    for k, i in enumerate(checked):
        numeric = _numeric_jacobian(fn, inputs, i, eps)
        bad = _outside(analytic[k], numeric, atol, rtol)
        if bad is not None:
            out_at, in_at = np.unravel_index(bad.worst, numeric.shape)
            raise GradcheckError(
                f"gradcheck failed for {names[i]} of shape {inputs[i].shape}: {bad.summary} of the Jacobian; "
                f"worst entry at output {_index(out_at, y.shape)}, {names[i]} element "
                f"{_index(in_at, inputs[i].shape)}: analytic {bad.analytic:.8e}, numeric {bad.numeric:.8e}")


def _random_direction(fn, inputs, checked, names, tol, rng):
    eps, atol, rtol = tol
    y = _evaluate(fn, inputs)
    v = rng.standard_normal(y.size)
    v /= np.linalg.norm(v)
    grads = _analytic_vjp(fn, inputs, checked, v)
    for k, i in enumerate(checked):
        u = rng.standard_normal(inputs[i].shape)
        u /= np.linalg.norm(u)
        numeric = np.array([_central_difference(fn, inputs, i, None, u, eps).ravel() @ v])
        bad = _outside(np.array([np.sum(grads[k] * u)]), numeric, atol, rtol)
        if bad is None:
            continue
        msg = (f"gradcheck failed for {names[i]} of shape {inputs[i].shape} (random directions: inputs × "
               f"outputs past full_limit): {bad.summary}; random direction vᵀJu: analytic {bad.analytic:.8e}, "
               f"numeric {bad.numeric:.8e}")
        if inputs[i].size > LOCATE_LIMIT:
            raise GradcheckError(msg + f"; {names[i]} has more than {LOCATE_LIMIT} elements, so the worst "
                                 "element is not located: check a smaller input")
        numeric_vjp = v @ _numeric_jacobian(fn, inputs, i, eps)
        err = np.abs(grads[k].ravel() - numeric_vjp)
        at = int(np.argmax(err))
        raise GradcheckError(f"{msg}; worst element of vᵀJ: {names[i]} element {_index(at, inputs[i].shape)}: "
                             f"analytic {grads[k].flat[at]:.8e}, numeric {numeric_vjp[at]:.8e}")


class _Outside(NamedTuple):
    summary: str
    worst: int
    analytic: float
    numeric: float


def _outside(analytic, numeric, atol, rtol):
    """None when every entry is within atol + rtol·|numeric|, else what is wrong and where."""
    err = np.abs(analytic - numeric)
    bad = ~(err <= atol + rtol * np.abs(numeric))      # so that NaN (an unwritten element) is outside
    if not bad.any():
        return None
    worst = int(np.argmax(np.where(bad, err, -1)))
    rel = err / np.maximum(np.abs(numeric), 1e-300)
    summary = (f"max abs error {err.max():.3e}, max rel error {rel[bad].max():.3e} ({bad.sum()} of "
               f"{bad.size} entries outside atol={atol}, rtol={rtol})")
    return _Outside(summary, worst, float(analytic.flat[worst]), float(numeric.flat[worst]))


def _index(flat, shape):
    return "[" + ", ".join(str(int(w)) for w in np.unravel_index(flat, shape)) + "]" if shape else "[()]"
