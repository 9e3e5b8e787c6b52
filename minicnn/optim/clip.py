"""Gradient clipping, in place on ``p.grad``."""
import numpy as np


def _with_grads(parameters):
    if hasattr(parameters, "data"):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0):
    """Scale all gradients together so their joint norm is at most ``max_norm``.

    total = (Σ_p ‖g_p‖^q)^(1/q)  (q = norm_type; inf gives the max |g|);
    if total > max_norm every g is multiplied by max_norm / (total + 1e-6).
    Returns the norm before clipping.
    """
    params = _with_grads(parameters)
    if not params:
        return 0.0
    if norm_type == np.inf:
        total = max(float(np.abs(p.grad).max()) for p in params)
    else:
        total = float(sum(float(np.sum(np.abs(p.grad) ** norm_type)) for p in params) ** (1.0 / norm_type))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            p.grad *= coef
    return total


def clip_grad_value_(parameters, clip_value):
    """Clip every gradient element to [-clip_value, clip_value]."""
    for p in _with_grads(parameters):
        np.clip(p.grad, -clip_value, clip_value, out=p.grad)
