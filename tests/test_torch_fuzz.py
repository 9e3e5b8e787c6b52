"""Fuzzing load_torch with hostile checkpoints, each loaded in a capped subprocess.

Hypothesis builds checkpoints from their structure: storages of random types and
lengths, tensors of random geometry (in and out of bounds, stride 0, huge sizes,
v2/v3, neg/conj bits), trees of dicts/lists/tuples/OrderedDicts/sets around them,
in the zip or the legacy format.  Some are then made hostile: opcodes the reader
allows (BUILD, REDUCE, memo PUT/GET with wild indices, MARK/POP, globals allowed
or not) inserted at random places, the file truncated, bits flipped.

The cases are loaded one after another by one fresh process (restarted if it
dies) whose address space is capped at what it holds after import plus the
largest budget a case can have plus 128 MiB.
The property, per case:

* the load returns, or raises FileFormatError/UnsafeFileError/LimitExceededError
  whose message starts with the file's path and which is not a wrapped internal
  error (a MemoryError or RecursionError the budget should have prevented);
* every array returned lies inside the buffer it views (``np.byte_bounds``), and
  all of them together stay within the load's budget;
* a case that was not made hostile loads exactly as the reference computed here
  with NumPy from the same bytes (same arrays in the same order), or fails with
  the error the reference predicts (out of bounds, over budget);
* the process never dies of a signal.

The suite runs a short profile (a few seconds).  The long one, by hand::

    MINICNN_FUZZ_CASES=10000 [MINICNN_FUZZ_SEED=1] nice pytest -q -s tests/test_torch_fuzz.py

prints the number of cases run.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from minicnn.io.torch_load import BUDGET_FACTOR as FACTOR, BUDGET_FLOOR as FLOOR
from torch_files import FALSE, GET, LEGACY_MAGIC, LEGACY_PROTOCOL, G, I, PUT, S, write_zip

ROOT = Path(__file__).resolve().parents[1]
CASES = int(os.environ.get("MINICNN_FUZZ_CASES", 100))
SEED = os.environ.get("MINICNN_FUZZ_SEED")  # another seed explores other cases; default: derandomized

STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                  "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                  "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
                  "UntypedStorage": "uint8"}
CODES = {"float32": "f4", "float64": "f8", "float16": "f2", "bfloat16": "u2", "int64": "i8", "int32": "i4",
         "uint8": "u1", "bool": "u1", "complex64": "c8", "int16": "i2", "uint16": "u2"}

MAX_FILE = 1 << 20  # generated files stay below this, so every budget is below FACTOR x it + FLOOR
WORKER = r"""
import hashlib, json, resource, sys
import numpy as np
from minicnn.errors import FileFormatError
from minicnn.io import load_torch
try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    byte_bounds = np.byte_bounds

vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))
cap = vm + int(sys.argv[1]) + (128 << 20)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

def arrays(obj, out, seen, depth=0):
    if depth > 200:
        raise AssertionError('result nested deeper than the limit')
    if isinstance(obj, np.ndarray):
        out.append(obj)
    elif isinstance(obj, dict) and id(obj) not in seen:
        seen.add(id(obj))
        for v in obj.values():
            arrays(v, out, seen, depth + 1)
    elif isinstance(obj, (list, tuple)) and id(obj) not in seen:
        seen.add(id(obj))
        for v in obj:
            arrays(v, out, seen, depth + 1)
    return out

def check(case):
    try:
        got = load_torch(case['path'])
    except FileFormatError as e:
        msg = str(e)
        if not msg.startswith(case['path'] + ': '):
            return {'bad': 'message does not start with the path: ' + msg[:200]}
        if e.__cause__ is not None or 'MemoryError' in msg or 'RecursionError' in msg:
            return {'bad': 'internal error escaped as ' + msg[:200]}
        return {'error': type(e).__name__, 'msg': msg[len(case['path']) + 2:][:200]}
    except Exception as e:
        return {'bad': 'undocumented %s: %s' % (type(e).__name__, str(e)[:200])}
    found, bases, digests = arrays(got, [], set()), {}, []
    for a in found:
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        if a.size:
            lo, hi = byte_bounds(a)
            blo, bhi = byte_bounds(base)
            if lo < blo or hi > bhi:
                return {'bad': 'array %s outside its buffer' % (a.shape,)}
        bases[id(base)] = base.nbytes
        if a.nbytes > case['budget']:
            return {'bad': 'array of %d bytes over the budget' % a.nbytes}
        digests.append([list(a.shape), a.dtype.str, hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()])
    if sum(bases.values()) > case['budget']:
        return {'bad': 'buffers of %d bytes over the budget' % sum(bases.values())}
    return {'ok': digests}

