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
Here the tensor becomes ``as_strided(storage[offset:], size, stride)`` copied
to a contiguous array after checking that every element it addresses lies
inside the storage, so a crafted file cannot make it read stray memory.

Pickles run code: a ``__reduce__`` may name any importable callable.  The
unpickler below resolves only the globals a tensor checkpoint needs (see
``_ALLOWED``) and maps each to a local, side-effect-free stand-in; any other
global raises :class:`UnsafePickleError` naming it, before anything is called.
"""
import _compat_pickle
import hashlib
import io
import os
import pickle
import re
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

__all__ = ["load_torch", "sha256sum", "check_hash_prefix", "UnsafePickleError"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch dtype name -> NumPy dtype of the stored elements (little-endian).
# bfloat16 is stored as its raw 16 bits and widened to float32 on the way out.
_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
    "complex128": "<c16", "complex64": "<c8",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1",
    "uint64": "<u8", "uint32": "<u4", "uint16": "<u2", "uint8": "u1",
    "bool": "u1",
}
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "UntypedStorage": "uint8",
}


class UnsafePickleError(pickle.UnpicklingError):
    """The checkpoint names a global outside the tensor-checkpoint allowlist."""


class _Global:
    """Stand-in for an allowed torch global: a storage type or dtype (``dtype``
    names the element type) or a function (``call``).

    Frozen: pickle's BUILD opcode sets state on whatever object it is given,
    so a file could otherwise alter these shared objects for every later load.
    """

    __slots__ = ("name", "dtype", "call")

    def __init__(self, name, dtype=None, call=None):
        for slot, value in (("name", name), ("dtype", dtype), ("call", call)):
            object.__setattr__(self, slot, value)

    def __setattr__(self, slot, value):
        raise AttributeError(f"torch global {self.name} is read-only")

    def __setstate__(self, state):
        raise UnsafePickleError(f"refusing to set state on torch global {self.name}")

    def __call__(self, *args):
        if self.call is None:
            raise pickle.UnpicklingError(f"torch global {self.name} is not callable")
        return self.call(*args)

    def __repr__(self):
        return f"<torch {self.name}>"


class _Storage:
    """The bytes of one torch storage, holding elements of ``dtype`` in ``byteorder``.

    ``later`` marks legacy-format storages, whose bytes follow the pickle that
    uses them: tensors on such storages are rebuilt once the bytes are read.
    """

    def __init__(self, raw, dtype, byteorder, later=False):
        self.raw, self.dtype, self.byteorder, self.later = raw, dtype, byteorder, later


class _Deferred:
    """A legacy-format tensor waiting for its storage bytes: the arguments of ``_tensor``."""

    __hash__ = None  # tensors as set members or dict keys would escape _materialize

    def __init__(self, *args):
        self.args = args


def _rebuild(storage, storage_offset, size, stride, dtype=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    if storage.later:
        return _Deferred(storage, storage_offset, size, stride, dtype, metadata)
    return _tensor(storage, storage_offset, size, stride, dtype, metadata)


def _tensor(storage, storage_offset, size, stride, dtype, metadata):
    """Tensor = storage viewed with (offset, size, stride), copied contiguous and native-endian."""
    name = storage.dtype if dtype is None else dtype.dtype if isinstance(dtype, _Global) else None
    if name not in _DTYPES:
        raise pickle.UnpicklingError(f"unsupported tensor dtype {dtype!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise pickle.UnpicklingError(f"tensor metadata is {type(metadata).__name__}, expected a dict")
    size, stride = tuple(size), tuple(stride)
    ints = size + stride + (storage_offset,)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise pickle.UnpicklingError(
            f"bad tensor geometry: size {size}, stride {stride}, offset {storage_offset}")
    np_dtype = np.dtype(_DTYPES[name]).newbyteorder("<" if storage.byteorder == "little" else ">")
    if storage.raw.size % np_dtype.itemsize:
        raise pickle.UnpicklingError(
            f"storage of {storage.raw.size} bytes is not a whole number of {name} elements")
    elems = storage.raw.view(np_dtype)
    if 0 in size:
        arr = np.zeros(size, np_dtype)
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= elems.size:
            raise pickle.UnpicklingError(
                f"tensor (size {size}, stride {stride}, offset {storage_offset}) reaches element "
                f"{last} of a storage holding {elems.size}")
        arr = np.lib.stride_tricks.as_strided(
            elems[storage_offset:], size, [s * np_dtype.itemsize for s in stride], writeable=False)
    out = arr.astype(np_dtype.newbyteorder("="), order="C")
    if name == "bfloat16":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    elif name == "bool":
        out = out != 0
    if metadata and metadata.get("neg"):
        out = -out
    if metadata and metadata.get("conj"):
        out = np.conj(out)
    return out


def _materialize(obj, seen=None):
    """Replace every ``_Deferred`` in nested dicts/lists/tuples by its array."""
    if isinstance(obj, _Deferred):
        return _tensor(*obj.args)
    seen = set() if seen is None else seen
    if id(obj) in seen:  # shared or cyclic containers: fix each once
        return obj
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in obj.items():
            obj[k] = _materialize(v, seen)
    elif isinstance(obj, list):
        seen.add(id(obj))
        obj[:] = [_materialize(v, seen) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_materialize(v, seen) for v in obj)
    return obj


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    return _rebuild(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    return _rebuild(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor carrying Python attributes: rebuild the tensor, drop the attributes."""
    if new_type is not _TENSOR:
        raise UnsafePickleError(f"refusing tensor subclass {new_type!r}")
    return func(*args)


