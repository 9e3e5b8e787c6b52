"""LayerMonitor: what each layer does while the network trains.

Every ``every`` training steps (the first step included) it records, per layer:

    act_mean, act_std    mean and standard deviation of the layer's output on the batch
    zero_fraction        fraction of exact zeros in it (after a ReLU: units off for this batch;
                         near 1 for many steps, dead ReLUs)
    grad_norm            ‖∂L/∂θ‖₂ over the layer's own parameters (vanishing gradients: it
                         falls by orders of magnitude from the last layers to the first)
    update_ratio         ‖Δθ‖₂ / ‖θ‖₂, the step the optimizer took relative to the weights
                         (rule of thumb: around 1e-3; 1e-5 means the layer has stopped
                         learning, 1e-1 that it is thrashing)

    monitor = LayerMonitor(every=20)
    fit(model, data, ..., callbacks=[monitor])
    names, table = monitor.values("grad_norm")    # layers x records, NaN where not recorded
    minicnn.viz.plot_layer_monitor({"plain": monitor}, "layers.png")

Layers are those of :func:`minicnn.internals.watched_layers` (every leaf module and
every module holding parameters, or the classes in ``kinds``); the gradient and
update rows only those with parameters.  The callback only looks: its forward
hooks return nothing and are attached for the recorded steps only, so a seeded
run gives the same weights, bit for bit, with and without it.  The statistics of
a large activation are taken in one float32 pass (sum and sum of squares), exact
enough for a picture, cheap enough to leave on: a recorded step of the
Fashion-MNIST CNN costs about 1.4 plain ones, so every=20 adds ~2%
(benchmarks/layer_monitor_overhead.py).

It implements every hook of :class:`~minicnn.train.callbacks.Callback` itself rather
than inheriting them, so that ``callbacks`` can re-export it without an import cycle.
"""
import math

import numpy as np

from ..internals import watched_layers
from ..tensor import Tensor, is_grad_enabled

ACTIVATION_STATS = ("act_mean", "act_std", "zero_fraction")
PARAMETER_STATS = ("grad_norm", "update_ratio")
QUANTITIES = ACTIVATION_STATS + PARAMETER_STATS


def _flat(a):
    # in memory order: a view, not a copy, also of the channels-last outputs of the fast convs
    return a.ravel(order="K")


def _moments(a):
    """(count, sum, sum of squares, zeros) of an array, one fast pass each (count_nonzero of
    a float array is 3-6x slower than of the boolean ``a == 0``)."""
    flat = _flat(a)
    return flat.size, float(flat.sum(dtype=np.float64)), float(np.dot(flat, flat)), int(np.count_nonzero(flat == 0))


def _sq_norm(a):
    flat = _flat(a)
    return float(np.dot(flat, flat))


def _own_parameters(module):
    return [p for p in module._parameters.values() if p is not None]


class LayerMonitor:
    """Record per-layer activation statistics, gradient norms and update-to-weight ratios
    every ``every`` steps (default 20); see the module docstring.

    After (or during) training: ``steps`` (global step index of each record, from 0),
    ``layers`` / ``param_layers`` (row names), ``kind`` (name -> class name), :meth:`values`.
    """

    def __init__(self, every=20, kinds=None):
        if not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"LayerMonitor: every must be a positive int, got {every!r}")
        self.every, self.kinds = int(every), kinds
        self.step, self.steps, self.records = 0, [], {q: [] for q in QUANTITIES}
        self._handles, self._sums, self._before = [], {}, None

    # ------------------------------------------------------------ callbacks
    def on_train_begin(self, trainer):
        watched = list(watched_layers(trainer.model, self.kinds))
        self._modules = watched
        self.layers = [name for name, _ in watched]
        self.kind = {name: type(m).__name__ for name, m in watched}
        self._params = [(name, _own_parameters(m)) for name, m in watched if _own_parameters(m)]
        self.param_layers = [name for name, _ in self._params]
        self._pending = self.step % self.every == 0

    def on_epoch_begin(self, trainer, epoch):
        # arm here, not at the previous epoch's last batch: validation and other callbacks
        # run forward passes in between, which must not be recorded
        if self._pending:
            self._arm()

    def on_batch_end(self, trainer, batch, logs):
        if self._handles:
            self._record()
        self.step += 1
        self._pending = self.step % self.every == 0
        if self._pending and batch + 1 < len(trainer.train_loader):
            self._arm()

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        self._disarm()

    # ------------------------------------------------------------- recording
    def _arm(self):
        self._pending = False
        self._sums = {name: [0, 0.0, 0.0, 0] for name in self.layers}
        self._before = [[p.data.copy() for p in ps] for _, ps in self._params]
        self._handles = [m.register_forward_hook(lambda mod, inputs, out, name=name: self._observe(name, out))
                         for name, m in self._modules]

    def _observe(self, name, out):
        # training forwards only: an evaluation inside the step (no_grad) is not the step
        if is_grad_enabled() and isinstance(out, Tensor):
            acc = self._sums[name]
            for i, v in enumerate(_moments(out.data)):
                acc[i] += v

    def _disarm(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _record(self):
        self._disarm()
        for name in self.layers:
            n, s, sq, zeros = self._sums[name]
            mean = s / n if n else math.nan
            self.records["act_mean"].append(mean)
            self.records["act_std"].append(math.sqrt(max(sq / n - mean * mean, 0.0)) if n else math.nan)
            self.records["zero_fraction"].append(zeros / n if n else math.nan)
        for (name, params), before in zip(self._params, self._before):
            grads = [p.grad for p in params if p.grad is not None]
            self.records["grad_norm"].append(math.sqrt(sum(map(_sq_norm, grads))) if grads else math.nan)
            moved = math.sqrt(sum(_sq_norm(p.data - b) for p, b in zip(params, before)))
            size = math.sqrt(sum(map(_sq_norm, before)))
            self.records["update_ratio"].append(moved / size if size else math.nan)
        self.steps.append(self.step)
        self._sums, self._before = {}, None

    # ----------------------------------------------------------------- results
    def values(self, quantity):
        """(row names, array (rows, records)) of one of :data:`QUANTITIES`."""
        if quantity not in QUANTITIES:
            raise ValueError(f"LayerMonitor: unknown quantity {quantity!r}; expected one of {QUANTITIES}")
        names = self.layers if quantity in ACTIVATION_STATS else self.param_layers
        flat = np.array(self.records[quantity], dtype=np.float64)
        return list(names), flat.reshape(len(self.steps), len(names)).T

    def state_dict(self):
        return {"step": self.step, "steps": list(self.steps),
                "records": {q: list(v) for q, v in self.records.items()}}

    def load_state_dict(self, state):
        self.step, self.steps = int(state["step"]), [int(s) for s in state["steps"]]
        self.records = {q: [float(v) for v in state["records"][q]] for q in QUANTITIES}
        self._pending = self.step % self.every == 0
