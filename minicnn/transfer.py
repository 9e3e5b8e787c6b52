"""Transfer learning: a pretrained backbone, a new head, and what to train when.

The usual recipe, and the tools here for each step::

    net = efficientnet_lite0(pretrained=True, num_classes=0)
    model = TransferModel(net.stages(), classifier_head(1280, 5))   # new head
    model.freeze_backbone()                      # 1. train the head only ...
    prefix, rest = model.split()                 #    ... on features computed once,
    f_train = extract_features(prefix, train)    #    scaled as the backbone expects: (N, 1280, 7, 7)
    fit(rest, (f_train, y_train), optimizer=Adam(rest.parameters()), epochs=20)
    model.unfreeze_top(2)                        # 2. fine-tune the top stages, slower
    opt = Adam(model.param_groups(lr=1e-3, backbone_lr=1e-4))

- :func:`freeze` / :func:`unfreeze` switch ``requires_grad`` by module or by
  parameter-name prefix; optimizers skip frozen parameters.
- :class:`TransferModel` keeps every BatchNorm whose parameters are frozen in
  eval mode, even through ``model.train()`` (as Keras does for a layer with
  ``trainable=False``): its running statistics stay those of the pretraining
  data and a small batch of new images cannot shift them.
- :meth:`TransferModel.split` cuts off the longest leading run of layers that
  cannot change during training (frozen, no dropout).  Their output is a pure
  function of the image, so :func:`extract_features` computes it once (eval
  mode, no graph) and training runs only the rest, on cached arrays: for a
  frozen EfficientNet-Lite0 that turns ~0.4 GFLOP per image and epoch into a
  few thousand FLOPs.  (The price: no augmentation of cached images; cache
  flipped copies as extra samples instead.)
- :meth:`TransferModel.param_groups` gives the backbone a smaller learning
  rate than the head (optionally decaying further per stage from the top), and
  :class:`GradualUnfreezing` unfreezes the top stages first, a few at a time.
"""
from . import nn
from .nn.dropout import DropoutBase
from .nn.norm import BatchNorm
from .train.callbacks import Callback
from .train.predict import MODEL_TRANSFORM, predict

__all__ = ["freeze", "unfreeze", "parameter_counts", "classifier_head", "TransferModel",
           "extract_features", "GradualUnfreezing"]


