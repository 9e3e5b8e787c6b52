"""Adam and AdamW (torch.optim's exact update rules)."""
import math

import numpy as np

from ..fast.runtime import parallel_slices
from ..fast.kernels import optim as K
from .optimizer import Optimizer

_NONE = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}   # no max_exp_avg_sq


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015).  Per step t, with g the gradient:

        g ← g + weight_decay·p                 (L2 penalty; AdamW decouples it)
        m ← β1·m + (1 - β1)·g
        v ← β2·v + (1 - β2)·g²
        v̂ ← max(v̂, v) if amsgrad else v
        p ← p - (lr / (1 - β1ᵗ)) · m / (√v̂ / √(1 - β2ᵗ) + eps)

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False.
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad))

    def _check(self, group):
        super()._check(group)
        b1, b2 = group["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {group['betas']}")

    def _update(self, p, g, state, group):
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        # The kernel updates flat views in place: every array must be contiguous.
        if not p.data.flags.c_contiguous:
            p.data = np.ascontiguousarray(p.data)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state:
                state[key] = np.ascontiguousarray(state[key])
        flat = [a.reshape(-1) for a in (p.data, np.ascontiguousarray(g, p.data.dtype), state["exp_avg"],
                                        state["exp_avg_sq"], state.get("max_exp_avg_sq", _NONE[p.data.dtype]))]
        coefs = np.array([b1, 1 - b1, b2, 1 - b2, 0.0 if self.decoupled else wd,
                          1 - lr * wd if self.decoupled else 1.0, lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t),
                          group["eps"]]).astype(p.data.dtype)
        parallel_slices(p.data.size, lambda s: K.adam(*(a[s] if a.size else a for a in flat), tuple(coefs)),
                        1 << 16)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019):

        p ← p·(1 - lr·weight_decay), then the Adam step without the L2 term.

    Defaults as Adam but weight_decay=1e-2 (PyTorch's).
    """

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
