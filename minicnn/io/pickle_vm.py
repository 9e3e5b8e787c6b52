"""A pickle machine for untrusted files: the opcodes of protocols 2-5 that plain data needs, nothing else.

``pickle.Unpickler`` is not safe to point at a hostile file even with
``find_class`` restricted: BUILD sets attributes on any object it is given (and
calls ``__setstate__``), the C memo grows to the largest index a PUT names (one
6-byte ``LONG_BINPUT`` asks for a 32 GiB array), and nothing bounds what the
objects it builds cost.  This machine runs the same opcodes on a bytes buffer
with those holes closed:

* globals come only from the caller's ``find_global`` (an allowlist); REDUCE
  calls only what it returns, and only on a tuple of arguments;
* BUILD applies state only to an ``OrderedDict`` (where ``torch.save`` keeps
  ``_metadata``) and ignores it on the caller's ``records`` (a tensor's Python
  attributes); on anything else it is refused;
* the memo is a dict, so an index costs what its entry costs;
* every object built is charged to a :class:`Budget` before it is made
  (conservative sizes, about CPython's), so a small pickle cannot build a large heap.

Opcodes outside the list (INST, OBJ, NEWOBJ, EXT*, PERSID, buffers, the
protocol-0 text forms) are refused by name.  Failures raise
:class:`~minicnn.errors.FileFormatError` (malformed), :class:`UnsafeFileError`
(refused on purpose) or :class:`LimitExceededError` (over budget), without a path:
the file reader adds it.
"""
import pickle
import struct
from collections import OrderedDict

from minicnn.errors import FileFormatError, LimitExceededError, UnsafeFileError

__all__ = ["BUILTINS", "Budget", "TruncatedPickleError", "UnsafePickleError", "unpickle"]

_U16 = struct.Struct("<H").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_F64 = struct.Struct(">d").unpack_from

# Bytes charged per object built (literals in the loop, for speed): CPython's sizes on
# 64-bit, rounded up: 64 an object (str/bytes/int also 1 or 4 per byte), 8 a list or tuple
# slot, 72 a dict, 48 a dict or memo entry, 232 a set, 256 a call's result.


class UnsafePickleError(UnsafeFileError, pickle.UnpicklingError):
    """The pickle names a global or an opcode outside the allowlist; nothing from it was run."""


class TruncatedPickleError(FileFormatError):
    """The pickle's bytes end before its STOP: the file is cut short (or the caller read too little)."""


class Budget:
    """Bytes a load may still allocate; :meth:`take` charges ``n`` or raises LimitExceededError."""

    __slots__ = ("limit", "left")

    def __init__(self, limit):
        self.limit = self.left = int(limit)

    def take(self, n, what):
        if n > self.left:
            raise LimitExceededError(
                f"{what} needs {n:,} bytes, over the memory budget of {self.limit:,} bytes "
                f"({self.left:,} left; pass a larger max_bytes= to allow it)")
        self.left -= n


_NAMES = {  # opcodes refused by name (the rest are unknown bytes)
    b"i"[0]: "INST", b"o"[0]: "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x82: "EXT1", 0x83: "EXT2",
    0x84: "EXT4", b"P"[0]: "PERSID", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER", b"I"[0]: "INT",
    b"L"[0]: "LONG", b"F"[0]: "FLOAT", b"S"[0]: "STRING", b"V"[0]: "UNICODE", b"p"[0]: "PUT",
    b"g"[0]: "GET",
}


_KEYS = (str, int, float, bool, type(None), bytes, complex)


def _key(k, what, depth=0):
    """Dict keys and set elements: scalars and shallow tuples of them only.  Hashing a deep
    tuple recurses in C without a guard (a crash, not an error), and records or arrays as
    keys would escape the reader's checks."""
    if type(k) in _KEYS:
        return k
    if type(k) is tuple and depth < 4:
        for v in k:
            _key(v, what, depth + 1)
        return k
    raise FileFormatError(f"{what} of type {type(k).__name__}: only numbers, strings, bytes and "
                          "shallow tuples of them are read as keys")


