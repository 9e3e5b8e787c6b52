"""Named architectures and the examples' training recipes, as the CLI uses them.

:data:`ARCHITECTURES` maps a name (stored as ``arch`` in a checkpoint's metadata) to a
builder ``f(num_classes)`` and the input shape it is made for, so a checkpoint can be
rebuilt from its file alone (:func:`model_from_checkpoint`: weights + ``arch``,
``num_classes``, ``classes`` and ``preprocess`` from the metadata).

:data:`PRESETS` are the examples' recipes for ``python -m minicnn train --preset NAME``, in
their plain form (the examples add early stopping, LR-on-plateau, one-cycle, test-time
augmentation and fine-tuning on top):

    fashion   fashion_cnn on Fashion-MNIST (28x28 grey), Adam 1e-3, batch 64, 15 epochs
    cifar10   ResNet-20 on CIFAR-10, SGD 0.1 momentum 0.9, weight decay 5e-4, cosine,
              flips and 4-pixel crops, batch 128, 30 epochs
    flowers   EfficientNet-Lite0 pretrained on ImageNet, frozen, with a new head trained on
              features computed once (examples/transfer_flowers.py step (b)): Adam 1e-3,
              label smoothing 0.1, batch 32, 20 epochs; needs --data DIR (one folder per class)

Any preset trains on ``--data DIR`` instead of its dataset: an ImageFolder (``DIR/train``
and ``DIR/test`` or ``DIR/val`` if present, else 20% of DIR held out), resized to the
preset's input size keeping the aspect (shorter side + centre crop).
"""
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .data import CIFAR10, FashionMNIST, ImageFolder, Preprocess, train_val_split, transforms
from .data.image import grey
from .io import load_model, load_state
from .models import efficientnet_lite0, fashion_cnn, fashion_cnn_bn, fashion_cnn_strong, resnet20, resnet32, \
    resnet44, resnet56
from .models.pretrained import CIFAR_RESNET_WEIGHTS, EFFICIENTNET_LITE0_IMAGENET, carry
from .ops import cross_entropy
from .optim import SGD, Adam
from .optim.lr_scheduler import CosineAnnealingLR
from .train import confusion_matrix, fit, predict
from .train.callbacks import Callback
from .transfer import TransferModel, classifier_head, extract_features

__all__ = ["ARCHITECTURES", "PRESETS", "build", "model_from_checkpoint", "train_preset"]


def _transfer_lite0(num_classes, pretrained=False):
    net = efficientnet_lite0(pretrained=pretrained, num_classes=0)
    return TransferModel(net.stages(), classifier_head(1280, num_classes, hidden=256, dropout=0.5))


# name -> (builder(num_classes), input shape (C, H, W), pretrained weights entry or None)
ARCHITECTURES = {
    "fashion_cnn": (fashion_cnn, (1, 28, 28), None),
    "fashion_cnn_bn": (fashion_cnn_bn, (1, 28, 28), None),
    "fashion_cnn_strong": (fashion_cnn_strong, (1, 28, 28), None),
    **{f"resnet{d}": (partial(f, num_classes=10), (3, 32, 32), CIFAR_RESNET_WEIGHTS[d])
       for d, f in zip((20, 32, 44, 56), (resnet20, resnet32, resnet44, resnet56))},
    "efficientnet_lite0": (partial(efficientnet_lite0, num_classes=1000), (3, 224, 224), EFFICIENTNET_LITE0_IMAGENET),
    "transfer_efficientnet_lite0": (_transfer_lite0, (3, 224, 224), None),
}


