"""Activations and the softmax family, each one Function with its derivative beside it."""
import math

import numpy as np

from ..tensor import Function
from . import dispatch
from .special import erf


class ReLU(Function):
    """y = max(x, 0);  dL/dx = dL/dy · [x > 0]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)
        return np.maximum(x, 0)

    @staticmethod
    def backward(ctx, gy):
        (inside,) = ctx.saved
        return np.where(inside, gy, 0)


class ReLU6(Function):
    """y = min(max(x, 0), 6).   dy/dx = [0 < x < 6] (PyTorch's hardtanh rule)."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.clip(x, 0, 6)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved
        return g * ((x > 0) & (x < 6))


class LeakyReLU(Function):
    """y = x if x > 0 else slope·x.   dy/dx = 1 or slope."""
    @staticmethod
    def forward(ctx, x, slope=0.01):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return np.where(x > 0, x, x * x.dtype.type(slope))

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved
        return np.where(x > 0, g, g * g.dtype.type(ctx.slope))


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


class GELU(Function):
    """Gaussian error linear unit.

    exact ('none'):  y = x·Φ(x),  Φ(x) = ½(1 + erf(x/√2)),   dy/dx = Φ(x) + x·φ(x)
    'tanh':          y = ½x(1 + tanh u),  u = √(2/π)(x + 0.044715x³),
                     dy/dx = ½(1 + tanh u) + ½x(1 - tanh² u)·√(2/π)(1 + 3·0.044715x²)
    """
    @staticmethod
    def forward(ctx, x, approximate="none"):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        if approximate == "tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
            ctx.t = t
            return 0.5 * x * (1 + t)
        cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
        ctx.cdf = cdf
        return x * cdf

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved
        if ctx.approximate == "tanh":
            t = ctx.t
            du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
            return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return g * (ctx.cdf + x * pdf)


class Sigmoid(Function):
    """y = 1 / (1 + e⁻ˣ), computed without overflow.   dy/dx = y(1 - y)."""
    @staticmethod
    def forward(ctx, x):
        y = stable_sigmoid(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved
        return g * y * (1 - y)


class Tanh(Function):
    """y = tanh x.   dy/dx = 1 - y²."""
    @staticmethod
    def forward(ctx, x):
        y = np.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved
        return g * (1 - y * y)


class Softmax(Function):
    """y_i = e^(x_i - m) / Σ_j e^(x_j - m), m = max x (for stability).

    dL/dx = y ⊙ (g - Σ_j g_j y_j).
    """
    @staticmethod
    def forward(ctx, x, axis=-1):
        y = np.exp(x - x.max(axis=axis, keepdims=True))
        y /= y.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved
        return y * (g - (g * y).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    """y_i = x_i - m - log Σ_j e^(x_j - m): finite for any finite x.

    dL/dx = g - softmax(x) · Σ_j g_j.
    """
    @staticmethod
    def forward(ctx, x, axis=-1):
        y = log_softmax_array(x, axis)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved
        return g - np.exp(y) * g.sum(axis=ctx.axis, keepdims=True)


def stable_sigmoid(x):
    """σ(x) on an ndarray via e^(-|x|), which never overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def log_softmax_array(x, axis=-1):
    """log_softmax on an ndarray (shared by LogSoftmax and the losses)."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def relu(x): return dispatch.implementation("relu", ReLU, None).apply(x)
def relu6(x): return ReLU6.apply(x)
def leaky_relu(x, negative_slope=0.01): return LeakyReLU.apply(x, slope=negative_slope)
def sigmoid(x): return Sigmoid.apply(x)
def tanh(x): return Tanh.apply(x)
def softmax(x, dim=-1): return Softmax.apply(x, axis=dim)
def log_softmax(x, dim=-1): return LogSoftmax.apply(x, axis=dim)


def gelu(x, approximate="none"):
    """GELU; ``approximate`` is 'none' (exact, erf) or 'tanh', as in PyTorch."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU.apply(x, approximate=approximate)