def unpickle(data, start, find_global, persistent_load=None, records=(), budget=None):
    """Run the pickle in ``data`` (bytes) from offset ``start``; returns ``(object, end offset)``.

    ``find_global(module, name)`` returns the stand-in for an allowed global (a
    callable taking the REDUCE arguments) or raises UnsafeFileError;
    ``persistent_load(pid)`` resolves BINPERSID ids (refused when None);
    ``records`` are the types on which BUILD is ignored.
    """
    budget = budget if budget is not None else Budget(1 << 62)
    end = len(data)
    i = start
    stack, metastack, memo, found = [], [], {}, {}
    push, pop = stack.append, stack.pop
    left = budget.left
    op = None
    try:
        while True:
            op = data[i]
            i += 1
            # The opcodes torch.save emits, most frequent first.
            if op == 0x72:  # LONG_BINPUT
                memo[_U32(data, i)[0]] = stack[-1]
                i += 4
                left -= 48
            elif op == 0x4B:  # BININT1
                push(data[i])
                i += 1
            elif op == 0x58 or op == 0x8C:  # BINUNICODE, SHORT_BINUNICODE
                if op == 0x58:
                    n = _U32(data, i)[0]
                    i += 4
                else:
                    n = data[i]
                    i += 1
                left -= 64 + 4 * n
                if left < 0 or i + n > end:
                    break
                push(str(data[i:i + n], "utf-8", "surrogatepass"))
                i += n
            elif op == 0x68:  # BINGET
                push(memo[data[i]])
                i += 1
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
                push, pop = stack.append, stack.pop
                left -= 64
            elif op == 0x74:  # TUPLE
                items = tuple(stack)
                left -= 64 + 8 * len(items)
                stack = metastack.pop()
                push, pop = stack.append, stack.pop
                push(items)
            elif op == 0x85:  # TUPLE1
                stack[-1] = (stack[-1],)
                left -= 64
            elif op == 0x52:  # REDUCE
                args = pop()
                func = stack[-1]
                if type(args) is not tuple or id(func) not in found:
                    raise FileFormatError(f"REDUCE of {type(func).__name__} with {type(args).__name__} "
                                          "arguments: only an allowed global is called, on a tuple")
                left -= 256 + (48 * len(args[0]) if args and type(args[0]) in (list, tuple, dict) else 0)
                if left < 0:
                    break
                try:
                    stack[-1] = func(*args)
                except (TypeError, ValueError, OverflowError) as e:
                    if isinstance(e, FileFormatError):
                        raise
                    raise FileFormatError(f"bad arguments to {func!r:.60}: {e}") from None
            elif op == 0x4E:  # NONE
                push(None)
            elif op == 0x51:  # BINPERSID
                if persistent_load is None:
                    raise FileFormatError("a persistent id where none is expected")
                stack[-1] = persistent_load(stack[-1])
            elif op == 0x71:  # BINPUT
                memo[data[i]] = stack[-1]
                i += 1
                left -= 48
            elif op == 0x29:  # EMPTY_TUPLE
                push(())
            elif op == 0x89:  # NEWFALSE
                push(False)
            elif op == 0x4D:  # BININT2
                push(_U16(data, i)[0])
                i += 2
            elif op == 0x6A:  # LONG_BINGET
                push(memo[_U32(data, i)[0]])
                i += 4
            elif op == 0x86:  # TUPLE2
                b = pop()
                stack[-1] = (stack[-1], b)
                left -= 64
            elif op == 0x87:  # TUPLE3
                c = pop()
                b = pop()
                stack[-1] = (stack[-1], b, c)
                left -= 64
            elif op == 0x88:  # NEWTRUE
                push(True)
            elif op == 0x94:  # MEMOIZE
                memo[len(memo)] = stack[-1]
                left -= 48
            elif op == 0x4A:  # BININT
                push(_I32(data, i)[0])
                i += 4
            elif op == 0x47:  # BINFLOAT
                push(_F64(data, i)[0])
                i += 8
                left -= 64
            elif op == 0x8A or op == 0x8B:  # LONG1, LONG4
                if op == 0x8A:
                    n = data[i]
                    i += 1
                else:
                    n = _I32(data, i)[0]
                    i += 4
                    if n < 0:
                        raise FileFormatError("LONG4 with a negative byte count")
                left -= 64 + n
                if left < 0 or i + n > end:
                    break
                push(int.from_bytes(data[i:i + n], "little", signed=True))
                i += n
            elif op in (0x42, 0x43, 0x8E, 0x96, 0x54, 0x55, 0x8D):
                # BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8, BINSTRING, SHORT_BINSTRING, BINUNICODE8
                if op in (0x43, 0x55):
                    n = data[i]
                    i += 1
                elif op in (0x42, 0x54):
                    n = _U32(data, i)[0]
                    i += 4
                else:
                    n = _U64(data, i)[0]
                    i += 8
                left -= 64 + (4 * n if op in (0x54, 0x55, 0x8D) else n)
                if left < 0 or i + n > end:
                    break
                raw = data[i:i + n]
                i += n
                if op == 0x96:
                    push(bytearray(raw))
                elif op in (0x54, 0x55, 0x8D):  # Python 2 str and BINUNICODE8: text
                    push(str(raw, "utf-8", "surrogatepass"))
                else:
                    push(bytes(raw))
            elif op == 0x5D:  # EMPTY_LIST
                push([])
                left -= 64
            elif op == 0x7D:  # EMPTY72
                push({})
                left -= 72
            elif op == 0x8F:  # EMPTY232
                push(set())
                left -= 232
            elif op == 0x61:  # APPEND
                v = pop()
                _list(stack[-1], "APPEND").append(v)
                left -= 8
            elif op == 0x65:  # APPENDS
                items = stack
                stack = metastack.pop()
                push, pop = stack.append, stack.pop
                left -= 8 * len(items)
                _list(stack[-1], "APPENDS").extend(items)
            elif op == 0x6C:  # LIST
                items = stack
                stack = metastack.pop()
                push, pop = stack.append, stack.pop
                push(items)
            elif op == 0x73 or op == 0x75 or op == 0x64:  # SETITEM, SETITEMS, DICT
                if op == 0x73:
                    items = stack[-2:]
                    del stack[-2:]
                    if len(items) != 2:
                        raise IndexError("stack underflow")
                else:
                    items = stack
                    stack = metastack.pop()
                    push, pop = stack.append, stack.pop
                    if op == 0x64:
                        push({})
                left -= 72 + 48 * (len(items) // 2)
                target = stack[-1]
                if type(target) not in (dict, OrderedDict):
                    raise FileFormatError(f"SETITEM on {type(target).__name__}, not a dict")
                if len(items) % 2:
                    raise FileFormatError("SETITEMS with an odd number of items")
                for k in range(0, len(items), 2):
                    target[_key(items[k], "dict key")] = items[k + 1]
            elif op == 0x90 or op == 0x91:  # ADDITEMS, FROZENSET
                items = stack
                stack = metastack.pop()
                push, pop = stack.append, stack.pop
                left -= 232 + 48 * len(items)
                for v in items:
                    _key(v, "set element")
                if op == 0x91:
                    push(frozenset(items))
                elif type(stack[-1]) is set:
                    stack[-1].update(items)
                else:
                    raise FileFormatError(f"ADDITEMS on {type(stack[-1]).__name__}, not a set")
            elif op == 0x63 or op == 0x93:  # GLOBAL, STACK_GLOBAL
                if op == 0x63:
                    j = data.find(b"\n", i)
                    k = data.find(b"\n", j + 1)
                    if j < 0 or k < 0:
                        break  # truncated
                    module, name = str(data[i:j], "ascii"), str(data[j + 1:k], "ascii")
                    i = k + 1
                else:
                    name = pop()
                    module = pop()
                    if type(module) is not str or type(name) is not str:
                        raise FileFormatError("STACK_GLOBAL with names that are not strings")
                g = find_global(module, name)
                found[id(g)] = g
                push(g)
            elif op == 0x62:  # BUILD
                state = pop()
                target = stack[-1]
                if type(target) is OrderedDict and type(state) in (dict, tuple):
                    _build_ordered_dict(target, state)
                elif not (isinstance(target, records) or type(target) is OrderedDict and state is None):
                    raise UnsafePickleError(f"refusing BUILD (set state) on {type(target).__name__}")
            elif op == 0x30:  # POP
                if stack:
                    pop()
                else:
                    stack = metastack.pop()
                    push, pop = stack.append, stack.pop
            elif op == 0x31:  # POP_MARK
                stack = metastack.pop()
                push, pop = stack.append, stack.pop
            elif op == 0x32:  # DUP
                push(stack[-1])
            elif op == 0x80:  # PROTO
                if data[i] > 5:
                    raise FileFormatError(f"pickle protocol {data[i]}, at most 5 is known")
                i += 1
            elif op == 0x95:  # FRAME: a length prefix only; the opcodes follow inline
                i += 8
            elif op == 0x2E:  # STOP
                if metastack or len(stack) != 1:
                    raise FileFormatError(f"STOP with {len(stack)} objects on the stack, expected 1")
                budget.left = left
                if left < 0:
                    break
                return stack[0], i
            else:
                name = _NAMES.get(op)
                if name:
                    raise UnsafePickleError(f"refusing pickle opcode {name} at byte {i - 1}")
                raise FileFormatError(f"unknown pickle opcode 0x{op:02x} at byte {i - 1}")
            if left < 0:
                break
    except struct.error:  # unpack_from past the end
        raise TruncatedPickleError(f"truncated pickle (ends at byte {end})") from None
    except IndexError:
        if i >= end:  # data[i] past the end
            raise TruncatedPickleError(f"truncated pickle (ends at byte {end})") from None
        raise FileFormatError(f"malformed pickle: opcode 0x{op:02x} at byte {i - 1} "
                              "pops more than its stack holds") from None
    except ValueError as e:  # data.index: no newline; str(): bad UTF-8 or ASCII
        if isinstance(e, FileFormatError):
            raise
        raise FileFormatError(f"malformed pickle at byte {i - 1}: {e}") from None
    except KeyError as e:
        raise FileFormatError(f"malformed pickle: memo entry {e} read before it is written") from None
    except RecursionError:
        raise LimitExceededError("pickle nested too deeply") from None
    if left < 0:
        budget.left = left
        budget.take(0, "the pickle's objects")  # raises with the budget's figures
        raise AssertionError("unreachable")
    raise TruncatedPickleError(f"truncated pickle (ends at byte {end})")


def _ordered_dict(*args):
    if args and not (len(args) == 1 and type(args[0]) in (dict, OrderedDict)):
        raise FileFormatError("OrderedDict built from something other than a dict")
    return OrderedDict(*args)


def _set(items=()):
    if type(items) not in (list, tuple):
        raise FileFormatError(f"set built from {type(items).__name__}, expected a list")
    return set(_key(v, "set element") for v in items)


def _frozenset(items=()):
    return frozenset(_set(items))


def _complex(real=0.0, imag=0.0):
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise FileFormatError("complex built from something other than two numbers")
    return complex(real, imag)


def _latin1_bytes(text, encoding="utf-8"):
    """``_codecs.encode``, as protocol-2 pickles spell ``bytes``."""
    if encoding != "latin1" or type(text) is not str:
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r:.20})")
    return text.encode("latin1")


# The plain-data globals a pickle may name (Python 2 spellings are mapped by the caller).
BUILTINS = {
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.complex": _complex,
    "_codecs.encode": _latin1_bytes,
}


def _list(obj, what):
    if type(obj) is not list:
        raise FileFormatError(f"{what} on {type(obj).__name__}, not a list")
    return obj


def _build_ordered_dict(target, state):
    """BUILD on an OrderedDict: ``torch.save`` keeps a state_dict's ``_metadata`` as instance state."""
    slots = None
    if type(state) is tuple and len(state) == 2:
        state, slots = state
    for part in (state, slots):
        if part is None:
            continue
        if type(part) is not dict or not all(type(k) is str for k in part):
            raise FileFormatError("OrderedDict state is not a dict of names")
        for k, v in part.items():
            # The instance __dict__ only: attributes of the class or its methods cannot be replaced.
            if k.startswith("__"):
                raise UnsafePickleError(f"refusing OrderedDict attribute {k!r:.40}")
            target.__dict__[k] = v
