"""The idx file format of MNIST and Fashion-MNIST.

Layout (big-endian): two zero bytes, a type code, the number of dimensions
``d``; then ``d`` uint32 sizes; then ``prod(sizes)`` values in C order.
Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64.
"""
import gzip
from pathlib import Path

import numpy as np

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(data, name="idx data"):
    """Decode idx bytes into an ndarray of the stored shape (native byte order).

    Raises ValueError naming ``name`` for a wrong magic number, an unknown type code,
    or a length that disagrees with the header (truncated or trailing bytes).
    """
    data = bytes(data)
    if len(data) < 4:
        raise ValueError(f"{name}: {len(data)} bytes is too short for an idx header")
    if data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise ValueError(f"{name}: bad idx magic number 0x{data[:4].hex()} "
                         f"(expected 0x0000TTDD, TT one of {sorted(hex(t) for t in _TYPES)})")
    dtype, ndim = _TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated idx header ({len(data)} bytes, need {header})")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, 4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{name}: idx file {what}: {len(data)} bytes, header {shape} "
                         f"of {dtype.name} needs {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_bytes(path):
    """The raw idx bytes of ``path``, gunzipped if the file is gzip (by its magic bytes)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
    return raw
