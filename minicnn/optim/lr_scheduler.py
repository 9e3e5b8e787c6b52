"""Learning-rate schedules with torch.optim.lr_scheduler's formulas and names.

Each scheduler computes the learning rate of every parameter group in closed
form from its step counter ``last_epoch`` and the group's starting rate
``initial_lr`` (recorded in the group by the first scheduler attached, as
PyTorch does).  Construction performs step 0; each ``step()`` then advances
the counter and writes ``group['lr']``:

    sched = CosineAnnealingLR(opt, T_max=15)
    for epoch in range(15):
        train_one_epoch(); sched.step()

Most schedules are stepped once per epoch; :class:`OneCycleLR` once per batch
(its ``interval`` attribute says which, and ``minicnn.train.fit`` follows it).
Being closed-form, a scheduler overwrites any learning rate set by someone
else (e.g. ``ReduceLROnPlateau``) at its next step: use one or the other.

Linear warmup is ``LinearLR`` chained in front of another schedule:

    warm = LinearLR(opt, start_factor=0.1, total_iters=5)
    cos = CosineAnnealingLR(opt, T_max=45)
    sched = SequentialLR(opt, [warm, cos], milestones=[5])

``state_dict()`` / ``load_state_dict()`` hold the counter and the options, so
a resumed run continues the same schedule.
"""
import copy
import math
from bisect import bisect_right

from .optimizer import _is_real

_NOT_STATE = ("optimizer",)


