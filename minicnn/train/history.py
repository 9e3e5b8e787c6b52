"""History: what each epoch of training measured.

``history.history`` maps a name (``loss``, ``accuracy``, ``val_loss``,
``val_accuracy``, ``lr``, ``time``) to one value per epoch, as Keras's does;
``history.epoch`` lists the epoch indices (from 0).  A value is NaN where an
epoch did not measure it.
"""
import math


class History:
    """Per-epoch logs.  ``h['val_loss']`` is that column; ``len(h)`` the epochs done."""

    def __init__(self):
        self.epoch = []
        self.history = {}

    def append(self, epoch, logs):
        """Record ``logs`` (name -> number) for ``epoch``; a new name is NaN for earlier epochs."""
        for name in logs:
            if name not in self.history:
                self.history[name] = [math.nan] * len(self.epoch)
        for name, column in self.history.items():
            column.append(float(logs.get(name, math.nan)))
        self.epoch.append(int(epoch))

    def __getitem__(self, name):
        if name not in self.history:
            raise KeyError(f"history has no {name!r}; it has {sorted(self.history)}")
        return self.history[name]

    def __contains__(self, name):
        return name in self.history

    def __len__(self):
        return len(self.epoch)

    def best(self, monitor="val_loss", mode="min"):
        """(epoch, value) of the best finite value of ``monitor`` ('min' or 'max')."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        pairs = [(v, e) for e, v in zip(self.epoch, self[monitor]) if math.isfinite(v)]
        if not pairs:
            raise ValueError(f"history has no finite {monitor!r} value")
        v, e = min(pairs) if mode == "min" else max(pairs, key=lambda p: (p[0], -p[1]))
        return e, v

    def state_dict(self):
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state):
        self.epoch = [int(e) for e in state["epoch"]]
        self.history = {k: [float(x) for x in v] for k, v in state["history"].items()}

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items()) if self.epoch else ""
        return f"History({len(self)} epochs{': ' + last if last else ''})"
