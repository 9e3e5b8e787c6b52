"""Map foreign weights onto minicnn names and layouts.

minicnn keeps PyTorch's layouts (conv weight ``(out, in/groups, kh, kw)``,
linear weight ``(out, in)``, NCHW activations) and PyTorch's names
(``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``), so a PyTorch state dict needs only renames:
:func:`convert_state_dict` does them, checks every shape, and reports missing
and unexpected keys; :func:`load_pretrained` applies the result to a model.

Keras/TensorFlow store NHWC activations and other kernel layouts.  Every
transpose needed to bring them over is listed here, and only here:

==========================  ====================  ==========================
Keras weight                Keras layout          minicnn layout
==========================  ====================  ==========================
Conv2D kernel               (kh, kw, in, out)     (out, in, kh, kw)
DepthwiseConv2D kernel      (kh, kw, C, M)        (C*M, 1, kh, kw), groups=C
Dense kernel                (in, out)             (out, in)
first Dense after Flatten   rows in (h, w, c)     columns in (c, h, w)
==========================  ====================  ==========================

Biases and BatchNorm vectors (gamma, beta, moving mean/variance ->
weight, bias, running_mean, running_var) need no transpose.
"""
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from minicnn.io.torch_load import load_torch

__all__ = [
    "Converted", "StateDictMismatch", "unwrap_state_dict", "rename_key", "convert_state_dict",
    "load_pretrained", "conv_hwio_to_oihw", "depthwise_hwcm_to_oihw", "dense_to_linear",
    "flatten_nhwc_to_nchw",
]


@dataclass
class Converted:
    """What :func:`convert_state_dict` made of a source state dict.

    ``state_dict``: target name -> array, in the target's order.
    ``missing``: target keys the source lacks (not in ``state_dict``).
    ``unexpected``: source keys, after renaming, that the target lacks.
    ``filled``: target keys the source lacks that were filled with zeros.
    ``dropped``: source keys a rename rule mapped to ``None``.
    """

    state_dict: OrderedDict
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    filled: list = field(default_factory=list)
    dropped: list = field(default_factory=list)


class StateDictMismatch(ValueError):
    """Source and target key sets differ; ``.missing`` and ``.unexpected`` list how."""

    def __init__(self, missing, unexpected):
        self.missing, self.unexpected = list(missing), list(unexpected)
        super().__init__(
            f"state dict mismatch: {_listing('missing from the source', self.missing)}; "
            f"{_listing('unexpected in the source', self.unexpected)}")


def _listing(label, keys, most=8):
    shown = ", ".join(map(repr, keys[:most])) + (", ..." if len(keys) > most else "")
    return f"{len(keys)} {label}" + (f" ({shown})" if keys else "")


