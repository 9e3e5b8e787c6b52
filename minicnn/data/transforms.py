"""Batch transforms: vectorized over (N, C, H, W), seeded, uint8 or float.

Every transform is called as ``t(x, rng)``: ``x`` a batch (N, C, H, W) of
uint8 or floating point, ``rng`` an ``np.random.Generator`` (random transforms
draw from it; None means :func:`minicnn.random.default_rng`).  The result is a
new array of the same dtype unless the transform says otherwise (ToFloat);
the input is never written to.  Per-image parameters are drawn as arrays of
length N and applied with NumPy indexing, never a Python loop over images,
so the same ``rng`` state gives the same batch.

Random transforms carry ``augmentation = True``.  An evaluation
:class:`~minicnn.data.loader.DataLoader` (``train=False``) refuses any
transform that contains one, and :func:`without_augmentation` strips them,
so one pipeline gives the training transform and the matching evaluation one
(normalization shared by both)::

    train_tf = Compose([RandomHorizontalFlip(), RandomCrop(32, padding=4),
                        ToFloat(), Normalize(mean, std)])
    eval_tf = without_augmentation(train_tf)     # Compose([ToFloat(), Normalize(...)])

Geometry: pixel (i, j) has centre (i, j); resampling is bilinear with
half-pixel centres (PyTorch's ``align_corners=False``); samples falling
outside the image take ``fill``.  uint8 results are rounded and clipped.
"""
import numpy as np

from .. import random as mrandom

__all__ = ["Transform", "Compose", "ToFloat", "Normalize", "RandomHorizontalFlip",
           "RandomVerticalFlip", "RandomCrop", "RandomAffine", "RandomRotation",
           "ColorJitter", "RandomErasing", "Resize", "CenterCrop",
           "augmentations", "without_augmentation"]


# ---------------------------------------------------------------- helpers

def _batch(x, who):
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{who} expects a batch (N, C, H, W) ndarray, got {shape}")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"{who} expects uint8 or float pixels, got {x.dtype}")
    return x


def _rng(rng):
    return mrandom.default_rng() if rng is None else rng


def _work_dtype(x):
    """float64 stays float64 (gradient checks); uint8 and float32 compute in float32."""
    return np.float64 if x.dtype == np.float64 else np.float32


def _as_input_dtype(v, dtype):
    if dtype == np.uint8:
        return np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return v.astype(dtype, copy=False)


def _size(size, who):
    """int -> (size, size); (h, w) -> (h, w); positive ints."""
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise ValueError(f"{who}: size must be a positive int or (h, w), got {size!r}")
    return int(h), int(w)


def _range(v, who, name, center=0.0, lower=None):
    """x -> (center - x, center + x) (x >= 0); (lo, hi) -> itself (lo <= hi), clamped below at ``lower``."""
    if np.isscalar(v):
        if v < 0:
            raise ValueError(f"{who}: {name} must be >= 0, got {v!r}")
        lo, hi = center - v, center + v
    else:
        lo, hi = v
        if lo > hi:
            raise ValueError(f"{who}: {name} range ({lo}, {hi}) has min > max")
    if lower is not None:
        lo = max(lo, lower)
    return float(lo), float(hi)


def _take_pixels(x, pix):
    """out[n, c, i, j] = x[n, c].flat[pix[n, i, j]] for x (N, C, H, W), pix (N, h, w) int -> (N, C, h, w)."""
    N, C, H, W = x.shape
    base = (np.arange(N * C, dtype=np.intp) * (H * W)).reshape(N, C, 1, 1)
    return np.ascontiguousarray(x).reshape(-1).take(base + pix[:, None])


