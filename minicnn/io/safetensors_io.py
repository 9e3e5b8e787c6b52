"""safetensors: state dicts in the field's safe weight format (the optional extra ``safetensors``).

A ``.safetensors`` file is a JSON header (name -> dtype, shape, byte range, plus free
string metadata) followed by the raw little-endian bytes: reading one runs no code
and allocates what the header declares, which the ``safetensors`` package checks
against the file's size.  minicnn's parameter names are PyTorch's wherever the module
trees match (``conv1.weight``, ``layer2.0.bn1.running_mean``, ``num_batches_tracked``
included), so a file written here loads into the PyTorch twin of the architecture with
``safetensors.torch.load_file`` and ``load_state_dict``, and a file PyTorch wrote
(``safetensors.torch.save_file``) loads here with :func:`minicnn.io.load_pretrained`
(or ``load_torch``, which accepts ``.safetensors`` too).
"""
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import FileFormatError, LimitExceededError

__all__ = ["save_safetensors", "load_safetensors", "safetensors_metadata"]

INSTALL_HINT = "reading and writing .safetensors needs the 'safetensors' package: pip install safetensors " \
               "(or 'minicnn[safetensors]')"


def _package():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise ModuleNotFoundError(INSTALL_HINT) from None
    return safetensors


def save_safetensors(path, model_or_state, metadata=None):
    """Write a model's state dict (or a name -> array mapping) to ``path`` atomically; returns the path.

    metadata: string -> string pairs stored in the header (e.g. ``{"arch": "resnet20"}``).
    """
    safetensors = _package()
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    arrays = {}
    for name, value in state.items():
        array = np.asarray(getattr(value, "data", value))
        if array.dtype == object:
            raise TypeError(f"state entry {name!r} is not a numeric array (dtype object)")
        arrays[str(name)] = np.array(array, order="C")   # (ascontiguousarray would make 0-d 1-d)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"safetensors metadata must map strings to strings, got {metadata!r:.120}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _checked_size(path, max_bytes):
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        raise LimitExceededError(f"{size} bytes, more than max_bytes={max_bytes}", path)


def load_safetensors(path, max_bytes=None):
    """The name -> array mapping stored in the ``.safetensors`` file ``path`` (own arrays, sorted by
    name as the format stores them).

    max_bytes: refuse a file larger than this (:class:`~minicnn.errors.LimitExceededError`);
    the arrays take the file's size.  A file that is not valid safetensors is a
    :class:`~minicnn.errors.FileFormatError` naming it; ``OSError`` for the file system.
    """
    safetensors = _package()
    path = os.fspath(path)
    _checked_size(path, max_bytes)
    try:
        with safetensors.safe_open(path, framework="np") as f:
            return OrderedDict((name, np.array(f.get_tensor(name))) for name in f.keys())
    except safetensors.SafetensorError as e:
        raise FileFormatError(f"not a valid safetensors file ({e})", path) from None
    except (ValueError, TypeError) as e:   # a dtype NumPy has no type for (e.g. bfloat16)
        raise FileFormatError(f"cannot read its tensors as NumPy arrays ({type(e).__name__}: {e})", path) from None


def safetensors_metadata(path):
    """The string -> string metadata in the header of ``path`` ({} when there is none)."""
    safetensors = _package()
    try:
        with safetensors.safe_open(os.fspath(path), framework="np") as f:
            return dict(f.metadata() or {})
    except safetensors.SafetensorError as e:
        raise FileFormatError(f"not a valid safetensors file ({e})", os.fspath(path)) from None