def unwrap_state_dict(obj, keys=("state_dict", "model_state_dict", "model", "net")):
    """The name -> array mapping inside a checkpoint.

    A mapping whose values are all arrays is returned as is; otherwise the
    first of ``keys`` present (e.g. ``{'state_dict': ..., 'best_prec1': ...}``)
    is unwrapped, recursively.  Raises ``ValueError`` naming the top-level keys
    when no state dict is found.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a checkpoint mapping, got {type(obj).__name__}")
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return obj
    for key in keys:
        if isinstance(obj.get(key), Mapping):
            return unwrap_state_dict(obj[key], keys)
    raise ValueError(f"no state dict of arrays found: top-level keys are {list(obj)[:10]}, "
                     f"expected arrays or one of {list(keys)}")


def rename_key(key, renames):
    """Apply the first matching rule of ``renames`` to ``key``.

    ``renames`` is a mapping or a sequence of ``(pattern, replacement)`` pairs,
    tried in order:

    - a compiled ``re.Pattern`` must match the whole key (``fullmatch``);
      ``replacement`` is an expansion template (``r'\\1'``, ``r'\\g<name>'``);
    - a string ending in ``'.'`` is a module prefix: ``('fc.', 'head.')``
      turns ``fc.weight`` into ``head.weight``;
    - any other string must equal the key.

    A ``None`` replacement drops the key.  Without a match the key is unchanged.
    """
    for pattern, replacement in (renames.items() if isinstance(renames, Mapping) else renames):
        if isinstance(pattern, re.Pattern):
            m = pattern.fullmatch(key)
            if m:
                return None if replacement is None else m.expand(replacement)
        elif not isinstance(pattern, str):
            raise TypeError(f"rename pattern must be str or re.Pattern, got {type(pattern).__name__}")
        elif pattern.endswith(".") and key.startswith(pattern):
            return None if replacement is None else replacement + key[len(pattern):]
        elif key == pattern:
            return replacement
    return key


def _target_spec(value):
    """(shape, dtype or None) from a target array or a shape tuple."""
    if isinstance(value, tuple):
        return value, None
    arr = np.asarray(value)
    return arr.shape, arr.dtype


def convert_state_dict(src, target, renames=(), strip_prefixes=("module.",),
                       fill_zeros=("num_batches_tracked",), strict=True):
    """Rename ``src`` onto the keys of ``target`` and check every shape.

    Steps, per source key: strip each of ``strip_prefixes`` it starts with
    (``module.`` comes from ``nn.DataParallel``), then apply ``renames`` (see
    :func:`rename_key`).  Then, per target key in order: take the source array,
    checking its shape, and its dtype if ``target`` holds arrays (cast with
    NumPy's ``same_kind`` rule: float64 -> float32 yes, float -> int no); a
    key ending in one of ``fill_zeros`` that the source lacks is filled with
    zeros, as PyTorch's BatchNorm does for checkpoints older than its
    ``num_batches_tracked`` counter.

    ``target`` maps names to arrays (e.g. ``model.state_dict()``) or to shape
    tuples.  Returns :class:`Converted` (arrays are copies).  Raises
    ``ValueError`` listing every shape or dtype mismatch as
    ``key: source shape vs target shape``, ``ValueError`` when two source keys
    land on one name, and, when ``strict``, :class:`StateDictMismatch` if keys
    are missing or unexpected.
    """
    renamed, origin, dropped = {}, {}, []
    for key, value in src.items():
        name = key
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
        name = rename_key(name, renames)
        if name is None:
            dropped.append(key)
            continue
        if name in renamed:
            raise ValueError(f"source keys {origin[name]!r} and {key!r} both become {name!r}")
        renamed[name], origin[name] = value, key

    out = Converted(OrderedDict(), dropped=dropped)
    errors = []
    for name, spec in target.items():
        shape, dtype = _target_spec(spec)
        if name not in renamed:
            if any(name == s or name.endswith("." + s) for s in fill_zeros):
                out.state_dict[name] = np.zeros(shape, dtype or np.int64)
                out.filled.append(name)
            else:
                out.missing.append(name)
            continue
        value = np.asarray(renamed[name])
        if value.shape != tuple(shape):
            errors.append(f"{name!r} (from {origin[name]!r}): source {value.shape} vs target {tuple(shape)}")
        elif dtype is not None and not np.can_cast(value.dtype, dtype, "same_kind"):
            errors.append(f"{name!r} (from {origin[name]!r}): source dtype {value.dtype} "
                          f"cannot become target dtype {dtype}")
        else:
            out.state_dict[name] = np.array(value, dtype=dtype)
    if errors:
        raise ValueError(f"{len(errors)} key(s) do not fit the target:\n  " + "\n  ".join(errors))
    out.unexpected = [origin[n] for n in renamed if n not in target]
    if strict and (out.missing or out.unexpected):
        raise StateDictMismatch(out.missing, out.unexpected)
    return out


def load_pretrained(model, src, renames=(), strict=True, **options):
    """Load ``src`` (a checkpoint path, checkpoint dict or state dict) into ``model``.

    Unwraps the state dict (:func:`unwrap_state_dict`), converts it against
    ``model.state_dict()`` (:func:`convert_state_dict`; ``options`` go there)
    and calls ``model.load_state_dict(converted, strict=strict)``.  With
    ``strict=False`` the keys the source lacks keep the model's values.
    Returns the :class:`Converted` report.
    """
    if isinstance(src, (str, os.PathLike)):
        src = load_torch(src)
    result = convert_state_dict(unwrap_state_dict(src), model.state_dict(), renames,
                                strict=strict, **options)
    model.load_state_dict(result.state_dict, strict=strict)
    return result


def _check_ndim(array, ndim, layout):
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"expected a {ndim}-d {layout} array, got shape {array.shape}")
    return array


def conv_hwio_to_oihw(kernel):
    """Keras Conv2D kernel (kh, kw, in, out) -> minicnn conv weight (out, in, kh, kw)."""
    return np.ascontiguousarray(_check_ndim(kernel, 4, "(kh, kw, in, out)").transpose(3, 2, 0, 1))


def depthwise_hwcm_to_oihw(kernel):
    """Keras DepthwiseConv2D kernel (kh, kw, C, M) -> grouped conv weight (C*M, 1, kh, kw).

    TensorFlow puts input channel c, multiplier m at output channel c*M + m;
    a conv with groups=C gives group c the output channels c*M .. c*M + M - 1,
    so the same order holds and only the axes move.
    """
    kernel = _check_ndim(kernel, 4, "(kh, kw, C, M)")
    kh, kw, c, m = kernel.shape
    return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)).reshape(c * m, 1, kh, kw)


def dense_to_linear(kernel):
    """Keras Dense kernel (in, out), used as x @ K, -> linear weight (out, in), used as x @ W.T."""
    return np.ascontiguousarray(_check_ndim(kernel, 2, "(in, out)").T)


def flatten_nhwc_to_nchw(weight, hwc):
    """Reorder the input columns of the first linear layer after a Flatten.

    Flattening an NHWC map orders features as (h, w, c); flattening NCHW
    orders them (c, h, w).  ``weight`` is (out, H*W*C) with columns in
    (h, w, c) order (a Keras Dense kernel after :func:`dense_to_linear`);
    the result is (out, C*H*W) with columns in (c, h, w) order, so that
    ``x_nchw.reshape(n, -1) @ result.T == x_nhwc.reshape(n, -1) @ weight.T``.
    ``hwc`` is the (H, W, C) shape of the feature map before the Flatten.
    """
    weight = _check_ndim(weight, 2, "(out, H*W*C)")
    h, w, c = hwc
    if weight.shape[1] != h * w * c:
        raise ValueError(f"weight has {weight.shape[1]} inputs, but hwc={tuple(hwc)} flattens to {h * w * c}")
    out = weight.shape[0]
    return np.ascontiguousarray(weight.reshape(out, h, w, c).transpose(0, 3, 1, 2)).reshape(out, c * h * w)
