"""Where does the network look?  Grad-CAM and input-gradient saliency maps.

    cam = grad_cam(model, images, "layer3")          # (N, H, W) in [0, 1]
    sal = saliency(model, images, method="integrated_gradients")
    sal.values                                       # (N, C, H, W) attributions
    sal.completeness_error                           # |Σ attr - (f(x) - f(x'))| / |f(x) - f(x')|

Every function explains one class score per image: the logit (before softmax,
as in the papers) of ``target`` (an int for every image, one per image, or None
for the predicted class).  The model runs in eval mode (BatchNorm with running
statistics, dropout off), since in train mode one image's explanation would
depend on the others in its batch; each module's mode, each parameter's
``requires_grad`` and ``.grad`` are as before afterwards.

Grad-CAM (Selvaraju et al. 2017): with A the chosen layer's output (N, K, h, w)
and y the score, α_k = mean over (i, j) of ∂y/∂A_k[i, j]; the map is
ReLU(Σ_k α_k A_k), bilinearly upsampled to the input's size and divided by its
maximum.  A late conv layer gives coarse but class-specific maps.

Saliency, three published definitions of an attribution per input pixel:

- ``gradient`` (Simonyan et al. 2014): ∂y/∂x.  Plot |∂y/∂x| maxed over colour
  channels (:meth:`Attribution.map`).
- ``smoothgrad`` (Smilkov et al. 2017): the mean of ∂y/∂x at ``samples`` copies of
  x + N(0, σ²), σ = ``noise`` · (max(x) - min(x)) per image (the paper finds
  10-20% and 50 samples work well).
- ``integrated_gradients`` (Sundararajan et al. 2017): (x - x') · ∫₀¹ ∂y/∂x at
  x' + α(x - x') dα, the integral by the midpoint rule over ``steps`` intervals
  (never at α = 0, where a zero baseline sits on every ReLU's kink).
  Completeness: Σ attributions = y(x) - y(x') exactly for the integral, so the
  gap left by the sum measures the quadrature error; it is reported, and more
  ``steps`` shrink it (the paper advises checking it is within 5%).
"""
import contextlib
from dataclasses import dataclass

import numpy as np

from .random import new_rng
from .tensor import Tensor, no_grad


@contextlib.contextmanager
def explaining(model):
    """Within the block: ``model`` in eval mode with every parameter frozen (so backward
    computes input gradients only and leaves ``.grad`` alone); modes and flags restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad = False
    try:
        yield
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
        for p, flag in flags:
            p.requires_grad = flag


def find_layer(model, layer):
    """The module ``layer`` names (dotted, as in ``named_modules``), or ``layer`` itself if it
    is one of ``model``'s modules; ValueError listing the names otherwise."""
    named = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in named:
            raise ValueError(f"no layer named {layer!r} in {type(model).__name__}; its layers are "
                             f"{[n for n in named if n]}")
        return named[layer]
    if not any(m is layer for m in named.values()):
        raise ValueError(f"{type(layer).__name__} is not a module of this {type(model).__name__}")
    return layer


def _targets(target, logits):
    """Class index per image: ``target`` broadcast to (N,), or the argmax of ``logits``."""
    n, classes = logits.shape
    if target is None:
        return logits.argmax(axis=1)
    t = np.broadcast_to(np.asarray(target), (n,)).astype(np.int64)
    if t.min() < 0 or t.max() >= classes:
        raise ValueError(f"target classes must be in [0, {classes}), got {np.unique(t).tolist()}")
    return t


def _score(logits, target):
    """(sum over images of each one's target logit, the per-image logits as ndarray, targets)."""
    if logits.ndim != 2:
        raise ValueError(f"expected the model to return logits (N, classes), got shape {logits.shape}")
    t = _targets(target, logits.data)
    onehot = np.zeros(logits.shape, logits.dtype)
    onehot[np.arange(len(t)), t] = 1
    return (logits * onehot).sum(), logits.data[np.arange(len(t)), t].astype(np.float64), t


def _as_images(images):
    x = np.asarray(images.data if isinstance(images, Tensor) else images)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float images (N, C, H, W), got {x.dtype} of shape {x.shape}")
    return x


