"""Read PyTorch checkpoints (``.pt``/``.pth``/``.th``) into NumPy without torch.

``torch.save`` writes one of two containers around the same pickle:

- the zip format (PyTorch >= 1.6): ``<archive>/data.pkl`` holds the object
  tree, each storage is the raw file ``<archive>/data/<key>``, and
  ``<archive>/byteorder`` says ``little`` or ``big`` (absent means little);
- the legacy format: five pickles in a row -- the magic number
  ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a ``sys_info`` dict,
  the object tree, the list of storage keys -- then, for each key in that
  order, an int64 element count followed by the storage's little-endian bytes.

In both, a tensor is pickled as a call such as
``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...)``
whose ``storage`` is a persistent id
``('storage', storage_type, key, location, numel[, view_metadata])``.

The file is parsed, never run: the pickle goes through
:mod:`minicnn.io.pickle_vm` (allowed opcodes and globals only, see
:mod:`minicnn.io.torch_tensor`), each storage is read into a buffer of exactly
the size its id declares, checked against the bytes the file holds (a buffer
is used only once every byte of it is read), and each tensor becomes a view of
its storage once its extent is checked in bytes
(:func:`minicnn.io.torch_tensor.resolve`).
"""
import errno
import hashlib
import os
import re
import struct
import zipfile
import zlib

import numpy as np

from minicnn.errors import FileFormatError, LimitExceededError
from minicnn.io.safetensors_io import load_safetensors
from minicnn.io.pickle_vm import Budget, TruncatedPickleError, UnsafePickleError, unpickle
from minicnn.io.torch_tensor import DTYPES, TensorRecord, find_global, resolve, storage_ref

