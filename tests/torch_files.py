"""Writing torch checkpoints without torch, for the reader's tests and fuzzer.

Two ways to spell the pickle inside:

* :func:`craft_pickle` pickles a Python object tree in which :class:`Ref` (a global
  by name), :class:`Call` (``func(*args)``) and :class:`Storage` (a persistent id)
  stand for torch's objects;
* the opcode helpers (:func:`G`, :func:`S`, :func:`I`, :func:`T`, :func:`PID`,
  :func:`TENSOR`, ...) return raw pickle bytes, for files no pickler would write.

:func:`write_zip` and :func:`write_legacy` wrap either in torch.save's containers;
:func:`raw_zip` writes a zip whose members' bytes, sizes and method are given as is.
"""
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


# ---------------------------------------------------------------- object trees
class Ref:
    """A global written by name (GLOBAL module name), no import needed."""

    def __init__(self, dotted):
        self.module, self.name = dotted.rsplit(".", 1)

    def __call__(self):  # pickle only reduces to callables
        raise AssertionError("never called")


class Call:
    """Pickles as func(*args)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Storage:
    def __init__(self, key, numel, kind="FloatStorage", view=None):
        self.key, self.numel, self.kind, self.view = key, numel, kind, view


class CraftPickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def save_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[Ref] = save_ref

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        pid = ("storage", Ref(f"torch.{obj.kind}"), obj.key, "cpu", obj.numel)
        return pid + (obj.view,) if self.legacy else pid


def craft_pickle(obj, legacy=False):
    """``obj`` pickled (protocol 2); bytes are taken as an already written pickle."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    buf = io.BytesIO()
    CraftPickler(buf, legacy).dump(obj)
    return buf.getvalue()


def tensor(storage, offset, size, stride, v3_dtype=None):
    if v3_dtype:
        return Call(Ref("torch._utils._rebuild_tensor_v3"), storage, offset, size, stride, False,
                    Call(Ref("collections.OrderedDict")), Ref(f"torch.{v3_dtype}"))
    return Call(Ref("torch._utils._rebuild_tensor_v2"), storage, offset, size, stride, False,
                Call(Ref("collections.OrderedDict")))


# ---------------------------------------------------------------- raw opcodes
PROTO, STOP, MARK, BUILD, NONE, FALSE = b"\x80\x02", b".", b"(", b"b", b"N", b"\x89"


def G(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def S(text):
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def I(n):  # noqa: E743 (the opcode's name)
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def T(*items):
    return MARK + b"".join(items) + b"t"


def D(*pairs):
    """A dict from (key bytes, value bytes) pairs."""
    return b"}" + (MARK + b"".join(k + v for k, v in pairs) + b"u" if pairs else b"")


def L(*items):
    return b"]" + (MARK + b"".join(items) + b"e" if items else b"")


def PUT(i):
    return b"r" + struct.pack("<I", i)


def GET(i):
    return b"j" + struct.pack("<I", i)


def PID(key, numel, kind="FloatStorage", legacy=False):
    parts = [S("storage"), G("torch", kind), S(key), S("cpu"), I(numel)] + ([NONE] if legacy else [])
    return T(*parts) + b"Q"


def TENSOR(storage, offset, size, stride, dtype=None):
    """``_rebuild_tensor_v2`` (or v3 with ``dtype``) of ``storage`` (pickle bytes)."""
    tail = [FALSE, G("collections", "OrderedDict") + b")R"] + ([G("torch", dtype)] if dtype else [])
    fn = "_rebuild_tensor_v3" if dtype else "_rebuild_tensor_v2"
    return G("torch._utils", fn) + T(storage, I(offset), T(*map(I, size)), T(*map(I, stride)), *tail) + b"R"


# ---------------------------------------------------------------- containers
def write_zip(path, obj, blobs, byteorder="little"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", craft_pickle(obj))
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for key, blob in blobs.items():
            z.writestr(f"archive/data/{key}", blob)
    return path


def write_legacy(path, obj, blobs, numels=None, keys=None, itemsize=4):
    header = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(LEGACY_PROTOCOL, 2),
              pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2)]
    body = [craft_pickle(obj, legacy=True), pickle.dumps(list(keys if keys is not None else blobs), 2)]
    for key, blob in blobs.items():
        numel = (numels or {}).get(key, len(blob) // itemsize)
        body.append(numel.to_bytes(8, "little") + blob)
    Path(path).write_bytes(b"".join(header + body))
    return path


WRITERS = {"zip": write_zip, "legacy": write_legacy}


def deflate_zeros(n, block=1 << 20):
    """A raw deflate stream of ``n`` zero bytes, made in a moment however large ``n`` is:
    after a full flush each block of zeros compresses to the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(n, block)
    return first + again * (blocks - 1) + c.compress(bytes(rest)) + c.flush()


def raw_zip(path, members):
    """A zip of ``(name, stored_bytes, declared_size, method)`` members, written as given
    (CRC of the stored bytes only, so a member that lies about its size still opens)."""
    out, central = bytearray(), bytearray()
    for name, data, declared, method in members:
        raw = name.encode()
        crc = zlib.crc32(data) if method == zipfile.ZIP_STORED else 0
        head = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), declared,
                           len(raw), 0)
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data),
                               declared, len(raw), 0, 0, 0, 0, 0, len(out)) + raw
        out += head + raw + data
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    Path(path).write_bytes(bytes(out + central + end))
    return path