print('ready', flush=True)
for line in sys.stdin:
    print(json.dumps(check(json.loads(line))), flush=True)
"""


class Worker:
    """One capped process loading case after case (read from its stdin); restarted if it dies."""

    def __init__(self):
        self.proc = None

    def load(self, path, budget):
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
            self.stderr = tempfile.TemporaryFile("w+")
            self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(FACTOR * MAX_FILE + FLOOR)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                         text=True, env=env)
            assert self.proc.stdout.readline().strip() == "ready"
        self.proc.stdin.write(json.dumps({"path": str(path), "budget": budget}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.stderr.seek(0)
            raise AssertionError(f"the loading process died ({code}) on {path}: {self.stderr.read()[-2000:]}")
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------- the model of a checkpoint
@st.composite
def storages(draw):
    n = draw(st.integers(1, 3))
    out = []
    for k in range(n):
        kind = draw(st.sampled_from(sorted(STORAGE_DTYPES)))
        numel = draw(st.integers(0, 48))
        itemsize = np.dtype(CODES[STORAGE_DTYPES[kind]]).itemsize
        out.append({"key": str(k), "kind": kind, "numel": numel,
                    "blob": draw(st.binary(min_size=numel * itemsize, max_size=numel * itemsize))})
    return out


def geometry(n_storages):
    dim = st.one_of(st.integers(0, 6), st.sampled_from([2**20, 2**31, 2**40, 20000]))
    step = st.one_of(st.integers(0, 8), st.sampled_from([-1, 2**33, 2**62, 2**63]))
    return st.integers(0, 4).flatmap(lambda nd: st.fixed_dictionaries({
        "storage": st.integers(0, n_storages - 1),
        "offset": st.one_of(st.integers(0, 50), st.sampled_from([-1, 2**62])),
        "size": st.lists(dim, min_size=nd, max_size=nd),
        "stride": st.lists(step, min_size=nd, max_size=nd),
        "v3": st.one_of(st.none(), st.sampled_from(sorted(CODES))),
        "flags": st.sampled_from([None, "neg", "conj"]),
    }))


def trees(n_storages):
    leaves = st.one_of(
        st.tuples(st.just("tensor"), geometry(n_storages)),
        st.tuples(st.just("int"), st.integers(-2**70, 2**70)),
        st.tuples(st.just("str"), st.text(max_size=8)),
        st.tuples(st.just("float"), st.floats(allow_nan=False)),
        st.tuples(st.just("none"), st.none()),
        st.tuples(st.just("bytes"), st.binary(max_size=8)),
    )
    return st.recursive(leaves, lambda kids: st.one_of(
        st.tuples(st.just("list"), st.lists(kids, max_size=4)),
        st.tuples(st.just("tuple"), st.lists(kids, max_size=4)),
        st.tuples(st.just("dict"), st.lists(st.tuples(st.text(max_size=4), kids), max_size=4)),
        st.tuples(st.just("odict"), st.lists(st.tuples(st.text(max_size=4), kids), max_size=4)),
        st.tuples(st.just("set"), st.lists(st.integers(-5, 5), max_size=4)),
    ), max_leaves=10)


HOSTILE_TOKENS = [b"b", b"R", b"0", b"1", b"2", b"(", b"t", b"l", b"}", b"]", b")", b"N", b"\x85", b"s", b"u",
                  b"a", b"e", b"Q", b"\x88", b"\x8f", b"\x90", b"\x91", b"\x94", b"d", b"\x93",
                  G("torch._utils", "_rebuild_tensor_v2"), G("torch", "FloatStorage"), G("collections", "OrderedDict"),
                  G("builtins", "set"), G("torch._utils", "_rebuild_parameter"), G("posix", "system"),
                  G("torch._tensor", "_rebuild_from_type_v2"), G("torch", "Tensor"), G("builtins", "complex"),
                  G("_codecs", "encode"), S("storage"), S("latin1"), I(2**40), I(-1), b"K\xff", b"i", b"c"]


@st.composite
def cases(draw):
    fmt = draw(st.sampled_from(["zip", "legacy"]))
    stores = draw(storages())
    tree = draw(trees(len(stores)))
    big_endian = fmt == "zip" and draw(st.booleans())
    hostile = draw(st.lists(st.tuples(st.floats(0, 1), st.one_of(
        st.sampled_from(HOSTILE_TOKENS),
        st.integers(0, 2**32 - 1).map(PUT), st.integers(0, 40).map(GET),
        st.integers(0, 255).map(lambda b: bytes([b])))), max_size=3))
    # where: the pickle before it is packed, a storage's bytes (the zip's CRCs hold), or the whole file
    mutation = draw(st.one_of(st.none(), st.tuples(
        st.sampled_from(["pickle", "storage", "file"]), st.sampled_from(["truncate", "flip"]),
        st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=4))))
    return {"fmt": fmt, "storages": stores, "tree": tree, "big_endian": big_endian, "hostile": hostile,
            "mutation": mutation}


# ---------------------------------------------------------------- writing a case
def tokens(node, stores, legacy, memo):
    """The pickle of ``node`` as a list of opcodes (hostile ones go between them)."""
    kind, value = node
    if kind == "tensor":
        s = stores[value["storage"]]
        if s["key"] in memo:
            storage = [GET(memo[s["key"]])]
        else:
            memo[s["key"]] = 1000 + len(memo)
            storage = [b"(", S("storage"), G("torch", s["kind"]), S(s["key"]), S("cpu"), I(s["numel"])] + \
                ([b"N"] if legacy else []) + [b"t", b"Q", PUT(memo[s["key"]])]
        meta = [b"}", b"(", S(value["flags"]), b"\x88", b"u"] if value["flags"] else []
        v3 = [G("torch", value["v3"])] if value["v3"] else []
        fn = "_rebuild_tensor_v3" if value["v3"] else "_rebuild_tensor_v2"
        return [G("torch._utils", fn), b"("] + storage + [I(value["offset"]), b"("] + \
            [I(n) for n in value["size"]] + [b"t", b"("] + [I(n) for n in value["stride"]] + \
            [b"t", FALSE, G("collections", "OrderedDict"), b")", b"R"] + v3 + meta + [b"t", b"R"]
    if kind == "int":
        return [I(value)]
    if kind == "str":
        return [S(value)]
    if kind == "float":
        return [b"G" + struct.pack(">d", value)]
    if kind == "none":
        return [b"N"]
    if kind == "bytes":
        return [b"C" + bytes([len(value)]) + value]
    kids = [t for child in (value if kind in ("list", "tuple") else ()) for t in tokens(child, stores, legacy, memo)]
    if kind == "list":
        return [b"]", b"("] + kids + [b"e"]
    if kind == "tuple":
        return [b"("] + kids + [b"t"]
    if kind == "set":
        return [G("builtins", "set"), b"(", b"]", b"("] + [I(v) for v in value] + [b"e", b"t", b"R"]
    pairs = [t for k, v in value for t in [S(k)] + tokens(v, stores, legacy, memo)]
    head = [b"}"] if kind == "dict" else [G("collections", "OrderedDict"), b")", b"R"]
    return head + [b"("] + pairs + [b"u"]


def file_bytes(case, path):
    legacy = case["fmt"] == "legacy"
    body = tokens(case["tree"], case["storages"], legacy, {})
    for where, token in case["hostile"]:
        body.insert(int(where * len(body)), token)
    target, how, spots = case["mutation"] or (None, None, None)
    pkl = _mutate(b"\x80\x02" + b"".join(body) + b".", how, spots) if target == "pickle" else \
        b"\x80\x02" + b"".join(body) + b"."
    blobs = {s["key"]: _swap(s) if case["big_endian"] else s["blob"] for s in case["storages"]}
    if target == "storage":
        blobs["0"] = _mutate(blobs["0"], how, spots)
    if legacy:
        import pickle
        used = [s for s in case["storages"] if _uses(case["tree"], case["storages"].index(s))]
        parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(LEGACY_PROTOCOL, 2), pickle.dumps({}, 2), pkl,
                 pickle.dumps([s["key"] for s in used], 2)]
        parts += [s["numel"].to_bytes(8, "little") + blobs[s["key"]] for s in used]
        path.write_bytes(b"".join(parts))
    else:
        write_zip(path, pkl, blobs, byteorder="big" if case["big_endian"] else "little")
    if target == "file":
        path.write_bytes(_mutate(path.read_bytes(), how, spots))
    return path


def _mutate(data, how, spots):
    """``data`` cut at the first spot, or with a bit flipped at each spot ((fraction, bit) pairs)."""
    if how == "truncate":
        return data[:int(spots[0][0] * len(data))]
    data = bytearray(data)
    for where, bit in spots:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
    return bytes(data)


def _swap(s):
    code = CODES[STORAGE_DTYPES[s["kind"]]]
    return np.frombuffer(s["blob"], "<" + code).astype(">" + code).tobytes()


def _uses(node, index):
    kind, value = node
    if kind == "tensor":
        return value["storage"] == index
    if kind in ("list", "tuple"):
        return any(_uses(v, index) for v in value)
    if kind in ("dict", "odict"):
        return any(_uses(v, index) for _, v in value)
    return False


# ---------------------------------------------------------------- the reference
class Expect(Exception):
    """The reference's prediction that the load fails with error ``args[0]``."""