__all__ = ["load_torch", "sha256sum", "check_hash_prefix", "UnsafePickleError", "BUDGET_FACTOR",
           "BUDGET_FLOOR"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Default memory budget of a load: BUDGET_FACTOR x the file's size + BUDGET_FLOOR bytes.
# torch.save stores storages uncompressed, so they hold at most the file's size; the
# factor leaves room for bfloat16 widened to float32 (2x) and for the pickle's objects.
BUDGET_FACTOR = 4
BUDGET_FLOOR = 64 << 20
_CHUNK = 1 << 22     # archive members are read (decompressed) this much at a time
_HEAD = 1 << 16      # a legacy file's pickles are looked for in its first 64 KiB, then twice that...
_ZIP_ENTRY = 1024    # bytes charged per central-directory entry zipfile keeps (a ZipInfo and its name)


def _read_member(zf, info, budget):
    """The bytes of archive member ``info`` in a uint8 array of its declared size.

    Decompressed a chunk at a time: a member that inflates past its declared
    size, or ends before it, is refused before it can fill memory.
    """
    n = info.file_size
    budget.take(n, f"archive member {info.filename}")
    out = np.empty(n, np.uint8)  # every byte is written below, or the array is dropped with an error
    view = memoryview(out)
    got = 0
    with zf.open(info) as src:
        while got < n:
            chunk = src.read(min(n - got, _CHUNK))
            if not chunk:
                raise FileFormatError(f"archive member {info.filename} holds {got} bytes, "
                                      f"its directory entry says {n}")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
        if src.read(1):
            raise FileFormatError(f"archive member {info.filename} holds more than the {n} bytes "
                                  "its directory entry declares")
    return out


def _central_directory_size(f, size):
    """The size in bytes of a zip's central directory, from its end record (zip64 too); 0 if not found."""
    tail = min(size, 65557)
    f.seek(size - tail)
    data = f.read(tail)
    at = data.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(data):
        return 0
    cd_size = struct.unpack_from("<I", data, at + 12)[0]
    if cd_size == 0xFFFFFFFF and at >= 20 and data[at - 20:at - 16] == b"PK\x06\x07":
        f.seek(struct.unpack_from("<Q", data, at - 12)[0])
        record = f.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            cd_size = struct.unpack_from("<Q", record, 40)[0]
    return min(cd_size, size)


def _load_zip(f, size, budget):
    # zipfile keeps an object per directory entry: charge them before it parses the directory.
    budget.take(_central_directory_size(f, size) // 46 * _ZIP_ENTRY, "the archive's directory")
    f.seek(0)
    with zipfile.ZipFile(f) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        prefix = next(iter(infos), "").split("/", 1)[0]
        if f"{prefix}/data.pkl" not in infos:
            raise FileFormatError(f"zip archive without {prefix!r:.40}/data.pkl: not a torch.save file")
        byteorder = "little"
        if f"{prefix}/byteorder" in infos:
            info = infos[f"{prefix}/byteorder"]
            if info.file_size > 16:
                raise FileFormatError(f"byteorder file of {info.file_size} bytes, expected 'little' or 'big'")
            byteorder = _read_member(zf, info, budget).tobytes().decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise FileFormatError(f"byteorder file says {byteorder!r:.20}, expected 'little' or 'big'")
        storages = {}

        def persistent_load(pid):
            ref = storage_ref(pid, with_view=False)
            buf = storages.get(ref.key)
            if buf is None:
                entry = f"{prefix}/data/{ref.key}"
                if entry not in infos:
                    raise FileFormatError(f"storage {entry!r:.80} is missing from the archive")
                if infos[entry].file_size != ref.nbytes:
                    raise FileFormatError(f"storage {entry} holds {infos[entry].file_size} bytes, its id "
                                          f"says {ref.numel} {ref.dtype} ({ref.nbytes} bytes)")
                storages[ref.key] = _read_member(zf, infos[entry], budget)
            elif buf.size != ref.nbytes:
                raise FileFormatError(f"storage {ref.key!r:.40} named with {ref.nbytes} bytes, "
                                      f"it holds {buf.size}")
            return ref

        info = infos[f"{prefix}/data.pkl"]
        budget.take(info.file_size, "the pickle's bytes")  # read into an array, then copied to bytes
        data = _read_member(zf, info, budget).tobytes()
        obj, _ = unpickle(data, 0, find_global, persistent_load, (TensorRecord,), budget)
        return resolve(obj, storages, byteorder, budget)


def _legacy_pickles(f, size, budget):
    """The five pickles at the start of a legacy file, the storages the tensors name
    (key -> (dtype, numel)) and the offset where the pickles end.

    Parsed from the file's first 64 KiB, read further (doubling) only while a pickle runs past it.
    """
    data = b""
    while True:
        want = min(size, max(_HEAD, 2 * len(data)))
        budget.take(want - len(data), "the checkpoint's pickles")
        f.seek(len(data))
        data += f.read(want - len(data))
        roots = {}

        def persistent_load(pid):
            ref = storage_ref(pid, with_view=True)
            root = roots.setdefault(ref.key, (ref.dtype, ref.numel))
            if root != (ref.dtype, ref.numel):
                raise FileFormatError(f"storage {ref.key!r:.40} declared as {root[1]} {root[0]} and "
                                      f"as {ref.numel} {ref.dtype}")
            return ref

        trial = Budget(budget.limit)
        trial.left = budget.left
        try:
            out, at = [], 0
            for part in range(5):
                obj, at = unpickle(data, at, find_global, persistent_load if part == 3 else None,
                                   (TensorRecord,), trial)
                out.append(obj)
                if part == 0 and obj != LEGACY_MAGIC:
                    raise FileFormatError(f"a pickle, but not a torch.save checkpoint (no magic number; "
                                          f"got {obj!r:.40})")
                if part == 1 and obj != LEGACY_PROTOCOL:
                    raise FileFormatError(f"legacy checkpoint protocol {obj!r:.40}, expected {LEGACY_PROTOCOL}")
            budget.left = trial.left
            return out, roots, at
        except TruncatedPickleError:
            if len(data) >= size:
                raise


def _load_legacy(f, size, budget):
    (_, _, _, obj, keys), roots, at = _legacy_pickles(f, size, budget)
    # sys_info is ignored: torch writes and reads legacy storages little-endian whatever it says
    if type(keys) is not list or not all(type(k) in (str, int) for k in keys) \
            or len(keys) != len(roots) or set(map(str, keys)) != set(roots):
        raise FileFormatError("the storage key list does not match the storages the tensors use")
    # The storages, each an int64 count and its bytes, in one read; each becomes a slice of it.
    budget.take(size - at, "the checkpoint's storages")
    region = np.empty(size - at, np.uint8)  # filled whole, or dropped with the error below
    f.seek(at)
    if f.readinto(memoryview(region)) != region.size:
        raise FileFormatError("the file changed size while it was read")
    storages, at = {}, 0
    for key in map(str, keys):
        dtype, numel = roots[key]
        if at + 8 > region.size:
            raise FileFormatError(f"truncated file: storage {key!r:.40} has no element count")
        count = int.from_bytes(region[at:at + 8], "little", signed=True)
        if count != numel:
            raise FileFormatError(f"storage {key!r:.40} holds {count} elements, the tensors expect {numel}")
        nbytes = numel * np.dtype(DTYPES[dtype]).itemsize
        if at + 8 + nbytes > region.size:
            raise FileFormatError(f"truncated file: storage {key!r:.40} needs {nbytes:,} bytes, "
                                  f"the file has {region.size - at - 8:,} left")
        storages[key] = region[at + 8:at + 8 + nbytes]
        at += 8 + nbytes
    return resolve(obj, storages, "little", budget)


# What the stdlib's zip reader raises on a damaged archive (besides FileFormatError's ValueError).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, struct.error,
               NotImplementedError, RuntimeError, ValueError, OverflowError)


def load_torch(path, check_hash=False, max_bytes=None):
    """Load a ``torch.save`` checkpoint as nested dicts/lists of NumPy arrays.

    Tensors come back as native-endian arrays of their own dtype (float16 stays
    float16, bfloat16 becomes float32, bool stays bool).  Tensors that share a
    storage are views of one buffer, as in torch (writing one changes the
    others); the arrays are writeable.  (A legacy-format file's storages are
    slices of one buffer, kept while any of its arrays lives.)  Parameters become plain arrays; Python
    attributes set on tensors are dropped.  Other values (numbers, strings,
    bytes, lists, tuples, sets, dicts, OrderedDicts) come back as themselves.

    ``check_hash=True`` first checks the file against the hex digits in its
    name, torch.hub style (``resnet20-12fca82f.th``; see :func:`check_hash_prefix`).
    A ``.safetensors`` file is read by :func:`~minicnn.io.safetensors_io.load_safetensors`.

    The load allocates at most ``max_bytes`` (default ``BUDGET_FACTOR`` x the
    file's size + ``BUDGET_FLOOR``: 4x + 64 MiB), counting storages, their
    conversions, archive members and the pickle's objects; no single tensor may
    span more than that either (a stride-0 view of a huge shape is refused).

    Raises (each a ``ValueError`` naming the file and what was wrong):
    :class:`UnsafePickleError` (an :class:`~minicnn.errors.UnsafeFileError`) for
    a global or pickle opcode outside the allowlist (nothing from the file is
    executed); :class:`~minicnn.errors.LimitExceededError` past the budget or
    for containers nested more than 100 deep;
    :class:`~minicnn.errors.FileFormatError` for a file that is not a
    checkpoint, is truncated, or is inconsistent.  ``OSError`` for the file
    system itself.
    """
    path = os.fspath(path)
    if check_hash:
        check_hash_prefix(path)
    if path.endswith(".safetensors"):
        return load_safetensors(path, max_bytes)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        budget = Budget(BUDGET_FACTOR * size + BUDGET_FLOOR if max_bytes is None else max_bytes)
        head = f.read(4)
        f.seek(0)
        try:
            if head == b"PK\x03\x04" or head == b"PK\x05\x06":
                try:
                    return _load_zip(f, size, budget)
                except FileFormatError:
                    raise
                except OSError as e:
                    if e.errno != errno.EINVAL:  # a seek the directory asked for, not the disk
                        raise
                    raise FileFormatError(f"corrupt zip archive ({e})") from None
                except _ZIP_ERRORS as e:
                    raise FileFormatError(f"corrupt zip archive ({type(e).__name__}: {e})") from None
            if head[:1] != b"\x80":
                raise FileFormatError(f"not a PyTorch checkpoint: neither a zip archive nor a "
                                      f"protocol-2 pickle (starts with {head!r})")
            return _load_legacy(f, size, budget)
        except FileFormatError as e:
            if e.path is not None:
                raise
            raise type(e)(str(e), path) from None
        except (MemoryError, RecursionError) as e:  # the budget and depth limit should prevent both
            raise LimitExceededError(f"{type(e).__name__} while reading", path) from None


def sha256sum(path, chunk=1 << 20):
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_hash_prefix(path):
    """Check ``name-<hex>.ext`` against the file's SHA-256; return the digest.

    torch.hub names weight files with a prefix of their SHA-256 (at least 8
    hex digits), e.g. ``resnet20-12fca82f.th``.  Raises
    :class:`~minicnn.errors.FileFormatError` (a ``ValueError``) if the name has
    no such prefix or the digest does not start with it.
    """
    m = re.search(r"-([0-9a-f]{8,})\.[^/\\]*$", os.path.basename(path))
    if m is None:
        raise FileFormatError("file name has no '-<sha256 prefix>.' part to check against", path)
    digest = sha256sum(path)
    if not digest.startswith(m.group(1)):
        raise FileFormatError(f"SHA-256 {digest} does not start with {m.group(1)} from its name", path)
    return digest
