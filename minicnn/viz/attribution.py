"""Where the network looks, drawn: Grad-CAM and saliency maps over their images, saved as PNG.

Drawn with matplotlib's object API on the Agg canvas (no pyplot).  Returns the path written.
"""
import numpy as np
from matplotlib.figure import Figure

from .training import _save


def _displayable(images):
    """(N, H, W, 3) or (N, H, W) floats in [0, 1] from (N, C, H, W) or (N, H, W) images,
    each min-max scaled on its own (normalized network inputs have no fixed range)."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = np.moveaxis(x, 1, -1)
        if x.shape[-1] == 1:
            x = x[..., 0]
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
        raise ValueError(f"expected images (N, C, H, W) with 1 or 3 channels or (N, H, W), got {np.shape(images)}")
    lo = x.min(axis=tuple(range(1, x.ndim)), keepdims=True)
    hi = x.max(axis=tuple(range(1, x.ndim)), keepdims=True)
    return (x - lo) / np.where(hi > lo, hi - lo, 1)


def scale_map(m, percentile=99):
    """One map scaled to [0, 1] by its ``percentile``-th value (saliency maps have a few
    extreme pixels that would otherwise leave the rest dark)."""
    top = np.percentile(m, percentile)
    return np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m, dtype=np.float64)


def plot_attributions(images, maps, path, row_labels=None, alpha=0.55, cmap="jet", dpi=100):
    """One row per image: the image, then each of ``maps`` (title -> (N, H, W) array, e.g.
    Grad-CAM heatmaps or :meth:`Attribution.map`) over a grey copy of it.

    Each map is scaled per image to [0, 1] by its 99th percentile (Grad-CAM's maps are in
    [0, 1] already), so colours compare within a map, not across images; the colour bar
    under each column gives that scale.  ``row_labels``: a caption per image (e.g. "cat → dog").
    """
    pics = _displayable(images)
    n = len(pics)
    for title, m in maps.items():
        if np.shape(m) != pics.shape[:3]:
            raise ValueError(f"map {title!r} has shape {np.shape(m)}; expected {pics.shape[:3]} (one per image)")
    cols = 1 + len(maps)
    width, height = 1.7 * cols + 0.4, 1.7 * n + 1.0
    fig = Figure(figsize=(width, height))
    # margins in inches, placed by hand (a layout engine is slow on many panels)
    fig.subplots_adjust(left=0.35 / width, right=1 - 0.1 / width, bottom=0.85 / height, top=1 - 0.3 / height,
                        wspace=0.06, hspace=0.06)
    axes = np.array(fig.subplots(n, cols, squeeze=False))
    grey = pics.mean(axis=-1) if pics.ndim == 4 else pics
    for i in range(n):
        axes[i, 0].imshow(pics[i], cmap=None if pics.ndim == 4 else "gray", interpolation="nearest")
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
        for j, (title, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(grey[i], cmap="gray", interpolation="nearest")
            im = axes[i, j].imshow(scale_map(np.asarray(m[i], np.float64)), cmap=cmap, vmin=0, vmax=1,
                                   alpha=alpha, interpolation="bilinear")
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
    axes[0, 0].set_title("image", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(1, cols):
        box = axes[-1, j].get_position()
        bar = fig.add_axes((box.x0 + 0.1 * box.width, 0.35 / height, 0.8 * box.width, 0.12 / height))
        fig.colorbar(im, cax=bar, orientation="horizontal")
        bar.tick_params(labelsize=7)
        bar.set_xlabel("relative attribution", fontsize=7)
    return _save(fig, path, dpi)