def expected(case, budget):
    """Digests of the arrays load_torch must return (in walk order), or Expect(error name)."""
    for t in _all_tensors(case["tree"]):  # every tensor the pickle builds is checked as it is built
        if not all(0 <= v < 2**62 for v in [t["offset"], *t["size"], *t["stride"]]):
            raise Expect("FileFormatError")
    out = []
    _walk(case["tree"], case, budget, out, 0)
    return out


def _all_tensors(node):
    kind, value = node
    if kind == "tensor":
        yield value
    elif kind in ("list", "tuple"):
        for v in value:
            yield from _all_tensors(v)
    elif kind in ("dict", "odict"):
        for _, v in value:
            yield from _all_tensors(v)


def _walk(node, case, budget, out, depth):
    kind, value = node
    if depth > 100:
        raise Expect("LimitExceededError")
    if kind == "tensor":
        out.append(_tensor(value, case, budget))
    elif kind in ("list", "tuple"):
        for v in value:
            _walk(v, case, budget, out, depth + 1)
    elif kind in ("dict", "odict"):
        for _, v in dict(value).items() if kind == "dict" else _odict_items(value):
            _walk(v, case, budget, out, depth + 1)


def _odict_items(pairs):
    seen = {}
    for k, v in pairs:
        seen[k] = v
    return seen.items()


