"""Check an op's analytic gradient against central finite differences.

    from minicnn.gradcheck import gradcheck
    x = minicnn.tensor(np.random.randn(3, 4), requires_grad=True, dtype=np.float64)
    gradcheck(lambda x: minicnn.ops.tanh(x), [x])          # True, or raises

Central differences:  ∂f/∂x_i ≈ (f(x + ε e_i) - f(x - ε e_i)) / 2ε, error O(ε²).

* Small problems (inputs × outputs <= ``full_limit``): the full Jacobian is
  built both ways, one backward per output element and two forwards per input
  element, and compared entry by entry.
* Larger ones: a random-direction (vector-Jacobian) check.  With random unit
  vectors v (output) and u (input),  vᵀ J u  from one backward must equal
  (vᵀf(x + εu) - vᵀf(x - εu)) / 2ε.  Repeated ``directions`` times.

An entry passes when |analytic - numeric| <= atol + rtol·|numeric|.  Use
float64: in float32 the rounding error of f (~1e-7·|f|/ε) swamps the check,
so a float32 input gets a warning.
"""
import warnings

import numpy as np

from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised when analytic and numeric gradients disagree."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, full_limit=4096, directions=3, seed=0):
    """Compare ``fn``'s backward with finite differences for every input that requires grad.

    ``fn(*inputs)`` must return a Tensor.  Returns True or raises
    :class:`GradcheckError` naming the input, the max abs/rel error and where.
    """
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    if any(inputs[i].dtype != np.float64 for i in checked):
        warnings.warn("gradcheck: inputs are not float64; finite differences will be dominated "
                      "by rounding error", stacklevel=2)
    rng = np.random.default_rng(seed)
    out_size = _evaluate(fn, inputs).size
    in_size = sum(inputs[i].size for i in checked)
    if in_size * out_size <= full_limit:
        _full_jacobian(fn, inputs, checked, eps, atol, rtol)
    else:
        for _ in range(directions):
            _random_direction(fn, inputs, checked, eps, atol, rtol, rng)
    return True


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


def _full_jacobian(fn, inputs, checked, eps, atol, rtol):
    y = _evaluate(fn, inputs)
    analytic = [np.zeros((y.size, inputs[i].size)) for i in checked]
    for j in range(y.size):
        v = np.zeros(y.size)
        v[j] = 1.0
        for k, g in enumerate(_analytic_vjp(fn, inputs, checked, v)):
            analytic[k][j] = g.ravel()
    for k, i in enumerate(checked):
        numeric = np.stack([_central_difference(fn, inputs, i, e, None, eps).ravel()
                            for e in range(inputs[i].size)], axis=1)
        _compare(analytic[k], numeric, i, atol, rtol, "Jacobian entry (output, input element)")


def _random_direction(fn, inputs, checked, eps, atol, rtol, rng):
    y = _evaluate(fn, inputs)
    v = rng.standard_normal(y.size)
    v /= np.linalg.norm(v)
    grads = _analytic_vjp(fn, inputs, checked, v)
    for k, i in enumerate(checked):
        u = rng.standard_normal(inputs[i].shape)
        u /= np.linalg.norm(u)
        numeric = np.array([_central_difference(fn, inputs, i, None, u, eps).ravel() @ v])
        analytic = np.array([np.sum(grads[k] * u)])
        _compare(analytic, numeric, i, atol, rtol, "random direction vᵀJu")


def _compare(analytic, numeric, i, atol, rtol, what):
    err = np.abs(analytic - numeric)
    bad = err > atol + rtol * np.abs(numeric)
    if bad.any():
        where = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape)
        rel = err / np.maximum(np.abs(numeric), 1e-300)
        raise GradcheckError(
            f"gradcheck failed for input {i}: max abs error {err.max():.3e}, max rel error "
            f"{rel[bad].max():.3e} ({bad.sum()} of {bad.size} entries outside atol={atol}, rtol={rtol}); "
            f"worst {what} at {tuple(int(w) for w in where)}: analytic {analytic[where]:.8e}, "
            f"numeric {numeric[where]:.8e}")
