"""Pictures of layer internals, saved as PNG: which axes each normalization reduces
over, a conv layer's filters, the feature maps of one image through every conv
layer, per-layer activation and gradient statistics, and activation std by depth.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
change).  Each function returns the path it wrote.
"""
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import nn
from ..internals import capture
from ..tensor import Tensor
from .training import _save

# (title, which cells of the (N, C, H·W) block one normalization group covers)
_NORMS = (
    ("Batch Norm", "per channel, over N and H·W", lambda n, c, s: c == 0),
    ("Layer Norm", "per sample, over C and H·W", lambda n, c, s: n == 0),
    ("Instance Norm", "per sample and channel, over H·W", lambda n, c, s: (n == 0) & (c == 0)),
    ("Group Norm", "per sample and group, over C/G and H·W", lambda n, c, s: (n == 0) & (c // 2 == 0)),
)


def plot_norm_axes(path, N=4, C=6, HW=4, dpi=100):
    """Four (N, C, H·W) blocks, as in Wu & He's Group Norm paper: the shaded cells are
    the elements one mean and variance are taken over (GroupNorm with groups of 2
    channels).  Every other shaded set is a translate of the one shown."""
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the '3d' projection)
    fig = Figure(figsize=(13, 3.6))
    fig.subplots_adjust(left=0, right=0.97, bottom=0.02, top=0.88, wspace=0.05)
    n, c, s = np.indices((N, C, HW))
    for i, (name, what, shaded) in enumerate(_NORMS):
        ax = fig.add_subplot(1, 4, i + 1, projection="3d")
        on = shaded(n, c, s)
        # two solids, so that the faces between the shaded group and the rest are drawn
        ax.voxels(~on, facecolors=(0.8, 0.8, 0.8, 0.15), edgecolors=(0.3, 0.3, 0.3, 0.4), linewidth=0.4)
        ax.voxels(on, facecolors=(0.12, 0.47, 0.71, 0.85), edgecolors=(0.05, 0.2, 0.4, 0.8), linewidth=0.5)
        ax.set_xlabel("N")
        ax.set_ylabel("C")
        ax.set_zlabel("H·W")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_box_aspect((N, C, HW), zoom=0.8)
        ax.view_init(elev=22, azim=-55)
        ax.set_title(f"{name}\n{what}", fontsize=10)
    return _save(fig, path, dpi)


def _weight_of(layer):
    weight = layer.weight if isinstance(layer, nn.Module) else layer
    weight = np.asarray(weight.data if isinstance(weight, Tensor) else weight)
    if weight.ndim != 4:
        raise ValueError(f"plot_filters: expected a Conv2d or a weight of shape (out, in, kh, kw), "
                         f"got shape {weight.shape}")
    return weight


def plot_filters(layer, path, max_filters=32, max_inputs=8, dpi=100):
    """The filters of a Conv2d (or a weight (out, in, kh, kw)).

    First layers (1 or 3 input channels) show one tile per filter: colour (each
    filter min-max scaled on its own) for RGB, or blue-white-red for grey.
    Otherwise row o shows filter o's kernels for the first ``max_inputs`` input
    channels.  Blue-white-red tiles share one symmetric scale (white = 0), so
    magnitudes compare across the grid; a colour bar gives the scale.
    """
    full = _weight_of(layer)
    w = full[:max_filters].astype(np.float64)
    O, I = w.shape[:2]
    per_filter = I in (1, 3)
    lim = float(np.abs(w[:, :max_inputs]).max()) or 1.0
    if per_filter:
        cols = int(np.ceil(np.sqrt(O)))
        rows = -(-O // cols)
        cells = [(o, 0) for o in range(O)]
    else:
        cols, rows = min(I, max_inputs), O
        cells = [(o, i) for o in range(O) for i in range(cols)]
    width, height = 0.9 * cols + 1.4, 0.9 * rows + 0.9
    fig = Figure(figsize=(width, height))
    # margins in inches, placed by hand: a layout engine takes minutes on a 32 x 8 grid
    fig.subplots_adjust(left=0.4 / width, right=1 - (0.1 if I == 3 else 1.0) / width, bottom=0.1 / height,
                        top=1 - 0.7 / height,
                        wspace=0.15, hspace=0.15)
    shared = None
    for k, (o, i) in enumerate(cells):
        ax = fig.add_subplot(rows, cols, k + 1)
        if I == 3:
            tile = np.moveaxis(w[o], 0, -1)
            lo, hi = tile.min(), tile.max()
            ax.imshow((tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile), interpolation="nearest")
        else:
            shared = ax.imshow(w[o, i], cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if not per_filter and i == 0:
            ax.set_ylabel(str(o), rotation=0, labelpad=8, fontsize=7)
        if not per_filter and o == 0:
            ax.set_title(f"in {i}", fontsize=7)
    title = f"filters {tuple(full.shape)} (out, in, kh, kw)"
    if shared is not None:
        bar = fig.add_axes((1 - 0.8 / width, 0.2, 0.15 / width, 0.6))
        fig.colorbar(shared, cax=bar, label="weight")
    else:  # a colour bar cannot serve tiles scaled one by one
        title += "\neach RGB filter min-max scaled on its own"
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    return _save(fig, path, dpi)


def plot_feature_maps(model, image, path, max_channels=8, kinds=None, dpi=100):
    """The outputs of each conv layer (or of each layer of class ``kinds``) for one
    ``image`` (C, H, W): one row per layer, its first ``max_channels`` channels, sharing
    one colour scale per row (the bar at its end)."""
    image = np.asarray(image.data if isinstance(image, Tensor) else image)
    if image.ndim != 3:
        raise ValueError(f"plot_feature_maps: expected one image (C, H, W), got shape {image.shape}")
    maps = [(name, out[0]) for name, _, out in capture(model, image[None], kinds or nn.Conv2d) if out.ndim == 4]
    if not maps:
        raise ValueError("plot_feature_maps: the model has no layer of the requested kind producing (N, C, H, W)")
    cols = min(max_channels, max(m.shape[0] for _, m in maps))
    width, height = 1.2 * cols + 2.0, 1.3 * len(maps) + 0.3
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.9 / width, bottom=0.15 / height, top=1 - 0.15 / height,
                        wspace=0.08, hspace=0.15)
    for r, (name, fmap) in enumerate(maps):
        shown = fmap[:cols]
        for k in range(len(shown)):
            ax = fig.add_subplot(len(maps), cols, r * cols + k + 1)
            im = ax.imshow(shown[k], cmap="viridis", vmin=shown.min(), vmax=shown.max(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(f"{name}\n{fmap.shape[0]}×{fmap.shape[1]}×{fmap.shape[2]}", fontsize=7)
        box = fig.axes[-1].get_position()
        fig.colorbar(im, cax=fig.add_axes((1 - 0.8 / width, box.y0, 0.12 / width, box.height)))
    return _save(fig, path, dpi)


def plot_activation_stats(report, path, dpi=100):
    """From :func:`minicnn.internals.inspect`'s report: activation mean ± std and the
    fraction of zeros per layer and, after a backward, ‖∂L/∂p‖ per parameter (log scale)."""
    panels = 3 if report.params else 2
    fig = Figure(figsize=(5 * panels, 4))
    names = [f"{s.name} {s.kind}" for s in report.layers]
    x = np.arange(len(names))
    ax = fig.add_subplot(1, panels, 1)
    mean, std = np.array(report.column("mean")), np.array(report.column("std"))
    ax.errorbar(x, mean, yerr=std, fmt="o-", capsize=3, markersize=3)
    ax.set_title("activation mean ± std")
    ax = fig.add_subplot(1, panels, 2)
    ax.bar(x, report.column("zero_fraction"), color="tab:red")
    ax.set_ylim(0, 1)
    ax.set_title("fraction of zeros")
    for a in fig.axes:
        a.set_xticks(x)
        a.set_xticklabels(names, rotation=90, fontsize=7)
    if report.params:
        ax = fig.add_subplot(1, panels, 3)
        px = np.arange(len(report.params))
        ax.bar(px, [max(p.grad_norm, 1e-30) for p in report.params], color="tab:green")
        ax.set_yscale("log")
        ax.set_xticks(px)
        ax.set_xticklabels([p.name for p in report.params], rotation=90, fontsize=7)
        ax.set_title(f"‖∂L/∂p‖  (loss {report.loss:.4g})")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_depth_study(columns, path, dpi=100):
    """Activation std against depth (log scale), one line per init: the output of
    :func:`minicnn.internals.init_depth_study`."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for label, stds in columns.items():
        ax.semilogy(np.arange(1, len(stds) + 1), stds, "o-", markersize=3, label=label)
    ax.set_xlabel("ReLU layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("activation std")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, dpi)
