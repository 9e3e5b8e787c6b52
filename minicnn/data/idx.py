"""The idx file format of MNIST and Fashion-MNIST.

Layout (big-endian): two zero bytes, a type code, the number of dimensions
``d``; then ``d`` uint32 sizes; then ``prod(sizes)`` values in C order.
Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64.

The files come from the network, so nothing is allocated on a header's word:
raw bytes are parsed only if their length is exactly what the header asks for,
and a gzipped file is decompressed in bounded steps, refused past ``max_bytes``
(default :data:`MAX_BYTES`) or as soon as its header asks for more than a gzip
file of its size can hold (DEFLATE expands at most 1032:1).  Errors are
:class:`~minicnn.errors.FileFormatError` (or its ``LimitExceededError``) naming the file.
"""
import math
import zlib
from pathlib import Path

import numpy as np

from ..errors import FileFormatError, LimitExceededError

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MAX_BYTES = 1 << 30        # default bound on a gzipped file's decompressed size
_DEFLATE_RATIO = 1032      # DEFLATE's largest expansion: 258 bytes from 2 bits
_PEEK = 4 + 4 * 255        # the longest idx header
_STEP = 1 << 20            # bytes decompressed per step


def _header(data, name):
    """(dtype, shape, header length) of the idx bytes ``data``; FileFormatError if malformed."""
    if len(data) < 4:
        raise FileFormatError(f"{len(data)} bytes is too short for an idx header", name)
    if data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise FileFormatError(f"bad idx magic number 0x{bytes(data[:4]).hex()} "
                              f"(expected 0x0000TTDD, TT one of {sorted(hex(t) for t in _TYPES)})", name)
    dtype, ndim = _TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FileFormatError(f"truncated idx header ({len(data)} bytes, need {header})", name)
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, 4))
    return dtype, shape, header


def parse_idx(data, name="idx data"):
    """Decode idx bytes into an ndarray of the stored shape (native byte order).

    Raises :class:`~minicnn.errors.FileFormatError` naming ``name`` for a wrong magic
    number, an unknown type code, or a length that disagrees with the header
    (truncated or trailing bytes).
    """
    data = bytes(data)
    dtype, shape, header = _header(data, name)
    expected = header + math.prod(shape) * dtype.itemsize   # Python ints: no overflow
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise FileFormatError(f"idx file {what}: {len(data)} bytes, header {shape} "
                              f"of {dtype.name} needs {expected}", name)
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_bytes(path, max_bytes=None):
    """The raw idx bytes of ``path``, gunzipped if the file is gzip (by its magic bytes).

    A gzipped file may decompress to at most ``max_bytes`` (default :data:`MAX_BYTES`);
    beyond that, :class:`~minicnn.errors.LimitExceededError`.
    """
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    return _gunzip(raw, path, MAX_BYTES if max_bytes is None else max_bytes)


def _gunzip(raw, path, limit):
    """The gzip data ``raw`` (one or more members) decompressed in bounded steps."""
    out, rest = bytearray(), raw
    try:
        while rest:
            member, tail = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            while not member.eof:
                piece = member.decompress(tail, min(limit + 1 - len(out), _STEP if out else _PEEK))
                tail = member.unconsumed_tail
                if not piece and not tail:
                    raise FileFormatError("corrupt gzip stream (it ends early)", path)
                first = not out
                out += piece
                if len(out) > limit:
                    raise LimitExceededError(f"decompresses to more than max_bytes={limit}; "
                                             "pass a larger max_bytes= to read it", path)
                if first:
                    _check_claim(out, path, len(raw), limit)
            rest = member.unused_data
    except zlib.error as e:
        raise FileFormatError(f"corrupt gzip stream ({e})", path) from e
    return bytes(out)


def _check_claim(head, path, compressed, limit):
    """Refuse early when the idx header at the start of ``head`` asks for more than a gzip
    file of ``compressed`` bytes can hold, or than ``limit``."""
    try:
        dtype, shape, _ = _header(head, path)
    except FileFormatError:
        return   # not an idx header, or not yet all of it: the parser will say what is wrong
    need = math.prod(shape) * dtype.itemsize
    if need > _DEFLATE_RATIO * compressed:
        raise FileFormatError(f"its idx header {shape} of {dtype.name} asks for {need} bytes, more than "
                              f"a gzip file of {compressed} bytes can hold", path)
    if need > limit:
        raise LimitExceededError(f"its idx header {shape} of {dtype.name} asks for {need} bytes, more than "
                                 f"max_bytes={limit}; pass a larger max_bytes= to read it", path)