def _tensor(t, case, budget):
    s = case["storages"][t["storage"]]
    name = t["v3"] or STORAGE_DTYPES[s["kind"]]
    stored = np.dtype((">" if case["big_endian"] else "<") + CODES[name])
    blob = _swap(s) if case["big_endian"] else s["blob"]
    elems = np.frombuffer(blob[:len(blob) // stored.itemsize * stored.itemsize], stored)
    out_item = 4 if name == "bfloat16" else stored.itemsize
    count = int(np.prod(t["size"], dtype=object)) if t["size"] else 1
    if count * out_item > budget:
        raise Expect("LimitExceededError")
    if count == 0:
        try:
            arr = np.zeros(t["size"], stored)
        except ValueError:  # e.g. (0, 2**20, 2**40): NumPy's size limit
            raise Expect("FileFormatError") from None
    else:
        last = t["offset"] + sum((n - 1) * st_ for n, st_ in zip(t["size"], t["stride"]))
        if last >= elems.size:
            raise Expect("FileFormatError")
        arr = np.lib.stride_tricks.as_strided(elems[t["offset"]:], t["size"],
                                              [v * stored.itemsize for v in t["stride"]])
    arr = np.array(arr, order="C").astype(stored.newbyteorder("="))
    if name == "bfloat16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif name == "bool":
        arr = arr != 0
    if t["flags"] == "conj" and arr.dtype.kind == "c":
        arr = np.conj(arr)
    elif t["flags"] == "neg" and arr.dtype.kind == "b":
        raise Expect("FileFormatError")
    elif t["flags"] == "neg":
        arr = -arr
    return [list(arr.shape), arr.dtype.str, hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()]


# ---------------------------------------------------------------- the property
@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


RAN = []


@seed(int(SEED or 0))
@settings(max_examples=CASES, derandomize=SEED is None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_hostile_checkpoints_load_or_fail_as_documented(worker, folder, case):
    path = file_bytes(case, folder / "case.pt")
    assert path.stat().st_size < MAX_FILE
    budget = FACTOR * path.stat().st_size + FLOOR
    got = worker.load(path, budget)
    RAN.append(1)
    assert "bad" not in got, got["bad"]
    if case["hostile"] or case["mutation"]:
        return
    try:
        want = expected(case, budget)
    except Expect as e:
        assert got.get("error") == e.args[0], f"expected {e.args[0]}, got {got}"
        return
    assert got.get("ok") == want, f"{got} != reference {want}"


def test_fuzz_ran_the_cases():
    print(f"\nfuzz: {len(RAN)} hostile checkpoints loaded in a capped subprocess, none crashed")
    assert len(RAN) >= CASES // 2, "hypothesis ran fewer cases than asked"
