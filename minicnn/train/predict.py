"""predict / predict_image: a trained model's outputs for arrays, files and photos.

Which transform runs.  ``transform="model"`` (the default) uses the model's own input
convention, ``model.preprocess`` (set by pretrained weights, by ``TransferModel`` from its
backbone, or by the CLI from a checkpoint), and no transform when it has none; ``None``
forces none (uint8 pixels scaled to [0, 1]); any other batch transform is used as given.

One image or a batch.  A 4-D array is a batch (N, C, H, W).  A 3-D array is one image
(C, H, W) when the model's first convolution takes C > 1 channels (a colour model cannot
take a 3-D batch), and the result then has no batch axis; for a one-channel model a 3-D
array stays (N, H, W), N grey images, as datasets store them (for N = 1 the two readings
are the same).
"""
import numpy as np

from ..data.image import grey, load_image
from ..data.preprocess import Preprocess
from ..nn import Conv2d
from ..tensor import Tensor
from .loop import EVAL_BATCH_SIZE, _EvalMode, as_loader

__all__ = ["MODEL_TRANSFORM", "input_channels", "model_transform", "predict", "predict_image"]

MODEL_TRANSFORM = "model"


def input_channels(model):
    """Channels the model's first convolution takes (None without a convolution)."""
    for m in model.modules():
        if isinstance(m, Conv2d):
            return m.in_channels
    return None


def model_transform(model, transform=MODEL_TRANSFORM):
    """The batch transform to apply: ``model.preprocess`` for ``'model'`` (None if it has
    none), else ``transform`` itself (None: none)."""
    if isinstance(transform, str):
        if transform != MODEL_TRANSFORM:
            raise ValueError(f"transform must be {MODEL_TRANSFORM!r}, None or a callable, got {transform!r}")
        return getattr(model, "preprocess", None)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be {MODEL_TRANSFORM!r}, None or a callable t(x, rng), got {transform!r}")
    return transform


def _single_image(model, data):
    """``data`` as a batch of one if it is one (C, H, W) image by the rule of the module docstring."""
    array = data.data if isinstance(data, Tensor) else data
    if not isinstance(array, np.ndarray) or array.ndim != 3:
        return None
    c = input_channels(model)
    if c is None or c == 1:
        return None
    if array.shape[0] != c:
        raise ValueError(f"a 3-D array is one (C, H, W) image for {type(model).__name__}, whose first "
                         f"convolution takes C={c} channels; got shape {array.shape} (for an (H, W, C) "
                         f"image pass image.transpose(2, 0, 1); for a batch pass (N, {c}, H, W))")
    return array[None]


def predict(model, data, batch_size=EVAL_BATCH_SIZE, transform=MODEL_TRANSFORM):
    """Model outputs (N, ...) for every image of ``data``, in order, batched, in eval mode.

    data: images (N, C, H, W) (or (N, H, W) grey), one image (C, H, W) (output without the
        batch axis; see the module docstring), an (images, labels) pair, a dataset or a
        DataLoader.
    transform: ``'model'`` (default: ``model.preprocess`` if it has one), None, or a batch
        transform.
    """
    one = _single_image(model, data)
    loader = as_loader(data if one is None else one, batch_size, transform=model_transform(model, transform),
                       train=False)
    outs = []
    with _EvalMode(model):
        for x, _ in loader:
            outs.append(model(Tensor(x)).data)
    out = np.concatenate(outs)
    return out if one is None else out[0]


def _load_one(model, source, preprocess, size, mode):
    """uint8 (C, H, W) of ``source`` (file, PIL image or array), read as the model expects."""
    if isinstance(source, Tensor):
        source = source.data
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            return source[None]
        if source.ndim == 3 and source.shape[-1] in (1, 3) and source.shape[0] not in (1, 3):
            return np.ascontiguousarray(source.transpose(2, 0, 1))   # (H, W, C) as a file reader gives it
        if source.ndim != 3:
            raise ValueError(f"expected one image (C, H, W), (H, W, C) or (H, W), got shape {source.shape}")
        return source
    if isinstance(preprocess, Preprocess) and size is None:
        return preprocess.load(source)
    rgb = load_image(source, size, mode)
    if input_channels(model) == 1:
        return grey(rgb)[None]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def predict_image(model, source, top=5, transform=MODEL_TRANSFORM, classes=None, size=None,
                  mode="shorter+center_crop"):
    """The ``top`` most probable classes for one image: [(class name, probability), ...].

    source: an image file path, a PIL image, or an array (C, H, W), (H, W, C) or (H, W)
        used at its own size.  A file or PIL image is read and resized by the model's
        ``preprocess`` (e.g. shorter side 256, central 224 for EfficientNet-Lite0), or to
        ``size`` by ``mode`` (see :func:`~minicnn.data.load_image`) when given or when the
        model has no preprocess (None: the image's own size).
    transform: as for :func:`predict` (default: the model's own).
    classes: output names; default ``model.classes``, else the indices as strings.
    Probabilities are the softmax of the outputs.
    """
    if not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    tf = model_transform(model, transform)
    image = _load_one(model, source, tf, size, mode)
    logits = predict(model, image[None], batch_size=1, transform=tf)[0].astype(np.float64)
    if logits.ndim != 1:
        raise ValueError(f"predict_image needs a classifier with (N, K) outputs, got {(1, *logits.shape)}")
    names = classes if classes is not None else getattr(model, "classes", None)
    if names is not None and len(names) != len(logits):
        raise ValueError(f"{len(names)} class names for {len(logits)} outputs")
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = np.argsort(-probs, kind="stable")[:top]
    return [(str(names[i]) if names is not None else str(i), float(probs[i])) for i in best]
