"""Stochastic gradient descent with momentum (torch.optim.SGD's exact rule)."""
from .optimizer import Optimizer


class SGD(Optimizer):
    """SGD.  Per step, with g the gradient:

        g ← g + weight_decay·p
        b ← g                              (first step)
        b ← momentum·b + (1 - dampening)·g (later steps)
        g ← g + momentum·b  if nesterov, else b      (only when momentum > 0)
        p ← p - lr·g

    Defaults: lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check(self, group):
        super()._check(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        mu = group["momentum"]
        if mu:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= mu
                buf += (1 - group["dampening"]) * g
            g = g + mu * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g
