"""Augmentation preview: each original image beside several augmented versions, as a PNG.

Drawn with Matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so it works headless and leaves the caller's figures alone.
"""
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _displayable(img):
    """(C, H, W) -> (H, W) or (H, W, C) in [0, 1] for imshow.

    uint8 is divided by 255; floats already in [0, 1] are kept; other floats (e.g.
    normalized data) are min-max rescaled per image so their structure stays visible.
    """
    img = np.moveaxis(img, 0, -1)
    if img.dtype == np.uint8:
        img = img / 255.0
    else:
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 1:
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img[..., 0] if img.shape[-1] == 1 else img


def augmentation_grid(images, transform, path, n_augment=5, seed=0, labels=None, classes=None,
                      title=None, cell=1.3):
    """Save a grid: row i shows ``images[i]`` then ``n_augment`` draws of ``transform`` on it.

    images: (N, H, W) grey or (N, C, H, W), uint8 or float; a handful (N <= 32).
    transform: a batch transform ``t(x, rng)`` (see :mod:`minicnn.data.transforms`),
        applied once to all N * n_augment copies, drawing from ``np.random.default_rng(seed)``.
    labels, classes: optional, to title each row with its class name.
    cell: inches per image.  Returns the PNG's Path.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or not 1 <= len(images) <= 32:
        raise ValueError(f"augmentation_grid expects 1 to 32 images (N, H, W) or (N, C, H, W), "
                         f"got shape {images.shape}")
    if not isinstance(n_augment, (int, np.integer)) or n_augment < 1:
        raise ValueError(f"n_augment must be a positive int, got {n_augment!r}")
    n = len(images)
    augmented = transform(np.repeat(images, n_augment, axis=0), np.random.default_rng(seed))
    augmented = augmented.reshape(n, n_augment, *augmented.shape[1:])

    fig = Figure(figsize=(cell * (n_augment + 1), cell * n + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, n_augment + 1, squeeze=False)
    for i in range(n):
        row = [images[i]] + list(augmented[i])
        for j, (ax, img) in enumerate(zip(axes[i], row)):
            ax.imshow(_displayable(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else f"aug {j}", fontsize=8)
        if labels is not None:
            name = classes[labels[i]] if classes is not None else str(labels[i])
            axes[i][0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