def build(arch, num_classes=None):
    """A fresh (randomly initialized) model of the architecture named ``arch``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    builder = ARCHITECTURES[arch][0]
    if num_classes is None:
        return builder()
    return builder.func(num_classes=num_classes) if isinstance(builder, partial) else builder(num_classes)


def model_from_checkpoint(path):
    """(model, metadata) from a ``.npz`` written by ``save_model`` with an ``arch`` in its
    metadata (``train`` and ``convert`` write one): the architecture rebuilt, the weights
    loaded (all or nothing), ``model.preprocess`` and ``model.classes`` from the metadata
    (or, for converted pretrained weights, from their entry)."""
    meta = load_state(path).get("metadata") or {}
    arch = meta.get("arch")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: the checkpoint's metadata names no architecture ('arch'); rebuild the model "
                         "in Python and use minicnn.io.load_model")
    model = build(arch, meta.get("num_classes"))
    load_model(path, model)
    entry = ARCHITECTURES[arch][2]
    if "preprocess" in meta:
        model.preprocess = Preprocess.from_dict(meta["preprocess"])
        model.classes = meta.get("classes")
    elif entry is not None:
        carry(model, entry)
    return model, meta


@dataclass(frozen=True)
class Preset:
    arch: str
    dataset: object            # a dataset class (train=True/False), or None: --data is required
    preprocess: Preprocess
    epochs: int
    batch_size: int
    lr: float
    augment: tuple = ()        # training-only batch transforms (uint8), before preprocess


PRESETS = {
    "fashion": Preset("fashion_cnn", FashionMNIST, Preprocess(28, (0.0,), (1.0,), channels=1), 15, 64, 1e-3),
    "cifar10": Preset("resnet20", CIFAR10, CIFAR_RESNET_WEIGHTS[20].preprocess, 30, 128, 0.1,
                      (transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4))),
    "flowers": Preset("transfer_efficientnet_lite0", None, Preprocess(224, (127.0,) * 3, (128.0,) * 3, scale=1.0),
                      20, 32, 1e-3),
}


def _folder_data(root, size):
    root = Path(root)
    test = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test is not None:
        train, val = ImageFolder(root / "train", size=size), ImageFolder(test, size=size)
        if train.classes != val.classes:
            raise ValueError(f"{root}: train classes {train.classes} differ from {test.name} classes {val.classes}")
        return train, val, train.classes
    data = ImageFolder(root, size=size)
    train, val = train_val_split(data, 0.2, seed=0)
    return train, val, data.classes


def _xy(data):
    return data if isinstance(data, tuple) else (data.images, data.labels)


class _SaveBest(Callback):
    """Save ``model`` (the whole model, also when the trainer trains only its head) to ``path``
    with ``metadata`` whenever the validation accuracy improves."""

    main_process_only = True

    def __init__(self, path, model, metadata):
        self.path, self.model, self.metadata, self.best = path, model, metadata, -np.inf

    def on_epoch_end(self, trainer, epoch, logs):
        from .io import save_model
        if logs["val_accuracy"] > self.best:
            self.best = logs["val_accuracy"]
            save_model(self.path, self.model, {**self.metadata, "epoch": epoch + 1, "logs": dict(logs)})


def train_preset(name, out, data=None, epochs=None, batch_size=None, lr=None, seed=0, verbose=1):
    """Train preset ``name`` (on ``data``, an image folder, if given); write to ``out``:
    ``best.npz`` (the best validation epoch, with arch, classes and preprocess in its metadata),
    ``curves.png`` and ``confusion.png`` (validation data).  Returns (model, history, val accuracy)."""
    from .viz.training import plot_confusion_matrix, plot_history
    preset = PRESETS[name]
    if data is None and preset.dataset is None:
        raise ValueError(f"preset {name!r} trains on your images: pass --data DIR (one sub-folder per class)")
    size = preset.preprocess.size
    if data is not None:
        train, val, classes = _folder_data(data, size)
        if preset.preprocess.channels == 1:
            train, val = (grey(train.images, 1), train.labels), (grey(val.images, 1), val.labels)
    else:
        train, val = preset.dataset(train=True), preset.dataset(train=False)
        classes = list(train.classes)
    epochs, batch_size, lr = epochs or preset.epochs, batch_size or preset.batch_size, lr or preset.lr
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if preset.arch == "transfer_efficientnet_lite0":
        model = _transfer_lite0(len(classes), pretrained=True)
    else:
        model = build(preset.arch, len(classes))
    model.preprocess, model.classes = preset.preprocess, list(classes)
    meta = {"arch": preset.arch, "num_classes": len(classes), "classes": list(classes),
            "preprocess": preset.preprocess.to_dict(), "preset": name}
    saver = _SaveBest(out / "best.npz", model, meta)
    train, val = _xy(train), _xy(val)
    if isinstance(model, TransferModel):
        model.freeze_backbone()
        prefix, trained = model.split()
        train_xy = (extract_features(prefix, train[0]), train[1])
        val_xy = (extract_features(prefix, val[0]), val[1])
        history = fit(trained, train_xy, validation_data=val_xy, epochs=epochs, batch_size=batch_size,
                      optimizer=Adam(trained.parameters(), lr=lr), loss=partial(cross_entropy, label_smoothing=0.1),
                      callbacks=[saver], seed=seed, verbose=verbose, transform=None)
    else:
        train_tf = transforms.Compose([*preset.augment, preset.preprocess])
        if preset.arch.startswith("resnet"):
            opt = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
            scheduler = CosineAnnealingLR(opt, epochs)
        else:
            opt, scheduler = Adam(model.parameters(), lr=lr), None
        trained, val_xy = model, val
        history = fit(model, train, validation_data=val, epochs=epochs,
                      batch_size=batch_size, optimizer=opt, scheduler=scheduler, transform=train_tf,
                      callbacks=[saver], seed=seed, verbose=verbose)
    load_model(out / "best.npz", model)
    logits = predict(trained, val_xy[0])   # the head on cached features, or the model with its preprocess
    cm = confusion_matrix(val_xy[1], logits.argmax(1), len(classes))
    plot_history(history, out / "curves.png", title=f"{name}: {preset.arch}")
    plot_confusion_matrix(cm, classes, out / "confusion.png")
    return model, history, float(np.trace(cm) / max(cm.sum(), 1))
