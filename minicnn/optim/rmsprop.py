"""RMSprop (torch.optim.RMSprop's exact update rule)."""
import numpy as np

from .optimizer import Optimizer


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e).  Per step, with g the gradient:

        g ← g + weight_decay·p
        s ← α·s + (1 - α)·g²
        centered:  a ← α·a + (1 - α)·g;   d = √(s - a²) + eps
        otherwise: d = √s + eps
        momentum > 0:  b ← momentum·b + g/d;   p ← p - lr·b
        otherwise:     p ← p - lr·g/d

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _update(self, p, g, state, group):
        alpha, wd, mu = group["alpha"], group["weight_decay"], group["momentum"]
        if wd:
            g = g + wd * p.data
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            if mu:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1
        s = state["square_avg"]
        s *= alpha
        s += (1 - alpha) * g * g
        if group["centered"]:
            a = state["grad_avg"]
            a *= alpha
            a += (1 - alpha) * g
            d = np.sqrt(s - a * a) + group["eps"]
        else:
            d = np.sqrt(s) + group["eps"]
        if mu:
            b = state["momentum_buffer"]
            b *= mu
            b += g / d
            p.data -= group["lr"] * b
        else:
            p.data -= group["lr"] * g / d