def _latin1_bytes(text, encoding):
    """``_codecs.encode``, as protocol-2 pickles use it to spell ``bytes``."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_TENSOR = _Global("Tensor")
_ALLOWED = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "torch.Tensor": _TENSOR,
    "torch._tensor.Tensor": _TENSOR,
    "torch.storage.UntypedStorage": _Global("UntypedStorage", "uint8"),
}
_ALLOWED.update({f"torch.{n}": _Global(n, n) for n in _DTYPES})
for _module in ("torch", "torch.cuda"):  # torch.cuda.*Storage: GPU tensors saved by old versions
    _ALLOWED.update({f"{_module}.{n}": _Global(n, d) for n, d in _STORAGE_DTYPES.items()})
for _name, _fn in (("torch._utils._rebuild_tensor", _rebuild_tensor),
                   ("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2),
                   ("torch._utils._rebuild_tensor_v3", _rebuild_tensor_v3),
                   ("torch._utils._rebuild_parameter", _rebuild_parameter),
                   ("torch._utils._rebuild_parameter_with_state", _rebuild_parameter),
                   ("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2),
                   ("_codecs.encode", _latin1_bytes)):
    _ALLOWED[_name] = _Global(_name, call=_fn)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from ``_ALLOWED``; storages come from ``load_storage``."""

    def __init__(self, file, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module, name):
        # Python-2 pickles spell builtins as __builtin__.*; map them like pickle would.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[f"{module}.{name}"]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: a tensor checkpoint only needs "
                "collections.OrderedDict, torch._utils._rebuild_*, torch storage types and dtypes"
            ) from None

    def persistent_load(self, pid):
        if self._load_storage is None:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise pickle.UnpicklingError(
                f"unsupported persistent id {kind!r:.80}: only tensor storages are read "
                "(whole pickled nn.Modules are not; save a state_dict instead)")
        if (len(pid) not in (5, 6) or not isinstance(pid[1], _Global) or pid[1].dtype is None
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.80}")
        return self._load_storage(pid[1].dtype, str(pid[2]), pid[4], pid[5] if len(pid) == 6 else None)


def _unpickle(file, load_storage=None):
    return _RestrictedUnpickler(file, load_storage).load()


def _load_zip(f):
    with zipfile.ZipFile(f) as zf:
        names = set(zf.namelist())
        prefix = zf.namelist()[0].split("/", 1)[0] if names else ""
        if f"{prefix}/data.pkl" not in names:
            raise ValueError(f"zip archive without {prefix}/data.pkl: not a torch.save file")
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = zf.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"byteorder file says {byteorder!r:.20}, expected 'little' or 'big'")
        storages = {}

        def load_storage(dtype, key, numel, view):
            if key not in storages:
                entry = f"{prefix}/data/{key}"
                if entry not in names:
                    raise ValueError(f"storage {entry!r:.80} is missing from the archive")
                raw = np.frombuffer(zf.read(entry), np.uint8)
                if raw.size < numel * np.dtype(_DTYPES[dtype]).itemsize:
                    raise ValueError(f"truncated storage {entry}: {raw.size} bytes for {numel} {dtype}")
                storages[key] = _Storage(raw, dtype, byteorder)
            return storages[key]

        return _unpickle(io.BytesIO(zf.read(f"{prefix}/data.pkl")), load_storage)