def _bilinear(x, sy, sx, fill):
    """Sample x (N, C, H, W) at float coordinates sy, sx (N, h, w) -> (N, C, h, w) in the work dtype.

    The four neighbours are weighted (1-wy)(1-wx), (1-wy)wx, wy(1-wx), wy wx;
    neighbours outside the image contribute ``fill``.  Integer coordinates
    return the pixel exactly (the other weights are 0).
    """
    N, C, H, W = x.shape
    dt = _work_dtype(x)
    y0, x0 = np.floor(sy), np.floor(sx)
    wy, wx = (sy - y0).astype(dt)[:, None], (sx - x0).astype(dt)[:, None]
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    out = np.zeros((N, C) + sy.shape[1:], dt)
    for dy, dx, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                      (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        yi, xi = y0 + dy, x0 + dx
        inside = ((yi >= 0) & (yi < H) & (xi >= 0) & (xi < W))[:, None]
        v = _take_pixels(x, np.clip(yi, 0, H - 1) * W + np.clip(xi, 0, W - 1))
        out += w * np.where(inside, v, dt(fill))
    return out


# ---------------------------------------------------------------- base and composition

class Transform:
    """Base class: ``t(x, rng=None)`` maps a batch (N, C, H, W) to a batch.

    Subclasses that draw random numbers set ``augmentation = True``.
    """
    augmentation = False

    def __call__(self, x, rng=None):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(x, rng)")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, all drawing from the same ``rng``."""

    def __init__(self, transforms):
        transforms = list(transforms)
        for t in transforms:
            if not callable(t):
                raise TypeError(f"Compose expects callables t(x, rng), got {t!r}")
        self.transforms = transforms

    @property
    def augmentation(self):
        return any(getattr(t, "augmentation", False) for t in self.transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x


def _flatten(transform):
    if isinstance(transform, Compose):
        for t in transform.transforms:
            yield from _flatten(t)
    elif transform is not None:
        yield transform


def augmentations(transform):
    """The augmentation transforms inside ``transform`` (searched through nested Compose).

    A plain callable without an ``augmentation`` attribute counts as deterministic.
    """
    return [t for t in _flatten(transform) if getattr(t, "augmentation", False)]


def without_augmentation(transform):
    """``transform`` with every augmentation removed: the matching evaluation transform."""
    return Compose([t for t in _flatten(transform) if not getattr(t, "augmentation", False)])


# ---------------------------------------------------------------- deterministic

class ToFloat(Transform):
    """uint8 -> float32 x * scale (default 1/255, so [0, 1]); float input is only cast to ``dtype``."""

    def __init__(self, scale=1 / 255, dtype=np.float32):
        self.scale = scale
        self.dtype = np.dtype(dtype)

    def __call__(self, x, rng=None):
        x = _batch(x, "ToFloat")
        if x.dtype == np.uint8:
            return np.multiply(x, self.dtype.type(self.scale), dtype=self.dtype)
        return x.astype(self.dtype, copy=False)


class Normalize(Transform):
    """y[:, c] = (x[:, c] - mean[c]) / std[c] on float batches; ``inverse`` undoes it.

    mean, std: one value per channel, or scalars for all.  uint8 input is refused:
    put ToFloat() first so that mean and std are on a known scale.
    """

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, np.float64))
        self.std = np.atleast_1d(np.asarray(std, np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ValueError("Normalize: mean and std must be scalars or 1-D per-channel sequences")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be > 0, got {self.std.tolist()}")

    def _per_channel(self, x, who):
        x = _batch(x, who)
        if x.dtype == np.uint8:
            raise TypeError(f"{who} expects float input; put ToFloat() before Normalize")
        C = x.shape[1]
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, C):
                raise ValueError(f"{who}: {len(v)} {name} values for {C} channels")
        shape = (1, -1, 1, 1)
        return (x, self.mean.astype(x.dtype).reshape(shape), self.std.astype(x.dtype).reshape(shape))

    def __call__(self, x, rng=None):
        x, mean, std = self._per_channel(x, "Normalize")
        return (x - mean) / std

    def inverse(self, y):
        """x = y * std + mean."""
        y, mean, std = self._per_channel(y, "Normalize.inverse")
        return y * std + mean


class CenterCrop(Transform):
    """The central (h, w) window; for odd margins the extra row/column is cut at the bottom/right."""

    def __init__(self, size):
        self.size = _size(size, "CenterCrop")

    def __call__(self, x, rng=None):
        x = _batch(x, "CenterCrop")
        (h, w), (H, W) = self.size, x.shape[2:]
        if h > H or w > W:
            raise ValueError(f"CenterCrop: size {(h, w)} exceeds the image size {(H, W)}")
        top, left = (H - h) // 2, (W - w) // 2
        return x[:, :, top:top + h, left:left + w].copy()


class Resize(Transform):
    """Bilinear resize to ``size`` ((h, w), or an int for square), half-pixel centres.

    Source coordinate of output row i: (i + 0.5) * H / h - 0.5, clamped to [0, H - 1]
    (PyTorch's ``interpolate(mode='bilinear', align_corners=False)``, no antialiasing).
    """

    def __init__(self, size):
        self.size = _size(size, "Resize")

    @staticmethod
    def _axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    def __call__(self, x, rng=None):
        x = _batch(x, "Resize")
        (h, w), (H, W) = self.size, x.shape[2:]
        if (h, w) == (H, W):
            return x.copy()
        dt = _work_dtype(x)
        y0, y1, wy = self._axis(h, H)
        x0, x1, wx = self._axis(w, W)
        wy, wx = wy.astype(dt)[:, None], wx.astype(dt)
        rows = x[:, :, y0, :] * (1 - wy) + x[:, :, y1, :] * wy
        out = rows[..., x0] * (1 - wx) + rows[..., x1] * wx
        return _as_input_dtype(out, x.dtype)


# ---------------------------------------------------------------- augmentations

class _RandomFlip(Transform):
    augmentation = True
    _axis = None

    def __init__(self, p=0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, x, rng=None):
        x = _batch(x, type(self).__name__)
        flip = _rng(rng).random(len(x)) < self.p
        out = x.copy()
        out[flip] = np.flip(x[flip], axis=self._axis)
        return out


class RandomHorizontalFlip(_RandomFlip):
    """Mirror each image left-right with probability p (default 0.5)."""
    _axis = 3


class RandomVerticalFlip(_RandomFlip):
    """Mirror each image top-bottom with probability p (default 0.5)."""
    _axis = 2


def _reflect(i, n):
    """Reflection without repeating the edge (… 2 1 | 0 1 2 … n-1 | n-2 …), for |overhang| < n."""
    i = np.abs(i)
    return np.where(i >= n, 2 * (n - 1) - i, i)


def _symmetric(i, n):
    """Reflection repeating the edge (… 1 0 | 0 1 … n-1 | n-1 n-2 …), for |overhang| <= n."""
    return np.where(i < 0, -i - 1, np.where(i >= n, 2 * n - 1 - i, i))


_PAD_INDEX = {"edge": lambda i, n: np.clip(i, 0, n - 1), "reflect": _reflect, "symmetric": _symmetric}


class RandomCrop(Transform):
    """A random (h, w) window of the image padded by ``padding`` on every side.

    padding: int, or (pad_h, pad_w); padding_mode: 'constant' (``fill``), 'edge',
    'reflect' (edge not repeated) or 'symmetric' (edge repeated).  The window's top-left
    corner is uniform over the valid positions, drawn per image.  The padding is never
    materialized: each output pixel is read from its source (or is ``fill``).
    """
    augmentation = True

    def __init__(self, size, padding=0, padding_mode="constant", fill=0):
        self.size = _size(size, "RandomCrop")
        pad = (padding, padding) if np.isscalar(padding) else tuple(padding)
        if len(pad) != 2 or min(pad) < 0 or any(int(p) != p for p in pad):
            raise ValueError(f"RandomCrop: padding must be an int >= 0 or (pad_h, pad_w), got {padding!r}")
        if padding_mode != "constant" and padding_mode not in _PAD_INDEX:
            raise ValueError(f"RandomCrop: padding_mode must be one of constant, "
                             f"{', '.join(_PAD_INDEX)}; got {padding_mode!r}")
        self.padding = tuple(int(p) for p in pad)
        self.padding_mode = padding_mode
        self.fill = fill

    def __call__(self, x, rng=None):
        x = _batch(x, "RandomCrop")
        rng = _rng(rng)
        N, _, H, W = x.shape
        (h, w), (ph, pw) = self.size, self.padding
        if h > H + 2 * ph or w > W + 2 * pw:
            raise ValueError(f"RandomCrop: size {(h, w)} exceeds the padded image {(H + 2 * ph, W + 2 * pw)}")
        if self.padding_mode == "reflect" and (ph >= H or pw >= W):
            raise ValueError(f"RandomCrop: reflect padding {self.padding} must be smaller than "
                             f"the image {(H, W)}")
        rows = rng.integers(0, H + 2 * ph - h + 1, N)[:, None] + np.arange(h) - ph   # (N, h)
        cols = rng.integers(0, W + 2 * pw - w + 1, N)[:, None] + np.arange(w) - pw   # (N, w)
        if self.padding_mode == "constant":
            inside = (((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :])
            rows, cols = np.clip(rows, 0, H - 1), np.clip(cols, 0, W - 1)
        else:
            index = _PAD_INDEX[self.padding_mode]
            rows, cols = index(rows, H), index(cols, W)
        out = _take_pixels(x, rows[:, :, None] * W + cols[:, None, :])
        if self.padding_mode == "constant" and (ph or pw):
            out[~np.broadcast_to(inside[:, None], out.shape)] = self.fill
        return out


class RandomAffine(Transform):
    """Random rotation, shift and zoom about the image centre, bilinear, outside = ``fill``.

    degrees: d -> angle ~ U(-d, d), or (lo, hi); positive turns counter-clockwise as displayed.
    translate: (a, b) -> shift ~ U(-a W, a W) horizontally, U(-b H, b H) vertically, rounded to
    whole pixels (so pure shifts stay sharp); None for none.
    scale: (lo, hi) -> zoom ~ U(lo, hi) (> 1 enlarges); None for 1.
    Output pixel p comes from  R(-angle) (p - c - t) / s + c,  c = ((W-1)/2, (H-1)/2).
    """
    augmentation = True

    def __init__(self, degrees=0, translate=None, scale=None, fill=0):
        who = type(self).__name__
        self.degrees = _range(degrees, who, "degrees")
        if translate is not None:
            translate = tuple(float(t) for t in translate)
            if len(translate) != 2 or not all(0 <= t <= 1 for t in translate):
                raise ValueError(f"{who}: translate must be (a, b) fractions in [0, 1], got {translate!r}")
        if scale is not None:
            scale = _range(scale, who, "scale")
            if scale[0] <= 0:
                raise ValueError(f"{who}: scale range must be positive, got {scale!r}")
        self.translate, self.scale, self.fill = translate, scale, fill

    def __call__(self, x, rng=None):
        x = _batch(x, type(self).__name__)
        rng = _rng(rng)
        N, _, H, W = x.shape
        angle = np.deg2rad(rng.uniform(*self.degrees, N))
        tx = ty = np.zeros(N)
        if self.translate is not None:
            tx = np.round(rng.uniform(-1, 1, N) * self.translate[0] * W)
            ty = np.round(rng.uniform(-1, 1, N) * self.translate[1] * H)
        s = rng.uniform(*self.scale, N) if self.scale is not None else np.ones(N)
        cy, cx = (H - 1) / 2, (W - 1) / 2
        cos, sin = (v[:, None, None] for v in (np.cos(angle), np.sin(angle)))
        dy = (np.arange(H)[None, :, None] - cy - ty[:, None, None]) / s[:, None, None]
        dx = (np.arange(W)[None, None, :] - cx - tx[:, None, None]) / s[:, None, None]
        sx = cos * dx - sin * dy + cx
        sy = sin * dx + cos * dy + cy
        return _as_input_dtype(_bilinear(x, sy, sx, self.fill), x.dtype)


class RandomRotation(RandomAffine):
    """Rotation by angle ~ U(-degrees, degrees) (or U(lo, hi)) about the centre; see RandomAffine."""

    def __init__(self, degrees, fill=0):
        super().__init__(degrees=degrees, fill=fill)


_GREY = np.array([0.299, 0.587, 0.114])


class ColorJitter(Transform):
    """Random brightness, contrast and saturation, in that order, factors drawn per image.

    Each argument v gives a factor f ~ U(max(0, 1 - v), 1 + v) (or pass (lo, hi)); 0 disables.
    brightness: x f;  contrast: blend with the image's mean grey level, m + f (x - m);
    saturation: blend with the pixel's grey level g = 0.299 R + 0.587 G + 0.114 B, g + f (x - g).
    Results are clipped to [0, 255] for uint8 and to [0, 1] for float, so use it before Normalize.
    Saturation needs 3 channels; on 1-channel images it is left out.
    """
    augmentation = True

    def __init__(self, brightness=0, contrast=0, saturation=0):
        self.brightness = _range(brightness, "ColorJitter", "brightness", 1.0, 0.0)
        self.contrast = _range(contrast, "ColorJitter", "contrast", 1.0, 0.0)
        self.saturation = _range(saturation, "ColorJitter", "saturation", 1.0, 0.0)

    @staticmethod
    def _grey(v):
        if v.shape[1] == 1:
            return v
        if v.shape[1] != 3:
            raise ValueError(f"ColorJitter: contrast/saturation need 1 or 3 channels, got {v.shape[1]}")
        return np.tensordot(_GREY.astype(v.dtype), v, axes=([0], [1]))[:, None]

    def __call__(self, x, rng=None):
        x = _batch(x, "ColorJitter")
        rng = _rng(rng)
        top = 255.0 if x.dtype == np.uint8 else 1.0
        v = x.astype(_work_dtype(x))

        def factor(bounds):
            return rng.uniform(*bounds, len(x)).astype(v.dtype)[:, None, None, None]

        if self.brightness != (1.0, 1.0):
            v = np.clip(v * factor(self.brightness), 0, top)
        if self.contrast != (1.0, 1.0):
            m = self._grey(v).mean(axis=(1, 2, 3), keepdims=True)
            v = np.clip(m + factor(self.contrast) * (v - m), 0, top)
        if self.saturation != (1.0, 1.0) and x.shape[1] != 1:
            g = self._grey(v)
            v = np.clip(g + factor(self.saturation) * (v - g), 0, top)
        return _as_input_dtype(v, x.dtype)


class RandomErasing(Transform):
    """With probability p per image, set a random rectangle to ``value`` (Random Erasing / Cutout).

    The rectangle's area is U(scale) x H W and its aspect ratio h/w is log-uniform in ``ratio``;
    its sides are rounded and clipped to the image, its position uniform.  Defaults
    p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3) (Zhong et al. 2017).  Cutout with a
    fixed s x s square: ``RandomErasing(p=1, scale=(s*s/(H*W),)*2, ratio=(1, 1))``.
    """
    augmentation = True

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomErasing: p must be in [0, 1], got {p!r}")
        self.scale = _range(scale, "RandomErasing", "scale")
        self.ratio = _range(ratio, "RandomErasing", "ratio")
        if self.scale[0] < 0 or self.scale[1] > 1 or self.ratio[0] <= 0:
            raise ValueError(f"RandomErasing: need 0 <= scale <= 1 and ratio > 0, "
                             f"got scale={scale!r}, ratio={ratio!r}")
        self.p, self.value = p, value

    def __call__(self, x, rng=None):
        x = _batch(x, "RandomErasing")
        rng = _rng(rng)
        N, _, H, W = x.shape
        apply = rng.random(N) < self.p
        area = rng.uniform(*self.scale, N) * H * W
        r = np.exp(rng.uniform(*np.log(self.ratio), N))
        h = np.clip(np.round(np.sqrt(area * r)), 0, H).astype(np.intp)
        w = np.clip(np.round(np.sqrt(area / r)), 0, W).astype(np.intp)
        top = (rng.random(N) * (H - h + 1)).astype(np.intp)
        left = (rng.random(N) * (W - w + 1)).astype(np.intp)
        ii, jj = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
        box = ((ii >= top[:, None, None]) & (ii < (top + h)[:, None, None])
               & (jj >= left[:, None, None]) & (jj < (left + w)[:, None, None]))
        mask = (box & apply[:, None, None])[:, None]
        return np.where(mask, np.asarray(self.value).astype(x.dtype), x)
