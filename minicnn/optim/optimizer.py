"""Optimizer base: parameter groups, per-parameter state, state dicts.

``param_groups`` is a list of dicts, each with ``'params'`` (a list of
Parameters) and its own options (lr, momentum, ...), falling back to the
optimizer's defaults.  So a backbone can learn slower than a new head:

    Adam([{'params': backbone.parameters(), 'lr': 1e-4},
          {'params': head.parameters()}], lr=1e-3)

Parameters whose ``grad`` is None or that are frozen (requires_grad False)
are skipped by ``step``.  ``state_dict`` mirrors torch.optim's layout
(parameters referred to by their position across groups), so a run can be
resumed exactly.
"""
import numpy as np


class Optimizer:
    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}  # id(param) -> dict of ndarrays / numbers
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        """Add a dict with 'params' and optional per-group options."""
        group = dict(group)
        params = group["params"]
        group["params"] = [params] if hasattr(params, "data") else list(params)
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown options {sorted(unknown)}; "
                             f"expected some of {sorted(self.defaults)}")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        for p in group["params"]:
            if id(p) in existing:
                raise ValueError("a parameter appears in more than one parameter group")
        self._check(group)
        self.param_groups.append(group)

    def _check(self, group):
        if group["lr"] < 0:
            raise ValueError(f"learning rate must be >= 0, got {group['lr']}")

    def zero_grad(self):
        """Clear every parameter's gradient (sets it to None)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self):
        """Update every parameter that has a gradient and is not frozen."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.requires_grad:
                    self._update(p, p.grad, self.state.setdefault(id(p), {}), group)

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    # ------------------------------------------------------------ persistence
    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """{'state': {index: {name: value}}, 'param_groups': [{options, 'params': [index]}]}."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[k]: {n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in s.items()}
                 for k, s in self.state.items() if k in index}
        groups, start = [], 0
        for g in self.param_groups:
            opts = {k: v for k, v in g.items() if k != "params"}
            opts["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(opts)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore options and per-parameter state saved by :meth:`state_dict`."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("optimizer state_dict does not match this optimizer's parameter groups "
                             f"(saved sizes {[len(g['params']) for g in groups]}, "
                             f"current {[len(g['params']) for g in self.param_groups]})")
        params = self._params()
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            self.state[id(p)] = {n: (np.array(v, dtype=p.dtype) if np.ndim(v) > 0 else v) for n, v in s.items()}

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {opts}")
        return "\n".join(lines + [")"])
