"""Weight initialisation, in place, drawing from ``minicnn.random`` (so seeded).

fan_in = in_features (Linear) or in_channels/groups · kh · kw (Conv2d);
fan_out = out_features or out_channels · kh · kw.

    kaiming_normal_:  N(0, std²),        std = gain / √fan
    kaiming_uniform_: U(-b, b),          b = gain · √(3 / fan)
    xavier_normal_:   N(0, std²),        std = gain · √(2 / (fan_in + fan_out))
    xavier_uniform_:  U(-b, b),          b = gain · √(6 / (fan_in + fan_out))

gain: linear/conv/sigmoid 1, tanh 5/3, relu √2, leaky_relu √(2 / (1 + a²)),
selu 3/4 (PyTorch's table).
"""
import math

import numpy as np

from ..random import default_rng


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (PyTorch's values)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + a * a))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}")


def fans(shape):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel)."""
    if len(shape) < 2:
        raise ValueError(f"fan in/out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fill(tensor, values):
    tensor.data[...] = values.astype(tensor.dtype)
    return tensor


def _rng(generator):
    return default_rng() if generator is None else generator


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="relu", generator=None):
    """He et al. 2015 normal init: std = gain / √fan (see module docstring)."""
    fan = _mode_fan(tensor.shape, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill(tensor, _rng(generator).normal(0.0, std, tensor.shape))


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="relu", generator=None):
    """He et al. 2015 uniform init: U(-b, b), b = gain·√(3 / fan)."""
    fan = _mode_fan(tensor.shape, mode)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return _fill(tensor, _rng(generator).uniform(-bound, bound, tensor.shape))


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot & Bengio 2010 normal init: std = gain·√(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(tensor.shape)
    return _fill(tensor, _rng(generator).normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), tensor.shape))


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot & Bengio 2010 uniform init: U(-b, b), b = gain·√(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(tensor.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(tensor, _rng(generator).uniform(-bound, bound, tensor.shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    return _fill(tensor, _rng(generator).normal(mean, std, tensor.shape))


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    return _fill(tensor, _rng(generator).uniform(a, b, tensor.shape))


def constant_(tensor, value):
    tensor.data[...] = value
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def _mode_fan(shape, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape)
    return fan_in if mode == "fan_in" else fan_out
