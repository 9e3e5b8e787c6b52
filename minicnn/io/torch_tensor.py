"""Torch tensors and storages as a checkpoint's pickle describes them, and their NumPy views.

While the pickle runs, a tensor is only a record (:class:`TensorRecord`: storage,
offset, size, stride, dtype): a tuple, so immutable, made unhashable, and checked
for shape when it is made.  Once every storage's bytes are read, :func:`resolve` walks the loaded
tree and turns each record into a NumPy view of its storage, after checking in
bytes that the first and last byte it addresses lie inside that storage.
Tensors that share a storage stay views of one buffer, as in torch; a copy is
made only where the bytes must change (big-endian files, bfloat16 widened to
float32, bool bytes other than 0/1: once per storage; the neg/conj bit: per
tensor), each charged to the load's :class:`~minicnn.io.pickle_vm.Budget`.
"""
import _compat_pickle
import math
from collections import OrderedDict
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from minicnn.errors import FileFormatError, LimitExceededError
from minicnn.io.pickle_vm import BUILTINS, UnsafePickleError

__all__ = ["DTYPES", "StorageRef", "TensorRecord", "GLOBALS", "find_global", "storage_ref", "resolve",
           "MAX_DEPTH"]

# torch dtype name -> NumPy dtype of the stored elements (little-endian).
# bfloat16 is stored as its raw 16 bits and widened to float32 on the way out.
DTYPES = {
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
MAX_DEPTH = 100     # containers nested deeper are refused (LimitExceededError)
_MAX_DIMS = 32      # NumPy's own limit (numpy 1.x)
_MAX_INT = 1 << 62  # sizes, strides, offsets and element counts beyond this are nonsense
_ITEMSIZE = {name: np.dtype(code).itemsize for name, code in DTYPES.items()}


@dataclass(frozen=True, slots=True, eq=False)
class _Global:
    """Stand-in for an allowed torch global: a storage type or dtype (``dtype`` names the
    element type), the tensor class, or a rebuild function (``call``).  Frozen."""

    name: str
    dtype: str = None
    call: object = None
    __hash__ = None

    def __call__(self, *args):
        if self.call is None:
            raise FileFormatError(f"torch global {self.name} is not callable")
        return self.call(*args)

    def __repr__(self):
        return f"<torch {self.name}>"


class StorageRef(tuple):
    """A storage a tensor names: ``key`` in the file, ``numel`` elements of ``dtype``;
    ``view`` is a pre-0.4 ``(view_key, offset, numel)`` slice of it (legacy format).

    A tuple, so immutable (a file's BUILD cannot touch it); unhashable, so it cannot hide
    as a dict key or set element from :func:`resolve`.
    """

    __slots__ = ()
    __hash__ = None
    key, dtype, numel, view = (property(itemgetter(k)) for k in range(4))

    @property
    def nbytes(self):
        return self[2] * _ITEMSIZE[self[1]]


class TensorRecord(tuple):
    """A tensor as pickled: its storage, element offset, size, stride, dtype and neg/conj bits.
    Immutable and unhashable, like :class:`StorageRef`."""

    __slots__ = ()
    __hash__ = None
    storage, offset, size, stride, dtype, neg, conj = (property(itemgetter(k)) for k in range(7))


def _ints(values, what):
    if type(values) is not tuple:
        if type(values) is not list:
            raise FileFormatError(f"{what} is {type(values).__name__}, expected a tuple")
        values = tuple(values)
    for v in values:
        if type(v) is not int or not 0 <= v < _MAX_INT:
            raise FileFormatError(f"{what} has {v!r:.40}, expected ints in [0, 2**62)")
    return values


def _int(v, what):
    if type(v) is not int or not 0 <= v < _MAX_INT:
        raise FileFormatError(f"{what} is {v!r:.40}, expected an int in [0, 2**62)")
    return v


def _record(storage, offset, size, stride, dtype=None, metadata=None):
    if type(storage) is not StorageRef:
        raise FileFormatError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    if dtype is None:
        dtype = storage[1]
    elif isinstance(dtype, _Global) and dtype.dtype in DTYPES and dtype.call is None:
        dtype = dtype.dtype
    else:
        raise FileFormatError(f"unsupported tensor dtype {dtype!r:.40}")
    size, stride = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    if len(size) != len(stride) or len(size) > _MAX_DIMS:
        raise FileFormatError(f"bad tensor geometry: size {size!r:.60}, stride {stride!r:.60}")
    neg = conj = False
    if metadata:
        if type(metadata) not in (dict, OrderedDict):
            raise FileFormatError(f"tensor metadata is {type(metadata).__name__}, expected a dict")
        neg, conj = metadata.get("neg", False), metadata.get("conj", False)
        if type(neg) is not bool or type(conj) is not bool:
            raise FileFormatError("tensor metadata neg/conj are not booleans")
    return TensorRecord((storage, _int(offset, "a tensor's storage offset"), size, stride, dtype, neg, conj))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _record(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _record(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    return _record(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, TensorRecord):
        raise FileFormatError(f"parameter rebuilt from {type(data).__name__}, expected a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor carrying Python attributes: rebuild the tensor, drop the attributes."""
    if new_type is not _TENSOR:
        raise UnsafePickleError(f"refusing tensor subclass {new_type!r:.60}")
    if not (isinstance(func, _Global) and func.name in _REBUILDS) or type(args) is not tuple:
        raise FileFormatError(f"tensor subclass rebuilt by {func!r:.60}")
    return func(*args)


_TENSOR = _Global("Tensor")
_REBUILDS = {"torch._utils._rebuild_tensor": _rebuild_tensor,
             "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
             "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
             "torch._utils._rebuild_parameter": _rebuild_parameter,
             "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
             "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2}
GLOBALS = dict(BUILTINS)
GLOBALS.update({"torch.Tensor": _TENSOR, "torch._tensor.Tensor": _TENSOR,
                "torch.storage.UntypedStorage": _Global("UntypedStorage", "uint8")})
GLOBALS.update({f"torch.{n}": _Global(n, n) for n in DTYPES})
for _module in ("torch", "torch.cuda"):  # torch.cuda.*Storage: GPU tensors saved by old versions
    GLOBALS.update({f"{_module}.{n}": _Global(n, d) for n, d in _STORAGE_DTYPES.items()})
GLOBALS.update({name: _Global(name, call=fn) for name, fn in _REBUILDS.items()})


def find_global(module, name):
    """The stand-in for an allowed global, or UnsafePickleError naming the refused one."""
    # Python-2 pickles spell builtins as __builtin__.*; map them as pickle does.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    dotted = f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"
    try:
        return GLOBALS[dotted]
    except KeyError:
        raise UnsafePickleError(
            f"refusing to load global {dotted:.120}: a tensor checkpoint only needs "
            "collections.OrderedDict, torch._utils._rebuild_*, torch storage types and dtypes") from None


def storage_ref(pid, with_view):
    """The StorageRef of a persistent id ``('storage', type, key, location, numel[, view])``."""
    if type(pid) is not tuple or len(pid) != 5 + with_view or pid[0] != "storage":
        kind = pid[0] if type(pid) is tuple and pid else type(pid).__name__
        if kind == "storage":
            raise FileFormatError(f"malformed storage id {pid!r:.80}")
        raise FileFormatError(f"unsupported persistent id {kind!r:.80}: only tensor storages are read "
                              "(whole pickled nn.Modules are not; save a state_dict instead)")
    _, kind, key, _, numel = pid[:5]
    if type(kind) is not _Global or kind.dtype is None or kind.call is not None or type(key) not in (str, int):
        raise FileFormatError(f"malformed storage id {pid!r:.80}")
    view = pid[5] if with_view else None
    if view is not None:
        if not (type(view) is tuple and len(view) == 3 and type(view[0]) in (str, int)):
            raise FileFormatError(f"malformed storage view {view!r:.80}")
        view = (str(view[0]), _int(view[1], "a storage view offset"), _int(view[2], "a storage view size"))
    return StorageRef((str(key), kind.dtype, _int(numel, "a storage size"), view))


class _Arrays:
    """Typed, native-endian, aligned 1-D arrays over the storages' bytes, made once per
    (storage, dtype), and tensors as views of them."""

    def __init__(self, storages, byteorder, budget):
        self.storages, self.byteorder, self.budget = storages, byteorder, budget
        self.views, self.typed = {}, {}

    def raw(self, ref):
        """The bytes of ``ref``: its whole storage, or for a legacy view its slice."""
        buf = self.storages[ref.key]
        if ref.view is None:
            return ref.key, buf
        view_key, offset, numel = ref.view
        span = (ref.key, offset * _ITEMSIZE[ref.dtype], (offset + numel) * _ITEMSIZE[ref.dtype])
        if self.views.setdefault(view_key, span) != span:
            raise FileFormatError(f"storage view {view_key!r:.40} is declared twice, differently")
        if span[2] > buf.size:
            raise FileFormatError(f"storage view {ref.view!r:.80} exceeds its storage of {buf.size} bytes")
        return ("view", view_key), buf[span[1]:span[2]]

    def typed_array(self, ref, dtype):
        """Storage ``ref`` as a 1-D array of ``dtype`` (a trailing partial element dropped)."""
        got = self.typed.get((ref.key, ref.view, dtype))
        if got is not None:
            return got
        key, buf = self.raw(ref)
        stored = np.dtype(DTYPES[dtype]).newbyteorder("<" if self.byteorder == "little" else ">")
        elems = buf[:buf.size - buf.size % stored.itemsize].view(stored)
        if dtype == "bfloat16":
            self.budget.take(2 * elems.nbytes, f"bfloat16 storage {key} widened to float32")
            elems = (elems.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "bool" and elems.size and elems.max() > 1:  # NumPy bools must be 0 or 1
            self.budget.take(elems.nbytes, f"bool storage {key}")
            elems = elems != 0
        elif dtype == "bool":
            elems = elems.view(np.bool_)
        elif not stored.isnative or not elems.flags.aligned:
            self.budget.take(elems.nbytes, f"storage {key} made native-endian and aligned")
            elems = elems.astype(stored.newbyteorder("="))
        self.typed[ref.key, ref.view, dtype] = elems
        return elems

    def array(self, rec):
        """Tensor ``rec`` as a view of its storage, after checking its extent in bytes."""
        storage, offset, size, stride, dtype, neg, conj = rec
        elems = self.typed_array(storage, dtype)
        itemsize = elems.itemsize
        count = math.prod(size)
        if count * itemsize > self.budget.limit:  # so that materializing it stays in budget
            raise LimitExceededError(f"{_describe(rec)} spans {count * itemsize:,} bytes, over the memory "
                                     f"budget of {self.budget.limit:,} bytes (pass a larger max_bytes=)")
        if neg and elems.dtype.kind == "b":
            raise FileFormatError(f"{_describe(rec)} has the neg bit, which a bool tensor cannot have")
        if count == 0:
            try:
                return np.zeros(size, elems.dtype)
            except ValueError:  # the other dimensions multiply past what NumPy can index
                raise FileFormatError(f"{_describe(rec)}: an empty shape NumPy cannot represent") from None
        last = offset
        for n, s in zip(size, stride):
            last += (n - 1) * s
        if last >= elems.size:
            stored = _ITEMSIZE[dtype]
            raise FileFormatError(f"{_describe(rec)} reaches byte {(last + 1) * stored:,} of a storage "
                                  f"holding {elems.size * stored:,} bytes")
        out = np.ndarray(size, elems.dtype, elems, offset * itemsize, tuple(s * itemsize for s in stride))
        conj = conj and out.dtype.kind == "c"  # conjugating a real tensor changes nothing
        if neg or conj:
            self.budget.take(out.nbytes, f"{_describe(rec)} with its neg/conj bit applied")
            out = out.copy()  # in place below: a ufunc's result on a 0-d array would be a scalar
            if conj:
                np.conjugate(out, out=out)
            if neg:
                np.negative(out, out=out)
        return out


def _describe(rec):
    return f"tensor (size {rec.size}, stride {rec.stride}, offset {rec.offset}, {rec.dtype})"


def resolve(obj, storages, byteorder, budget):
    """``obj`` with every TensorRecord (and bare StorageRef) replaced by a NumPy array.

    ``storages`` maps storage keys to their bytes (1-D uint8 arrays).  Containers
    are rebuilt in place (dicts, lists) or anew (tuples), each once however often
    it is shared; nesting deeper than :data:`MAX_DEPTH` raises LimitExceededError.
    """
    arrays = _Arrays(storages, byteorder, budget)
    array = arrays.array
    done, busy = {}, set()

    def walk(o, depth):
        t = type(o)
        if t in _LEAVES:
            return o
        key = id(o)
        if key in done:
            return done[key][1]
        if key in busy:
            if t is tuple:  # a tuple is replaced after its walk: a cycle would keep the old one
                raise FileFormatError("a tuple that contains itself")
            return o
        if depth > MAX_DEPTH:
            raise LimitExceededError(f"containers nested more than {MAX_DEPTH} deep")
        if t is TensorRecord:
            out = array(o)
        elif t is StorageRef:
            n = o.view[2] if o.view else o.numel
            out = arrays.array(TensorRecord((o, 0, (n,), (1,), o.dtype, False, False)))
        elif t is dict or t is OrderedDict:
            busy.add(key)
            for k, v in o.items():
                o[k] = walk(v, depth + 1)
            for k, v in vars(o).items() if t is OrderedDict else ():
                setattr(o, k, walk(v, depth + 1))
            out = o
        elif t is list:
            busy.add(key)
            o[:] = [walk(v, depth + 1) for v in o]
            out = o
        elif t is tuple:
            busy.add(key)
            out = tuple(walk(v, depth + 1) for v in o)
        elif t is _Global and o.dtype in DTYPES and o.call is None and o.name in DTYPES:
            out = np.dtype(o.name) if o.name != "bfloat16" else o.name
        else:
            raise FileFormatError(f"{o!r:.60} ({t.__name__}) where data was expected")
        done[key] = (o, out)  # o kept alive: its id must not be reused while the walk runs
        return out

    try:
        return walk(obj, 0)
    except RecursionError:
        raise LimitExceededError("containers nested too deeply for Python's recursion limit") from None


_LEAVES = frozenset({str, int, float, bool, type(None), bytes, bytearray, complex, set, frozenset})