def _resize_matrix(n_out, n_in):
    """(n_out, n_in) matrix of bilinear interpolation weights, half-pixel centres
    (PyTorch's ``align_corners=False``): row i samples the input at (i + ½)·n_in/n_out - ½."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m


def upsample(maps, size):
    """Bilinear resize of (N, h, w) maps to (N, *size)."""
    rows, cols = _resize_matrix(size[0], maps.shape[1]), _resize_matrix(size[1], maps.shape[2])
    return rows @ maps @ cols.T


def grad_cam(model, images, layer, target=None):
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the input's resolution (see the module docstring).

    layer: a dotted name (``"layer3"``, ``"features.6"``) or the module itself; its output
        must be (N, K, h, w) and it must run once per forward.
    target: the class to explain: None (the prediction), an int, or one per image.
    An image whose map is zero everywhere (no channel pushes the score up) stays zero.
    """
    x = _as_images(images)
    module = find_layer(model, layer)
    seen = []

    def replace(mod, inputs, out):
        # a fresh leaf: backward stops here and leaves ∂score/∂A in its .grad
        seen.append(Tensor(out.data, requires_grad=True))
        return seen[-1]

    handle = module.register_forward_hook(replace)
    try:
        with explaining(model):
            score, _, _ = _score(model(Tensor(x)), target)
            if len(seen) != 1:
                raise ValueError(f"grad_cam: layer {layer!r} ran {len(seen)} times in one forward pass; "
                                 "choose a layer that runs exactly once")
            activation = seen[0]
            if activation.ndim != 4:
                raise ValueError(f"grad_cam: layer {layer!r} gives shape {activation.shape}; "
                                 "expected feature maps (N, K, h, w)")
            if score.requires_grad:
                score.backward()
    finally:
        handle.remove()
    grad = activation.grad if activation.grad is not None else np.zeros_like(activation.data)
    alpha = grad.astype(np.float64).mean(axis=(2, 3))
    cam = np.maximum(np.einsum("nk,nkij->nij", alpha, activation.data.astype(np.float64)), 0)
    cam = upsample(cam, x.shape[2:])
    peak = cam.max(axis=(1, 2), keepdims=True)
    return (cam / np.where(peak > 0, peak, 1)).astype(np.float32)


@dataclass
class Attribution:
    """What :func:`saliency` found.  ``values`` (N, C, H, W): one attribution per input
    element; ``target`` (N,): the explained classes; ``score`` (N,): their logits at the
    images.  Integrated gradients add ``baseline_score`` (the logits at the baseline) and
    ``completeness_error`` (N,) = |Σ values - (score - baseline_score)| / |score - baseline_score|."""
    method: str
    values: np.ndarray
    target: np.ndarray
    score: np.ndarray
    baseline_score: np.ndarray = None
    completeness_error: np.ndarray = None

    def map(self):
        """(N, H, W): |values| maxed over channels, the usual picture of a saliency map."""
        return np.abs(self.values).max(axis=1)

    def __repr__(self):
        extra = ""
        if self.completeness_error is not None:
            extra = f", completeness error ≤ {self.completeness_error.max():.2e}"
        return f"Attribution({self.method}, values {self.values.shape}, targets {self.target.tolist()}{extra})"


def input_gradient(model, x, target):
    """(∂score/∂x (N, C, H, W), scores (N,), targets (N,)) for float images ``x``, in the
    current mode; call within :func:`explaining`."""
    xt = Tensor(x, requires_grad=True)
    score, scores, t = _score(model(xt), target)
    score.backward()
    return xt.grad, scores, t


SALIENCY_METHODS = ("gradient", "smoothgrad", "integrated_gradients")


def saliency(model, images, target=None, method="gradient", noise=0.15, samples=50, baseline=0.0,
             steps=50, seed=0):
    """Attribution of each input element to the ``target`` score (see the module docstring).

    method: "gradient", "smoothgrad" (``noise``: σ as a fraction of each image's range,
        ``samples``: noisy copies, drawn from ``seed``) or "integrated_gradients"
        (``baseline``: an image or a scalar, default 0, e.g. the mean image after
        normalization; ``steps``: midpoint-rule intervals).
    Returns an :class:`Attribution`.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"saliency method must be one of {SALIENCY_METHODS}, got {method!r}")
    x = _as_images(images)
    with explaining(model):
        grad, scores, t = input_gradient(model, x, target)
        if method == "gradient":
            return Attribution(method, grad, t, scores)
        if method == "smoothgrad":
            if samples < 1 or noise < 0:
                raise ValueError(f"smoothgrad needs samples >= 1 and noise >= 0, got {samples}, {noise}")
            rng = new_rng(seed)
            sigma = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
            total = np.zeros(x.shape, np.float64)
            for _ in range(samples):
                noisy = (x + sigma * rng.standard_normal(x.shape)).astype(x.dtype)
                total += input_gradient(model, noisy, t)[0]
            return Attribution(method, (total / samples).astype(x.dtype), t, scores)
        if steps < 1:
            raise ValueError(f"integrated gradients need steps >= 1, got {steps}")
        base = np.broadcast_to(np.asarray(baseline, x.dtype), x.shape)
        total = np.zeros(x.shape, np.float64)
        for k in range(steps):
            total += input_gradient(model, base + (k + 0.5) / steps * (x - base), t)[0]
        with no_grad():
            base_scores = _score(model(Tensor(base)), t)[1]
    values = (x - base) * total / steps
    gap = scores - base_scores
    error = np.abs(values.reshape(len(x), -1).sum(axis=1) - gap) / np.maximum(np.abs(gap), 1e-30)
    return Attribution(method, values.astype(x.dtype), t, scores, base_scores, error)
