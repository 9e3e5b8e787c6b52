"""LayerMonitor records drawn as layers x steps heatmaps, several runs side by side.

Drawn with matplotlib's object API on the Agg canvas (no pyplot).  Returns the path written.
"""
import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from .training import _save

# quantity -> (title, log scale?)
_QUANTITIES = {
    "act_mean": ("activation mean", False),
    "act_std": ("activation std", True),
    "zero_fraction": ("fraction of zeros", False),
    "grad_norm": ("‖∂L/∂θ‖ per layer", True),
    "update_ratio": ("update / weight ‖Δθ‖/‖θ‖", True),
}
DEFAULT_QUANTITIES = ("act_std", "zero_fraction", "grad_norm", "update_ratio")


def _norm(tables, log, quantity):
    finite = np.concatenate([t[np.isfinite(t)].ravel() for t in tables])
    if log:
        finite = finite[finite > 0]
    if finite.size == 0:
        return Normalize(0, 1)
    if log:  # from the smallest value, so that only exact zeros fall below the scale
        return LogNorm(finite.min(), max(np.percentile(finite, 99), finite.min() * 10))
    if quantity == "zero_fraction":
        return Normalize(0, 1)
    lim = np.abs(finite).max() if quantity == "act_mean" else None
    return Normalize(-lim, lim) if lim else Normalize(finite.min(), finite.max())


def plot_layer_monitor(monitors, path, quantities=DEFAULT_QUANTITIES, dpi=100):
    """One row per quantity, one column per run (``monitors``: label -> LayerMonitor, or one
    LayerMonitor): rows of the heatmap are layers (input side at the top), columns the
    recorded steps.  Runs share each quantity's colour scale (log for std, gradient and
    update ratio, from the smallest nonzero value to the 99th percentile), so their
    colours compare.  On a log scale exact zeros (a dead layer, a gradient that no longer
    arrives) are black; grey cells were not recorded (a layer not called in that step)."""
    if not isinstance(monitors, dict):
        monitors = {"": monitors}
    for q in quantities:
        if q not in _QUANTITIES:
            raise ValueError(f"plot_layer_monitor: unknown quantity {q!r}; expected some of {tuple(_QUANTITIES)}")
    rows, cols = len(quantities), len(monitors)
    height = max(max(len(m.layers) for m in monitors.values()) * 0.07 + 1.0, 2.2)
    fig = Figure(figsize=(4.2 * cols + 1.4, height * rows), layout="constrained")
    axes = np.array(fig.subplots(rows, cols, squeeze=False))
    for r, q in enumerate(quantities):
        title, log = _QUANTITIES[q]
        tables = {label: m.values(q) for label, m in monitors.items()}
        norm = _norm([t for _, t in tables.values()], log, q)
        cmap = matplotlib.colormaps["RdBu_r" if q == "act_mean" else "viridis"].with_extremes(bad="0.85",
                                                                                              under="black")
        for c, (label, (names, table)) in enumerate(tables.items()):
            ax = axes[r, c]
            steps = np.asarray(monitors[label].steps)
            if log:  # zeros below the scale, so that they take the 'under' colour
                table = np.where(table <= 0, norm.vmin / 10, table)
            im = ax.imshow(np.ma.masked_invalid(table), aspect="auto", interpolation="nearest", cmap=cmap,
                           norm=norm)
            ax.set_title(f"{label}: {title}" if label else title, fontsize=9)
            ticks = np.unique(np.linspace(0, len(names) - 1, min(len(names), 16)).round().astype(int))
            ax.set_yticks(ticks)
            ax.set_yticklabels([f"{names[i]} {monitors[label].kind[names[i]]}" for i in ticks], fontsize=6)
            xt = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int))
            ax.set_xticks(xt)
            ax.set_xticklabels([str(steps[i]) for i in xt], fontsize=7)
            if r == rows - 1:
                ax.set_xlabel("training step", fontsize=8)
        bar = fig.colorbar(im, ax=list(axes[r]), shrink=0.9, extend="min" if log else "neither")
        if log:
            bar.set_label("black: exactly 0", fontsize=7)
    return _save(fig, path, dpi)
