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


def load_image(path, size=None, max_pixels=MAX_PIXELS):
    """RGB uint8 (H, W, 3) of the image file ``path``, resized (bilinear, antialiased)
    to ``size`` (h, w) if given.

    Raises :class:`~minicnn.errors.LimitExceededError` for an image of more than
    ``max_pixels`` pixels, :class:`~minicnn.errors.FileFormatError` for a file that is
    not a readable image or has no defined range (both name the file), and
    ``OSError`` if the file cannot be opened at all.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            with Image.open(f) as im:
                pixels = im.size[0] * im.size[1]
                if pixels > max_pixels:
                    raise LimitExceededError(f"{im.size[0]}x{im.size[1]} image, {pixels} pixels, more than "
                                             f"max_pixels={max_pixels}; pass a larger max_pixels= to read it", path)
                if size is not None:
                    im.draft("RGB", (size[1], size[0]))  # JPEG: let the decoder shrink by 2^k first
                im = _rgb(im, path)
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except Image.DecompressionBombError as e:
            raise LimitExceededError(f"{e} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS)", path) from e
        except FileFormatError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
            # The file is open: whatever Pillow trips over is in its bytes.
            raise FileFormatError(f"cannot read the image ({type(e).__name__}: {e})", path) from e


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