class LRScheduler:
    """Base: ``lr_at(step)`` gives one rate per group; ``step()`` applies the next one."""

    interval = "epoch"

    def __init__(self, optimizer, last_epoch=-1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__} needs an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError("param group has no 'initial_lr': resuming a schedule "
                               "(last_epoch != -1) needs the optimizer state it was saved with")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, step):
        """Learning rate of each group after ``step`` steps (closed form)."""
        raise NotImplementedError

    def step(self):
        """Advance one step and write the new rates into the optimizer's groups."""
        self.last_epoch += 1
        self._apply(self.lr_at(self.last_epoch))

    def _apply(self, lrs):
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def get_last_lr(self):
        """The rates written by the last step, one per group."""
        return list(self._last_lr)

    def state_dict(self):
        """Every attribute except the optimizer (PyTorch's layout)."""
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_STATE}

    def load_state_dict(self, state_dict):
        """Restore a state saved by :meth:`state_dict`; checked first (:meth:`check_state_dict`),
        so on an error nothing has changed."""
        self._restore(self.check_state_dict(state_dict))

    def check_state_dict(self, state_dict):
        """Validate ``state_dict`` against this scheduler without changing anything.

        It must hold exactly the entries of :meth:`state_dict`, each of the same
        type (numbers finite, ``last_epoch`` an int >= -1), and the schedule it
        describes must compute one finite rate per parameter group at its step.
        Returns the state to restore; raises ValueError naming the entry.
        """
        who = type(self).__name__
        current = self.state_dict()
        if not isinstance(state_dict, dict):
            raise ValueError(f"{who} state must be a dict, got {type(state_dict).__name__}")
        missing, unexpected = sorted(set(current) - set(state_dict)), sorted(set(state_dict) - set(current))
        if missing or unexpected:
            raise ValueError(f"{who} state: missing entries {missing}, unexpected entries {unexpected}")
        state = {k: _like(state_dict[k], current[k], f"{who} state entry {k!r}") for k in current}
        groups = len(self.optimizer.param_groups)
        if len(state["base_lrs"]) != groups:
            raise ValueError(f"{who} state entry 'base_lrs' has {len(state['base_lrs'])} rates "
                             f"for {groups} param groups")
        if not isinstance(state["last_epoch"], int) or state["last_epoch"] < -1:
            raise ValueError(f"{who} state entry 'last_epoch' must be an int >= -1, got {state['last_epoch']!r}")
        try:
            lrs = self._trial(state).lr_at(state["last_epoch"])
        except Exception as e:  # noqa: BLE001  a trial run: whatever breaks, the state is unusable
            raise ValueError(f"{who} state cannot compute a learning rate at step {state['last_epoch']} "
                             f"({type(e).__name__}: {e})") from e
        if len(lrs) != groups or not all(map(_is_real, lrs)):
            raise ValueError(f"{who} state gives the rates {list(lrs)} for {groups} param groups")
        return state

    def _trial(self, state):
        """A copy of this scheduler holding ``state``, to try it on."""
        trial = copy.copy(self)
        trial.__dict__.update(state)
        return trial

    def _restore(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        opts = ", ".join(f"{k}={v}" for k, v in self.state_dict().items()
                         if not k.startswith("_") and k not in ("base_lrs",))
        return f"{type(self).__name__}({opts})"


def _like(saved, current, where):
    """``saved`` if it has the type of ``current`` (numbers interchangeable but finite,
    containers checked item by item), else ValueError naming ``where``."""
    if isinstance(current, bool) or current is None or isinstance(current, str):
        ok = type(saved) is type(current)
    elif _is_real(current) or isinstance(current, (int, float)):
        ok = _is_real(saved)
    elif isinstance(current, dict):
        if not isinstance(saved, dict) or set(saved) != set(current):
            raise ValueError(f"{where} must be a dict with keys {sorted(current)}, got {saved!r:.80}")
        return {k: _like(saved[k], current[k], f"{where}[{k!r}]") for k in current}
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {saved!r:.80}")
        items = [_like(v, current[min(i, len(current) - 1)], f"{where}[{i}]") if current else
                 _like(v, 0.0, f"{where}[{i}]") for i, v in enumerate(saved)]
        return type(current)(items)
    else:
        raise ValueError(f"{where}: cannot restore a {type(current).__name__}")
    if not ok:
        raise ValueError(f"{where} must be a {type(current).__name__}, got {saved!r:.80}")
    return saved


def _positive_int(value, name, who):
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")


class StepLR(LRScheduler):
    """lr = initial_lr · gamma ^ floor(step / step_size).  Default gamma=0.1."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        _positive_int(step_size, "step_size", "StepLR")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step):
        return [base * self.gamma ** (step // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr = initial_lr · gamma ^ (number of milestones <= step).  Default gamma=0.1."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step):
        return [base * self.gamma ** bisect_right(self.milestones, step) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min)·(1 + cos(π·step / T_max)) / 2  (SGDR without restarts).

    Reaches eta_min (default 0) at step T_max, then rises again (a cosine's period is 2·T_max).
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):  # noqa: N803 (PyTorch's name)
        _positive_int(T_max, "T_max", "CosineAnnealingLR")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step):
        c = (1 + math.cos(math.pi * step / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]


class LinearLR(LRScheduler):
    """lr = initial_lr · (start + (end - start)·min(step, total_iters) / total_iters).

    Defaults start_factor=1/3, end_factor=1, total_iters=5 (PyTorch's).  With a start
    factor below 1 this is a linear warmup; see the module docstring for chaining it.
    """

    def __init__(self, optimizer, start_factor=1 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError("LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1], "
                             f"got {start_factor}, {end_factor}")
        _positive_int(total_iters, "total_iters", "LinearLR")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step):
        f = self.start_factor + (self.end_factor - self.start_factor) * min(step, self.total_iters) / self.total_iters
        return [base * f for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """Run ``schedulers[i]`` from step ``milestones[i-1]`` on, each restarted at its own step 0.

    ``len(milestones) == len(schedulers) - 1``; all must share ``optimizer``.
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        schedulers = list(schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: {len(schedulers)} schedulers need {len(schedulers) - 1} "
                             f"milestones, got {len(milestones)}")
        if any(s.optimizer is not optimizer for s in schedulers):
            raise ValueError("SequentialLR: every scheduler must drive the same optimizer")
        self._schedulers = schedulers
        self.milestones = [int(m) for m in milestones]
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step):
        i = bisect_right(self.milestones, step)
        start = self.milestones[i - 1] if i else 0
        return self._schedulers[i].lr_at(step - start)

    def state_dict(self):
        state = {k: v for k, v in super().state_dict().items() if k != "_schedulers"}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def check_state_dict(self, state_dict):
        subs = state_dict.get("_schedulers") if isinstance(state_dict, dict) else None
        if not isinstance(subs, list) or len(subs) != len(self._schedulers):
            raise ValueError(f"SequentialLR state needs '_schedulers', a list of {len(self._schedulers)} states")
        checked = [s.check_state_dict(sub) for s, sub in zip(self._schedulers, subs)]
        return super().check_state_dict({**state_dict, "_schedulers": checked})

    def _trial(self, state):
        trial = super()._trial({k: v for k, v in state.items() if k != "_schedulers"})
        trial._schedulers = [s._trial(sub) for s, sub in zip(self._schedulers, state["_schedulers"])]
        return trial

    def _restore(self, state):
        for s, sub in zip(self._schedulers, state["_schedulers"]):
            s._restore(sub)
        super()._restore({k: v for k, v in state.items() if k != "_schedulers"})


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin 2018), stepped once per **batch**.

    The rate rises from max_lr/div_factor to max_lr over the first pct_start of
    ``total_steps`` (= epochs · steps_per_epoch if not given), then anneals to
    max_lr/(div_factor·final_div_factor); ``three_phase`` returns to the start
    rate before the final annealing.  Within a phase from a to b at fraction p:

        cos:    b + (a - b)·(1 + cos(π·p)) / 2        linear:  a + (b - a)·p

    With ``cycle_momentum`` the momentum (SGD's ``momentum``, Adam's beta1) moves
    inversely between max_momentum and base_momentum.  Defaults are PyTorch's:
    pct_start=0.3, anneal_strategy='cos', base_momentum=0.85, max_momentum=0.95,
    div_factor=25, final_div_factor=1e4, three_phase=False.
    """

    interval = "batch"

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False,
                 last_epoch=-1):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
            _positive_int(epochs, "epochs", "OneCycleLR")
            _positive_int(steps_per_epoch, "steps_per_epoch", "OneCycleLR")
            total_steps = epochs * steps_per_epoch
        _positive_int(total_steps, "total_steps", "OneCycleLR")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        n = len(optimizer.param_groups)
        max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * n
        if len(max_lrs) != n:
            raise ValueError(f"OneCycleLR: {len(max_lrs)} max_lr values for {n} param groups")
        self.total_steps, self.anneal_strategy, self.three_phase = total_steps, anneal_strategy, three_phase
        self.max_lrs = max_lrs
        self.initial_lrs = [m / div_factor for m in max_lrs]
        self.min_lrs = [i / final_div_factor for i in self.initial_lrs]
        up = float(pct_start * total_steps) - 1
        if three_phase:  # (end step, lr from, lr to, momentum from, momentum to) as names into the lists
            self._phases = [(up, "initial", "max", "max_m", "base_m"),
                            (2 * up, "max", "initial", "base_m", "max_m"),
                            (total_steps - 1, "initial", "min", "max_m", "max_m")]
        else:
            self._phases = [(up, "initial", "max", "max_m", "base_m"),
                            (total_steps - 1, "max", "min", "base_m", "max_m")]
        self.cycle_momentum = cycle_momentum
        self.base_momentum, self.max_momentum = base_momentum, max_momentum
        if cycle_momentum:
            if not all("momentum" in g or "betas" in g for g in optimizer.param_groups):
                raise ValueError("OneCycleLR: cycle_momentum=True needs an optimizer with "
                                 "'momentum' or 'betas'; pass cycle_momentum=False")
        if last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, self.initial_lrs):
                group["initial_lr"] = lr
        super().__init__(optimizer, last_epoch)

    def _anneal(self, a, b, p):
        if self.anneal_strategy == "cos":
            return b + (a - b) / 2 * (math.cos(math.pi * p) + 1)
        return (b - a) * p + a

    def _at(self, step, g):
        """(lr, momentum) of group g after ``step`` steps."""
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {step} times, more than total_steps={self.total_steps}")
        values = {"initial": self.initial_lrs[g], "max": self.max_lrs[g], "min": self.min_lrs[g],
                  "max_m": self.max_momentum, "base_m": self.base_momentum}
        start = 0.0
        for i, (end, lr_a, lr_b, m_a, m_b) in enumerate(self._phases):
            if step <= end or i == len(self._phases) - 1:
                p = (step - start) / (end - start)
                return (self._anneal(values[lr_a], values[lr_b], p),
                        self._anneal(values[m_a], values[m_b], p))
            start = end
        raise AssertionError("unreachable: the last phase always matches")

    def lr_at(self, step):
        return [self._at(step, g)[0] for g in range(len(self.max_lrs))]

    def step(self):
        super().step()
        if self.cycle_momentum:
            for g, group in enumerate(self.optimizer.param_groups):
                m = self._at(self.last_epoch, g)[1]
                if "betas" in group:
                    group["betas"] = (m, *group["betas"][1:])
                else:
                    group["momentum"] = m