def _read_exact(f, n, what):
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"truncated file: {what} needs {n} bytes, found {len(data)}")
    return data


def _load_legacy(f):
    magic = _unpickle(f)
    if magic != LEGACY_MAGIC:
        raise ValueError(f"a pickle, but not a torch.save checkpoint (no magic number; got {magic!r:.40})")
    version = _unpickle(f)
    if version != LEGACY_PROTOCOL:
        raise ValueError(f"legacy checkpoint protocol {version!r:.40}, expected {LEGACY_PROTOCOL}")
    _unpickle(f)  # sys_info: torch writes and reads storages little-endian whatever it says
    file_size = os.fstat(f.fileno()).st_size
    roots, views = {}, {}

    def load_storage(dtype, key, numel, view):
        if key not in roots:
            nbytes = numel * np.dtype(_DTYPES[dtype]).itemsize
            if nbytes > file_size:
                raise ValueError(f"storage {key!r:.40} claims {nbytes} bytes, more than the whole file")
            roots[key] = (_Storage(np.empty(nbytes, np.uint8), dtype, "little", later=True), numel)
        root, numel = roots[key]
        if view is None:
            return root
        # Pre-0.4 storage views: (view_key, offset, view_numel) into the root storage.
        view_key, offset, view_numel = view
        if view_key not in views:
            if not (0 <= offset and 0 <= view_numel and offset + view_numel <= numel):
                raise ValueError(f"storage view {view!r:.80} exceeds its storage of {numel} elements")
            itemsize = np.dtype(_DTYPES[dtype]).itemsize
            raw = root.raw[offset * itemsize:(offset + view_numel) * itemsize]
            views[view_key] = _Storage(raw, dtype, "little", later=True)
        return views[view_key]

    obj = _unpickle(f, load_storage)
    keys = _unpickle(f)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
        raise ValueError("the storage key list does not match the storages the tensors use")
    for key in map(str, keys):
        root, numel = roots[key]
        count = int.from_bytes(_read_exact(f, 8, f"storage {key} size"), "little", signed=True)
        if count != numel:
            raise ValueError(f"storage {key} holds {count} elements, the tensors expect {numel}")
        root.raw[:] = np.frombuffer(_read_exact(f, root.raw.size, f"storage {key}"), np.uint8)
    return _materialize(obj)


_CORRUPT = (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, zlib.error,
            TypeError, KeyError, IndexError, OverflowError)


def load_torch(path, check_hash=False):
    """Load a ``torch.save`` checkpoint as nested dicts/lists of NumPy arrays.

    Tensors come back as contiguous, native-endian arrays of their own dtype
    (float16 stays float16, bfloat16 becomes float32, bool stays bool), each a
    copy even where tensors shared a storage.  Parameters become plain arrays;
    Python attributes set on tensors are dropped.  Other values (numbers,
    strings, lists, tuples, dicts, OrderedDicts) come back as themselves.

    ``check_hash=True`` first checks the file against the hex digits in its
    name, torch.hub style (``resnet20-12fca82f.th``; see :func:`check_hash_prefix`).

    Raises :class:`UnsafePickleError` for a global outside the allowlist
    (nothing from the file is executed) and ``ValueError`` for a file that is
    not a checkpoint, is truncated, or is inconsistent; both name the file.
    """
    path = os.fspath(path)
    if check_hash:
        check_hash_prefix(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head != b"PK\x03\x04" and head[:1] != b"\x80":
            raise ValueError(f"{path}: not a PyTorch checkpoint: neither a zip archive nor a "
                             f"protocol-2 pickle (starts with {head!r})")
        try:
            return _load_zip(f) if head == b"PK\x03\x04" else _load_legacy(f)
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except _CORRUPT as e:
            raise ValueError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from None


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
    hex digits), e.g. ``resnet20-12fca82f.th``.  Raises ``ValueError`` if the
    name has no such prefix or the digest does not start with it.
    """
    m = re.search(r"-([0-9a-f]{8,})\.[^/\\]*$", os.path.basename(path))
    if m is None:
        raise ValueError(f"{path}: file name has no '-<sha256 prefix>.' part to check against")
    digest = sha256sum(path)
    if not digest.startswith(m.group(1)):
        raise ValueError(f"{path}: SHA-256 {digest} does not start with {m.group(1)} from its name")
    return digest