def _selected(module, prefixes):
    """(name, parameter) of ``module`` under any of ``prefixes`` (dotted names; None: all)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a Module, got {type(module).__name__}")
    if prefixes is None:
        return list(module.named_parameters())
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    prefixes = tuple(p.rstrip(".") for p in prefixes)
    chosen = [(n, p) for n, p in module.named_parameters()
              if any(n == q or n.startswith(q + ".") for q in prefixes)]
    unmatched = [q for q in prefixes if not any(n == q or n.startswith(q + ".") for n, _ in chosen)]
    if unmatched:
        names = [n for n, _ in module.named_parameters()]
        raise ValueError(f"no parameters under {unmatched} in {type(module).__name__} "
                         f"(its parameters are named like {names[:4]}...)")
    return chosen


def freeze(module, prefixes=None):
    """Stop training the parameters of ``module`` (those under ``prefixes``, if given).

    prefixes: a dotted name or a sequence of them, matched whole-component
        (``'blocks.1'`` selects ``blocks.1.*``, not ``blocks.10.*``); ValueError if one
        matches nothing.  Returns the names of the parameters selected.
    """
    chosen = _selected(module, prefixes)
    for _, p in chosen:
        p.requires_grad_(False)
    return [n for n, _ in chosen]


def unfreeze(module, prefixes=None):
    """Train the parameters of ``module`` (those under ``prefixes``) again; see :func:`freeze`."""
    chosen = _selected(module, prefixes)
    for _, p in chosen:
        p.requires_grad_(True)
    return [n for n, _ in chosen]


def parameter_counts(module):
    """(trainable, total) numbers of parameter elements in ``module``."""
    sizes = [(p.data.size, p.requires_grad) for p in module.parameters()]
    return sum(s for s, t in sizes if t), sum(s for s, _ in sizes)


def classifier_head(in_channels, num_classes, hidden=128, dropout=0.2):
    """GlobalAvgPool → Dense ``hidden`` + ReLU → Dropout → Dense ``num_classes``.

    (N, in_channels, H, W) feature maps -> (N, num_classes) logits.
    """
    if min(in_channels, num_classes, hidden) < 1:
        raise ValueError(f"in_channels, num_classes and hidden must be positive, got "
                         f"{in_channels}, {num_classes}, {hidden}")
    return nn.Sequential(nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(in_channels, hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def _is_frozen_norm(m):
    params = list(m.parameters())
    return isinstance(m, BatchNorm) and bool(params) and not any(p.requires_grad for p in params)


def _is_fixed(module):
    """True if training cannot change ``module`` or its output: nothing trainable, no dropout,
    and every BatchNorm frozen (so in eval mode in a TransferModel)."""
    return not any(p.requires_grad for p in module.parameters()) and not any(
        isinstance(m, DropoutBase) or (isinstance(m, BatchNorm) and not _is_frozen_norm(m))
        for m in module.modules())


def _as_sequential(layers, what):
    if isinstance(layers, nn.Sequential):
        return layers
    if isinstance(layers, nn.Module):
        return nn.Sequential(layers)
    layers = list(layers)
    if not all(isinstance(m, nn.Module) for m in layers):
        raise TypeError(f"{what} must be a Module or a sequence of Modules")
    return nn.Sequential(*layers)


class TransferModel(nn.Module):
    """logits = head(backbone(x)), backbone a Sequential of stages (e.g. ``net.stages()``).

    backbone: a Sequential, a list of Modules (stages, bottom first) or one Module.
    head: a Module or a list of layers (e.g. :func:`classifier_head`).
    bn_eval: 'frozen' (default): BatchNorm layers whose parameters are all frozen stay in
        eval mode through ``train()``; 'all': every BatchNorm of the backbone does, also
        when it is fine-tuned (what Keras advises for small datasets).
    preprocess: the input convention (:class:`~minicnn.data.Preprocess`); default the
        backbone's (``net.stages()`` carries the pretrained model's), so ``predict`` and
        :func:`extract_features` scale images as the backbone was trained.
    classes: output names for ``predict_image`` (e.g. an ImageFolder's ``classes``).
    """

    def __init__(self, backbone, head, bn_eval="frozen", preprocess=MODEL_TRANSFORM, classes=None):
        super().__init__()
        if bn_eval not in ("frozen", "all"):
            raise ValueError(f"bn_eval must be 'frozen' or 'all', got {bn_eval!r}")
        self.backbone = _as_sequential(backbone, "backbone")
        self.head = head if isinstance(head, nn.Module) else _as_sequential(head, "head")
        self.bn_eval = bn_eval
        if preprocess == MODEL_TRANSFORM:
            preprocess = getattr(self.backbone, "preprocess", None)
        self.preprocess, self.classes = preprocess, None if classes is None else list(classes)

    def forward(self, x):
        return self.head(self.backbone(x))

    def onnx_forward(self, g, x):
        """``forward`` spelt for :func:`minicnn.io.export_onnx`."""
        return g(self.head, g(self.backbone, x))

    def train(self, mode=True):
        """Set training mode, except for the BatchNorm layers ``bn_eval`` keeps in eval mode."""
        super().train(mode)
        if mode:
            backbone = {id(m) for m in self.backbone.modules()} if self.bn_eval == "all" else set()
            for m in self.modules():
                if isinstance(m, BatchNorm) and (_is_frozen_norm(m) or id(m) in backbone):
                    object.__setattr__(m, "training", False)
        return self

    def freeze_backbone(self):
        """Freeze every backbone parameter (the head stays trainable); returns self."""
        freeze(self.backbone)
        return self

    def unfreeze_top(self, n):
        """Make the top ``n`` backbone stages trainable and freeze the others; returns self."""
        stages = len(self.backbone)
        if not 0 <= n <= stages:
            raise ValueError(f"n must be in 0..{stages} (the backbone's stages), got {n}")
        for i, stage in enumerate(self.backbone):
            stage.requires_grad_(i >= stages - n)
        return self

    def param_groups(self, lr, backbone_lr, decay=1.0):
        """Optimizer parameter groups: the head at ``lr``; backbone stage i (of S, counting from
        the bottom) at ``backbone_lr · decay^(S-1-i)``, so lower stages can learn slower still.

        Frozen parameters are included (optimizers skip them), so stages unfrozen later
        (:class:`GradualUnfreezing`) train without a new optimizer.
        """
        groups = [{"params": list(self.head.parameters()), "lr": lr}]
        stages = len(self.backbone)
        for i, stage in enumerate(self.backbone):
            params = list(stage.parameters())
            if params:
                groups.append({"params": params, "lr": backbone_lr * decay ** (stages - 1 - i)})
        return groups

    def _layers(self):
        head = list(self.head) if isinstance(self.head, nn.Sequential) else [self.head]
        return list(self.backbone) + head

    def split(self):
        """(prefix, rest): the leading layers that training cannot change, and a TransferModel
        of the remaining ones (sharing all modules), so that ``rest(prefix(x)) == self(x)``.

        The prefix takes backbone stages and then head layers while they are fixed (no
        trainable parameter, no dropout, BatchNorm frozen); a trailing Flatten stays in
        ``rest`` so that the cached arrays are (N, C, H, W) maps, as DataLoader takes them
        (a pooled map is (N, C, 1, 1)).  Call again after (un)freezing.
        The model's ``preprocess`` goes with the images: to the prefix (to ``rest`` when the
        prefix is empty); ``rest`` keeps the ``classes``.
        """
        layers, stages = self._layers(), len(self.backbone)
        k = 0
        while k < len(layers) - 1 and _is_fixed(layers[k]):
            k += 1
        while k > 0 and isinstance(layers[k - 1], nn.Flatten):
            k -= 1
        rest_head = layers[max(k, stages):]
        head = self.head if k <= stages else nn.Sequential(*rest_head)
        prefix = nn.Sequential(*layers[:k])
        prefix.preprocess = self.preprocess
        return prefix, TransferModel(layers[k:stages], head, self.bn_eval,
                                     preprocess=None if k else self.preprocess, classes=self.classes)


def extract_features(module, data, batch_size=64, transform=MODEL_TRANSFORM):
    """``module``'s outputs for every image of ``data``, in eval mode without a graph.

    data: images (N, C, H, W), an (images, labels) pair or a dataset.  transform (no
    augmentation) is applied per batch first: ``'model'`` (default) is the module's own
    ``preprocess`` (the prefix of :meth:`TransferModel.split` carries the backbone's), None
    none (uint8 is then scaled to [0, 1]), or any batch transform.  Returns float32 (N, ...) outputs in order (the images themselves, transformed,
    for an empty ``module``).  Computing frozen features once replaces recomputing them
    every epoch: see :meth:`TransferModel.split`.
    """
    return predict(module, data, batch_size=batch_size, transform=transform)


class GradualUnfreezing(Callback):
    """Unfreeze a TransferModel's backbone from the top as training goes on.

    schedule: {epoch: n}: from that epoch (counting from 0) on, the top ``n`` stages are
    trainable and the rest frozen (:meth:`TransferModel.unfreeze_top`), e.g.
    ``{0: 0, 2: 1, 4: 3}``: head only, then one stage, then three.  The model must be the
    trainer's, and its optimizer must hold the backbone (:meth:`TransferModel.param_groups`).
    The state follows from the epoch, so a resumed run unfreezes as an uninterrupted one.
    """

    def __init__(self, schedule):
        if not schedule or any(not isinstance(e, int) or e < 0 or not isinstance(n, int) or n < 0
                               for e, n in schedule.items()):
            raise ValueError(f"schedule must map epochs >= 0 to stage counts >= 0, got {schedule!r}")
        self.schedule = dict(sorted(schedule.items()))

    def on_epoch_begin(self, trainer, epoch):
        model = trainer.model
        if not isinstance(model, TransferModel):
            raise TypeError(f"GradualUnfreezing needs a TransferModel, got {type(model).__name__}")
        due = [n for e, n in self.schedule.items() if e <= epoch]
        if due:
            before = [p.requires_grad for p in model.backbone.parameters()]
            model.unfreeze_top(due[-1])
            if before != [p.requires_grad for p in model.backbone.parameters()]:
                trainer.log(f"GradualUnfreezing: epoch {epoch + 1}: top {due[-1]} of "
                            f"{len(model.backbone)} backbone stages trainable")
