"""In-memory image classification datasets: images, int64 labels, class names.

Every dataset in minicnn is an :class:`ArrayDataset`:

- ``images``: uint8, (N, H, W) for grey or (N, C, H, W) for colour (NCHW, the
  layout the network takes, so loaders never transpose);
- ``labels``: int64 (N,), each in ``[0, len(classes))``;
- ``classes``: list of str, index -> class name.

``ds[i]`` is ``(image, label)``; ``ds[i:j]`` or ``ds[index_array]`` is a new
ArrayDataset holding that subset.
"""
import numpy as np


def check_labels(labels, num_classes, name="labels"):
    """Validate and return ``labels`` as int64 (N,): integers in [0, num_classes).

    ``num_classes`` None only checks that labels are non-negative integers.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or np.any(labels != np.round(labels)):
            raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            bound = "inf" if num_classes is None else num_classes
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must lie in [0, {bound}), found {bad}")
    return labels


def check_images(images, name="images"):
    """Validate ``images`` as (N, H, W) or (N, C, H, W); returns it as an ndarray."""
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"{name} must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
        raise TypeError(f"{name} must be uint8 or floating point, got dtype {images.dtype}")
    return images


class ArrayDataset:
    """A dataset held in two arrays.

    images: (N, H, W) or (N, C, H, W), uint8 (or float for derived data).
    labels: (N,) integers in [0, len(classes)).
    classes: list of class names; default ``['0', ..., str(max label)]``.
    """

    def __init__(self, images, labels, classes=None):
        images = check_images(images)
        labels = np.asarray(labels)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if classes is None:
            labels = check_labels(labels, None)
            classes = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
        classes = [str(c) for c in classes]
        self.images = images
        self.labels = check_labels(labels, len(classes))
        self.classes = classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.images[index], self.labels[index]
        return ArrayDataset(self.images[index], self.labels[index], self.classes)

    def __repr__(self):
        return (f"{type(self).__name__}({len(self)} images of shape {self.images.shape[1:]}, "
                f"{len(self.classes)} classes)")
