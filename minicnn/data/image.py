"""One image file -> RGB uint8, read with its true range and a bound on its size.

Pillow decodes; this module decides what its modes mean:

* 8-bit modes (``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ...): Pillow's conversion to RGB.
  (Pillow already reads 16-bit-per-channel colour PNGs as 8-bit ``RGB``.)
* 16-bit grey (``I;16``, ``I;16B``...; ``I`` from a PNG, whose integers have 16 bits):
  ``round(v / 65535 * 255)``, so 40000 is 156, not clipped to 255.
* float (``F``): the convention is [0, 1], so ``round(v * 255)``; an image with values
  outside [0, 1], NaN or infinities is refused rather than guessed at.
* other 32-bit integers (``I`` from a TIFF): no defined range, refused.

A decompression bomb (a small file whose header claims a huge image) is refused by
``max_pixels`` (default :data:`MAX_PIXELS`) right after the header is read, before
anything is decoded.  Pillow's own check applies on top, without being changed here:
it warns above ``PIL.Image.MAX_IMAGE_PIXELS`` and refuses above twice that, which
is reported as our limit error too.
"""
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FileFormatError, LimitExceededError

MAX_PIXELS = 1 << 26   # 64 megapixels (a 61 MP camera's photos fit): 192 MB as RGB uint8
RESIZE_MODES = ("shorter+center_crop", "stretch", "pad")


def image_size(size, who="size"):
    """``size`` as a pair of positive ints (h, w); an int means a square."""
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) != h or int(w) != w or min(h, w) < 1:
        raise ValueError(f"{who} must be a positive int or (h, w) pair, got {size!r}")
    return int(h), int(w)


def check_resize_mode(mode, crop=1.0):
    """Refuse (ValueError) a resize ``mode`` not in :data:`RESIZE_MODES` or a ``crop`` outside (0, 1]."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    if not 0 < crop <= 1:
        raise ValueError(f"crop must be in (0, 1], got {crop!r}")


def grey(rgb, axis=-1):
    """uint8 luma 0.299 R + 0.587 G + 0.114 B (ITU-R 601, as Pillow's ``L``) of RGB uint8
    images whose colour axis is ``axis``; that axis is removed."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.round(np.moveaxis(rgb, axis, -1) @ weights).astype(np.uint8)


def _scaled(w, h, scale):
    return max(1, round(w * scale)), max(1, round(h * scale))


def _plan(width, height, size, mode, crop):
    """(resized (w, h), crop box or None, paste offset or None) taking a width x height image to ``size``."""
    th, tw = size
    if mode == "stretch":
        return (tw, th), None, None
    if mode == "pad":
        return _scaled(width, height, min(tw / width, th / height)), None, True
    # Cover (th/crop, tw/crop) keeping the aspect, then cut the centre: crop=0.875 with 224 is
    # ImageNet's "shorter side 256, central 224".
    nw, nh = _scaled(width, height, max(tw / width, th / height) / crop)
    nw, nh = max(nw, tw), max(nh, th)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return (nw, nh), (left, top, left + tw, top + th), None


def load_image(source, size=None, mode="shorter+center_crop", *, crop=1.0, max_pixels=MAX_PIXELS):
    """RGB uint8 (H, W, 3) of the image file (or PIL image) ``source``, brought to ``size``.

    size: (h, w) or an int (square); None keeps the image's own size.
    mode: how an image of another shape reaches ``size`` (bilinear, antialiased):
        ``'shorter+center_crop'`` (default) scales it, keeping its aspect, until it covers
        ``size / crop`` and cuts out the central ``size``; ``'stretch'`` scales each axis
        to ``size`` (a circle in a wide photo becomes an ellipse); ``'pad'`` scales it,
        keeping its aspect, to fit inside ``size`` and centres it on black.
    crop: the fraction of the covered area kept by ``'shorter+center_crop'``: 0.875 with
        size 224 is the usual ImageNet evaluation crop (shorter side 256, central 224).

    Raises :class:`~minicnn.errors.LimitExceededError` for an image of more than
    ``max_pixels`` pixels, :class:`~minicnn.errors.FileFormatError` for a file that is
    not a readable image or has no defined range (both name the file), and
    ``OSError`` if the file cannot be opened at all.
    """
    if size is not None:
        size = image_size(size)
    check_resize_mode(mode, crop)
    if isinstance(source, Image.Image):
        return _load(source, size, mode, crop, max_pixels, "<PIL image>", ours=False)
    path = Path(source)
    with open(path, "rb") as f:
        try:
            with Image.open(f) as im:
                return _load(im, size, mode, crop, max_pixels, path, ours=True)
        except Image.DecompressionBombError as e:
            raise LimitExceededError(f"{e} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS)", path) from e
        except FileFormatError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
            # The file is open: whatever Pillow trips over is in its bytes.
            raise FileFormatError(f"cannot read the image ({type(e).__name__}: {e})", path) from e


def _load(im, size, mode, crop, max_pixels, path, ours):
    pixels = im.size[0] * im.size[1]
    if pixels > max_pixels:
        raise LimitExceededError(f"{im.size[0]}x{im.size[1]} image, {pixels} pixels, more than "
                                 f"max_pixels={max_pixels}; pass a larger max_pixels= to read it", path)
    if size is None:
        return np.asarray(_rgb(im, path), dtype=np.uint8)
    resized, box, pad = _plan(*im.size, size, mode, crop)
    if ours:  # a caller's PIL image is left as it is
        im.draft("RGB", resized)  # JPEG: let the decoder shrink by 2^k first (never below ``resized``)
    im = _rgb(im, path)
    if im.size != resized:
        im = im.resize(resized, Image.BILINEAR)
    if box is not None:
        im = im.crop(box)
    if pad:
        canvas = Image.new("RGB", (size[1], size[0]))
        canvas.paste(im, ((size[1] - im.size[0]) // 2, (size[0] - im.size[1]) // 2))
        im = canvas
    return np.asarray(im, dtype=np.uint8)


def _rgb(im, path):
    """``im`` as an RGB image, high-range modes scaled from their true range."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        grey = np.round(np.asarray(im, dtype=np.float64) * (255 / 65535))
    elif im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise FileFormatError("a float image with NaN or infinite values", path)
        lo, hi = (values.min(), values.max()) if values.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise FileFormatError(f"a float image with values in [{lo:g}, {hi:g}]; float images are read "
                                  "as [0, 1] (rescale it, or save it with 8 or 16 bits)", path)
        grey = np.round(values * 255)
    elif im.mode.startswith("I"):
        raise FileFormatError(f"a 32-bit integer image (mode {im.mode}) has no defined range; "
                              "save it with 8 or 16 bits", path)
    else:
        return im.convert("RGB")
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
