"""Preprocess: how an image reaches a model, as one object a model (or a checkpoint) carries.

A photo of any size becomes the model's input in two steps:

1. :meth:`Preprocess.load`: read (file, PIL image) and bring to ``size`` by ``resize``
   (:func:`~minicnn.data.image.load_image`), as uint8 (C, H, W), grey when ``channels`` is 1;
2. ``preprocess(batch)``: a batch transform, float32 ``(x · scale − mean) / std`` per channel,
   usable wherever a transform is (``DataLoader``, ``predict``, ``extract_features``).

Pretrained weights carry theirs (``model.preprocess``); a model trained with the CLI stores
its own in the checkpoint's metadata (:meth:`to_dict` / :meth:`from_dict`: plain JSON).
"""
import numpy as np

from .image import MAX_PIXELS, check_resize_mode, grey, image_size, load_image
from .transforms import Normalize, ToFloat, Transform

__all__ = ["Preprocess"]


class Preprocess(Transform):
    """Input convention of a model: ``size`` (h, w), ``resize`` mode and ``crop`` (see
    :func:`~minicnn.data.image.load_image`), ``channels`` (3 RGB or 1 grey), and the scaling
    ``(x · scale − mean) / std`` (``scale`` 1/255 for [0, 1] pixels, 1 for 0..255).

    >>> Preprocess((224, 224), mean=(127,) * 3, std=(128,) * 3, scale=1.0, crop=0.875)
    """

    def __init__(self, size, mean, std, scale=1 / 255, resize="shorter+center_crop", crop=1.0, channels=3):
        self.size = image_size(size, "Preprocess: size")
        check_resize_mode(resize, crop)
        if channels not in (1, 3):
            raise ValueError(f"Preprocess: channels must be 1 or 3, got {channels!r}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"Preprocess: mean and std need {channels} values, got {mean!r} and {std!r}")
        self.scale, self.resize, self.crop, self.channels = float(scale), resize, float(crop), channels
        self._steps = (ToFloat(scale=self.scale), Normalize(self.mean, self.std))

    def __call__(self, x, rng=None):
        for step in self._steps:
            x = step(x, rng)
        return x

    def load(self, source, max_pixels=MAX_PIXELS):
        """uint8 (channels, h, w) of the image file or PIL image ``source``, resized as configured."""
        rgb = load_image(source, self.size, self.resize, crop=self.crop, max_pixels=max_pixels)
        if self.channels == 1:
            return grey(rgb)[None]
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def to_dict(self):
        """A JSON-able description; :meth:`from_dict` rebuilds it."""
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std), "scale": self.scale,
                "resize": self.resize, "crop": self.crop, "channels": self.channels}

    @classmethod
    def from_dict(cls, d):
        """The Preprocess :meth:`to_dict` described; ValueError naming what does not fit."""
        fields = {"size", "mean", "std", "scale", "resize", "crop", "channels"}
        if not isinstance(d, dict) or set(d) != fields:
            raise ValueError(f"a preprocess description needs exactly the fields {sorted(fields)}, got {d!r:.120}")
        return cls(**d)

    def __eq__(self, other):
        return isinstance(other, Preprocess) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "Preprocess(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"
