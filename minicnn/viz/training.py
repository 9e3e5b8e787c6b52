"""Pictures of a training run, saved as PNG: learning curves, confusion matrix,
misclassified images.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no
display, no global backend change), so they work on headless machines and
leave an interactive session's backend alone.  Each function returns the path
it wrote.
"""
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig, path, dpi):
    """Write ``fig`` as PNG to ``path`` (or into a binary file object, e.g. for TensorBoard)."""
    FigureCanvasAgg(fig)
    if hasattr(path, "write"):
        fig.savefig(path, dpi=dpi, format="png")
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_history(history, path, title=None, dpi=100):
    """Loss (left) and accuracy (right) per epoch, train vs validation.

    A widening gap between the curves (train still improving, validation flat or
    worse) is overfitting.  ``history`` is a History or its ``.history`` dict.
    """
    logs = getattr(history, "history", history)
    if "loss" not in logs:
        raise ValueError(f"history has no 'loss' to plot (it has {sorted(logs)})")
    epochs = np.arange(1, len(logs["loss"]) + 1)
    panels = [name for name in ("loss", "accuracy") if name in logs]
    fig = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot(epochs, logs[name], "o-", label="train", ms=3)
        if f"val_{name}" in logs:
            ax.plot(epochs, logs[f"val_{name}"], "s-", label="validation", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_confusion_matrix(cm, class_names, path, normalize=True, title="Confusion matrix", dpi=100):
    """Heatmap of ``cm`` (rows true, columns predicted) with class names on both axes.

    normalize: colour and annotate each row as fractions of its true class (recall
    on the diagonal); the counts are used when False.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"cm must be (C, C) with C = {len(class_names)} class names, got shape {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) if normalize else cm
    c = len(class_names)
    size = max(4.0, 0.55 * c + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(c), class_names, rotation=45, ha="right")
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = shown.max() / 2 if shown.size else 0
    for i in range(c):
        for j in range(c):
            text = f"{shown[i, j]:.2f}" if normalize else str(int(shown[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > high else "black")
    return _save(fig, path, dpi)


def plot_misclassified(images, y_true, y_pred, class_names, path, max_images=36, dpi=100):
    """A grid of up to ``max_images`` images whose prediction is wrong, each titled
    'true → predicted'.  ``images``: (N, H, W), (N, 1, H, W) or (N, 3, H, W)."""
    images, y_true, y_pred = np.asarray(images), np.asarray(y_true), np.asarray(y_pred)
    if not len(images) == len(y_true) == len(y_pred):
        raise ValueError(f"{len(images)} images, {len(y_true)} labels and {len(y_pred)} predictions")
    wrong = np.flatnonzero(y_true != y_pred)[:max_images]
    cols = max(1, min(6, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    fig = Figure(figsize=(1.9 * cols, 2.1 * rows), layout="constrained")
    if len(wrong) == 0:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        ax.axis("off")
    for k, i in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, k + 1)
        img = images[i]
        if img.ndim == 3:
            img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(f"{class_names[y_true[i]]}\n→ {class_names[y_pred[i]]}", fontsize=8)
        ax.axis("off")
    return _save(fig, path, dpi)
