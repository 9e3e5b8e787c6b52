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
import math

import numpy as np

from ..nn.parameter import Parameter


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
        """Restore options and per-parameter state saved by :meth:`state_dict`.

        Everything is checked first (see :meth:`check_state_dict`); on an error
        nothing has changed."""
        options, state = self.check_state_dict(state_dict)
        for group, saved in zip(self.param_groups, options):
            group.update(saved)
        self.state = state

    def check_state_dict(self, state_dict):
        """Validate ``state_dict`` against this optimizer without changing anything.

        Returns ``(options, state)``: one dict of options per group and the
        per-parameter state keyed as ``self.state``, its arrays converted to the
        parameters' dtypes.  Raises ValueError naming the group, parameter and
        entry when the layout differs (group and parameter counts), an option
        has the wrong type, is not finite or fails the optimizer's own checks,
        or a parameter's state lacks an entry :meth:`step` needs, holds an array
        whose shape is not the parameter's, or one that is not real and finite.
        A state that does not fit must never reach an update kernel, which
        indexes its arrays by the parameter's size.
        """
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), list) \
                or not isinstance(state_dict.get("state"), dict):
            raise ValueError("an optimizer state_dict is a dict with a 'state' dict and a 'param_groups' "
                             f"list, got {_describe(state_dict)}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"saved {len(saved_groups)} parameter groups, this optimizer has {len(self.param_groups)}")
        by_index, options = {}, []
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
                raise ValueError(f"param group {i} is not a dict with a 'params' list: {_describe(saved)}")
            indices = saved["params"]
            if len(indices) != len(group["params"]):
                raise ValueError(f"saved param group {i} has {len(indices)} parameters, "
                                 f"this optimizer's has {len(group['params'])}")
            for index, p in zip(indices, group["params"]):
                if not _is_int(index) or index in by_index:
                    raise ValueError(f"param group {i}: 'params' must hold distinct int indices, got {index!r}")
                by_index[index] = (p, i)
            opts = {k: self._check_option(i, k, v) for k, v in saved.items() if k != "params"}
            try:
                self._check({**group, **opts})
            except (ValueError, TypeError) as e:
                raise ValueError(f"param group {i}: {e}") from e
            options.append(opts)
        fresh = [self._fresh_state({**g, **o}) for g, o in zip(self.param_groups, options)]
        state = {}
        for key, entries in state_dict["state"].items():
            index = int(key) if _is_int(key) or (isinstance(key, str) and key.isdigit()) else None
            if index not in by_index:
                raise ValueError(f"state for parameter {key!r}, but this optimizer's parameters are "
                                 f"0..{len(by_index) - 1}")
            p, g = by_index[index]
            state[id(p)] = _check_param_state(index, p, entries, fresh[g])
        return options, state

    def _check_option(self, group, name, value):
        """``value`` for option ``name`` if it has the type of the default, else ValueError."""
        if name != "initial_lr" and name not in self.defaults:
            raise ValueError(f"param group {group}: unknown option {name!r} "
                             f"(this optimizer has {sorted(self.defaults)})")
        default = self.defaults.get(name, 0.0)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"param group {group}: option {name!r} must be a bool, got {value!r}")
            return value
        if isinstance(default, tuple):
            if not isinstance(value, (tuple, list)) or len(value) != len(default) or not all(map(_is_real, value)):
                raise ValueError(f"param group {group}: option {name!r} must be a tuple of {len(default)} "
                                 f"finite numbers, got {value!r}")
            return tuple(value)
        if not _is_real(value):
            raise ValueError(f"param group {group}: option {name!r} must be a finite number, got {value!r}")
        return value

    def _fresh_state(self, group):
        """The state ``step`` creates for a parameter of ``group``'s options: its entries
        and their kinds are what a saved state must provide."""
        probe = Parameter(np.zeros(1, np.float64))
        probe.grad = np.zeros(1, np.float64)
        state = {}
        self._update(probe, probe.grad, state, dict(group))
        return state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {opts}")
        return "\n".join(lines + [")"])


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) \
        and math.isfinite(x)


def _describe(x):
    return f"a {type(x).__name__}" if isinstance(x, (dict, list)) else repr(x)[:80]


def _check_param_state(index, p, entries, fresh):
    """Parameter ``index``'s saved ``entries``, checked against ``fresh`` (what a step creates)
    and with arrays converted to ``p``'s dtype."""
    where = f"state of parameter {index}"
    if not isinstance(entries, dict):
        raise ValueError(f"{where} must be a dict, got {_describe(entries)}")
    missing = sorted(set(fresh) - set(entries))
    if entries and missing:
        raise ValueError(f"{where} lacks {missing} (it has {sorted(entries)}): a step would fail")
    out = {}
    for name, value in entries.items():
        if isinstance(value, (np.ndarray, list)) or isinstance(fresh.get(name), np.ndarray):
            try:
                array = np.asarray(value)
            except ValueError as e:
                raise ValueError(f"{where}: {name!r} is not an array ({e})") from e
            if array.dtype.kind not in "biuf":
                raise ValueError(f"{where}: {name!r} has dtype {array.dtype}, expected real numbers")
            if array.shape != p.shape:
                raise ValueError(f"{where}: {name!r} has shape {array.shape}, the parameter {p.shape}")
            array = np.array(array, dtype=p.dtype)
            if not np.isfinite(array).all():
                raise ValueError(f"{where}: {name!r} is not finite")
            out[name] = array
        elif _is_int(fresh.get(name)):
            if not _is_int(value) or value < 0:
                raise ValueError(f"{where}: {name!r} must be a non-negative int, got {value!r}")
            out[name] = int(value)
        elif _is_real(value):
            out[name] = value
        else:
            raise ValueError(f"{where}: {name!r} must be a finite number or an array, got {value!r}")
    return out
