"""load_torch: both checkpoint formats, the restricted unpickler, corrupt input.

Checkpoints are crafted here without torch (tests/torch_files.py: a pickler that
writes any global by name, raw opcodes), and, where torch is installed, written
by torch.save and compared with torch.load.  The attacks of issue 17 each have a
test below; those that can crash or exhaust memory run in a subprocess with its
address space capped.
"""
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from minicnn.errors import FileFormatError, LimitExceededError, UnsafeFileError
from minicnn.io import UnsafePickleError, check_hash_prefix, load_torch, sha256sum
from minicnn.io.torch_load import LEGACY_MAGIC, LEGACY_PROTOCOL
from torch_files import (
    BUILD, D, FALSE, GET, I, L, PID, PROTO, PUT, STOP, TENSOR, WRITERS, Call, G, Ref, S, Storage, T,
    deflate_zeros, raw_zip, tensor, write_legacy, write_zip)

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "cifar10-resnet"
RESNETS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th",
           44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}
needs_weights = pytest.mark.skipif(not WEIGHTS.is_dir(), reason="shared weights not present")


# ---------------------------------------------------------------- crafted, torch-free
@pytest.mark.parametrize("fmt", WRITERS)
def test_strided_views_and_shared_storage(tmp_path, fmt):
    base = np.arange(24, dtype="<f4")
    s = Storage("0", 24)
    obj = {"t": tensor(s, 0, (3, 4), (1, 3)),           # transpose of a (4, 3) block
           "sliced": tensor(s, 5, (2, 3), (8, 2)),       # offset, gaps
           "expanded": tensor(s, 7, (2, 3), (0, 1)),     # stride 0
           "scalar": tensor(s, 23, (), ()),
           "empty": tensor(s, 0, (0, 5), (5, 1)),
           "nested": [(tensor(s, 0, (2,), (1,)), "x"), OrderedDict(a=1.5)]}
    got = load_torch(WRITERS[fmt](tmp_path / "c.pt", obj, {"0": base.tobytes()}))
    np.testing.assert_array_equal(got["t"], base[:12].reshape(4, 3).T)
    np.testing.assert_array_equal(got["sliced"], [[5, 7, 9], [13, 15, 17]])
    np.testing.assert_array_equal(got["expanded"], np.broadcast_to(base[7:10], (2, 3)))
    assert got["scalar"].shape == () and got["scalar"] == 23
    assert got["empty"].shape == (0, 5)
    np.testing.assert_array_equal(got["nested"][0][0], [0, 1])
    assert got["nested"][0][1] == "x" and got["nested"][1] == {"a": 1.5}
    for arr in (got["t"], got["sliced"], got["expanded"]):
        assert arr.flags.writeable and arr.flags.aligned and arr.dtype == np.float32
        assert np.shares_memory(arr, got["t"])  # views of one storage, as in torch
    got["t"][1, 2] = 99  # storage element 7
    assert got["nested"][0][0][0] == 0 and (got["expanded"][:, 0] == 99).all()


@pytest.mark.parametrize("fmt", WRITERS)
def test_bfloat16_bool_and_v3_dtypes(tmp_path, fmt):
    f32 = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype("<u2")
    obj = {"bf": tensor(Storage("0", 4, "BFloat16Storage"), 0, (4,), (1,)),
           "flags": tensor(Storage("1", 3, "BoolStorage"), 0, (3,), (1,)),
           "u16": tensor(Storage("2", 6, "UntypedStorage"), 0, (3,), (1,), v3_dtype="uint16")}
    blobs = {"0": bf16.tobytes(), "1": bytes([1, 0, 1]), "2": np.array([1, 2, 60000], "<u2").tobytes()}
    numels = {"0": 4, "1": 3, "2": 6}
    path = tmp_path / "c.pt"
    if fmt == "zip":
        write_zip(path, obj, blobs)
    else:
        write_legacy(path, obj, blobs, numels)
    got = load_torch(path)
    assert got["bf"].dtype == np.float32 and np.array_equal(got["bf"], f32)
    assert got["flags"].dtype == np.bool_ and got["flags"].tolist() == [True, False, True]
    assert got["u16"].dtype == np.uint16 and got["u16"].tolist() == [1, 2, 60000]


def test_big_endian_zip(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 1e30]])
    obj = {"d": tensor(Storage("0", 4, "DoubleStorage"), 0, (2, 2), (2, 1)),
           "i": tensor(Storage("1", 2, "IntStorage"), 0, (2,), (1,))}
    blobs = {"0": values.astype(">f8").tobytes(), "1": np.array([-7, 2**30], ">i4").tobytes()}
    got = load_torch(write_zip(tmp_path / "be.pt", obj, blobs, byteorder="big"))
    assert got["d"].dtype == np.float64 and got["d"].dtype.isnative
    np.testing.assert_array_equal(got["d"], values)
    assert got["i"].tolist() == [-7, 2**30]


def test_legacy_storage_view(tmp_path):
    # Pre-0.4 checkpoints address a slice of a root storage: (view_key, offset, numel).
    root = np.arange(10, dtype="<f4")
    obj = {"v": tensor(Storage("r", 10, view=("v0", 4, 3)), 1, (2,), (1,))}
    got = load_torch(write_legacy(tmp_path / "v.pt", obj, {"r": root.tobytes()}))
    np.testing.assert_array_equal(got["v"], [5, 6])


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("size, stride, offset", [
    ((3, 4), (4, 1), 1),      # one element past the end
    ((100,), (1,), 0),
    ((2, 2), (1000, 1), 0),
    ((2,), (-1,), 1),         # negative stride
    ((2, 2), (1,), 0),        # rank mismatch
    ((2,), (1,), -1),
])
def test_out_of_bounds_geometry_is_refused(tmp_path, fmt, size, stride, offset):
    obj = {"t": tensor(Storage("0", 12), offset, size, stride)}
    path = WRITERS[fmt](tmp_path / "oob.pt", obj, {"0": np.zeros(12, "<f4").tobytes()})
    with pytest.raises(ValueError, match="oob.pt"):
        load_torch(path)


# ---------------------------------------------------------------- malicious
class SystemCall:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _evil_payloads(marker):
    cmd = f"touch {marker}"
    return {
        "top": SystemCall(cmd),
        "inside_tensor_args": {"w": tensor(Storage("0", 1), 0, (1,), (1,)), "hook": SystemCall(cmd)},
        "eval": Call(Ref("builtins.eval"), f"open({str(marker)!r}, 'w')"),
        "py2_eval": Call(Ref("__builtin__.eval"), f"open({str(marker)!r}, 'w')"),
        "getattr": Call(Ref("builtins.getattr"), Ref("builtins.object"), "__subclasses__"),
        "torch_load": Call(Ref("torch.load"), "x"),
    }


def _refused_name(case):
    return {"top": r"(os|posix)\.system", "inside_tensor_args": r"(os|posix)\.system",
            "eval": r"builtins\.eval", "py2_eval": r"builtins\.eval",
            "getattr": r"builtins\.getattr", "torch_load": r"torch\.load"}[case]


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("case", ["top", "inside_tensor_args", "eval", "py2_eval", "getattr", "torch_load"])
def test_malicious_pickle_is_refused_not_run(tmp_path, fmt, case):
    marker = tmp_path / "pwned"
    payload = _evil_payloads(marker)[case]
    path = WRITERS[fmt](tmp_path / "evil.pt", payload, {"0": np.zeros(1, "<f4").tobytes()})
    with pytest.raises(UnsafePickleError, match=_refused_name(case)) as info:
        load_torch(path)
    assert "evil.pt" in str(info.value) and "refusing" in str(info.value)
    assert not marker.exists()


def test_malicious_header_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(SystemCall(f"touch {marker}"), 2)
    for position in range(3):  # magic number, protocol version, sys_info
        parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(LEGACY_PROTOCOL, 2), pickle.dumps({}, 2)]
        parts[position] = evil
        path = tmp_path / f"evil{position}.pt"
        path.write_bytes(b"".join(parts))
        with pytest.raises(UnsafePickleError, match=r"(os|posix)\.system"):
            load_torch(path)
    assert not marker.exists()


@pytest.mark.parametrize("target, state", [
    ("torch.FloatStorage", {"dtype": "int64"}),
    ("torch.FloatStorage", (None, {"dtype": "int64"})),
    ("torch._utils._rebuild_tensor_v2", (None, {"__defaults__": ("x",)})),
    ("collections.OrderedDict", {"update": 1}),
])
def test_globals_cannot_be_altered_for_later_loads(tmp_path, target, state):
    # GLOBAL target; <state>; BUILD: pickle would set attributes on the shared global itself.
    module, name = target.rsplit(".", 1)
    pkl = (pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode()
           + pickle.dumps(state, 2)[2:-1] + pickle.BUILD + pickle.STOP)
    evil = tmp_path / "tamper.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pkl)
    with pytest.raises((UnsafePickleError, ValueError), match="tamper.pt"):
        load_torch(evil)
    obj = {"w": tensor(Storage("0", 2), 0, (2,), (1,))}
    got = load_torch(write_zip(tmp_path / "after.pt", obj, {"0": np.array([1.5, 2], "<f4").tobytes()}))
    assert got["w"].dtype == np.float32 and got["w"].tolist() == [1.5, 2.0]


# ---------------------------------------------------------------- corrupt / not a checkpoint
def _good_file(tmp_path, fmt):
    obj = {"a": tensor(Storage("0", 64), 0, (8, 8), (8, 1)), "b": [1, 2, 3]}
    return WRITERS[fmt](tmp_path / f"good-{fmt}.pt", obj, {"0": np.ones(64, "<f4").tobytes()})


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_truncated_files(tmp_path, fmt, keep):
    data = _good_file(tmp_path, fmt).read_bytes()
    n = len(data) - 1 if keep == -1 else int(len(data) * keep)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"cut\.pt: .*(truncated|corrupt)"):
        load_torch(cut)


def test_zip_missing_storage_and_bad_byteorder(tmp_path):
    obj = {"a": tensor(Storage("0", 4), 0, (4,), (1,))}
    with pytest.raises(ValueError, match="missing from the archive"):
        load_torch(write_zip(tmp_path / "m.pt", obj, {}))
    with pytest.raises(ValueError, match="byteorder"):
        load_torch(write_zip(tmp_path / "b.pt", obj, {"0": bytes(16)}, byteorder="middle"))
    with pytest.raises(ValueError, match="holds 15 bytes, its id says 4 float32"):
        load_torch(write_zip(tmp_path / "s.pt", obj, {"0": bytes(15)}))


def test_legacy_storage_count_mismatch(tmp_path):
    obj = {"a": tensor(Storage("0", 4), 0, (4,), (1,))}
    with pytest.raises(ValueError, match="holds 5 elements"):
        load_torch(write_legacy(tmp_path / "n.pt", obj, {"0": bytes(16)}, numels={"0": 5}))
    with pytest.raises(ValueError, match="key list"):
        load_torch(write_legacy(tmp_path / "k.pt", obj, {"0": bytes(16)}, keys=["0", "1"]))


@pytest.mark.parametrize("content", [b"", b"hello, world\n", b"\x89PNG\r\n\x1a\n" + bytes(40),
                                     pickle.dumps({"w": [1.0, 2.0]}, 2), pickle.dumps([1], 4)])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"x\.bin: .*(not a PyTorch checkpoint|not a torch\.save)"):
        load_torch(path)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="data.pkl"):
        load_torch(path)


# ---------------------------------------------------------------- real checkpoints
@needs_weights
@pytest.mark.parametrize("depth", sorted(RESNETS))
def test_cifar_resnet_checkpoints(depth):
    path = WEIGHTS / RESNETS[depth]
    ckpt = load_torch(path, check_hash=True)
    assert set(ckpt) == {"state_dict", "best_prec1"} and 90 < ckpt["best_prec1"] < 95
    sd = ckpt["state_dict"]
    n = (depth - 2) // 6  # blocks per stage
    assert len(sd) == 5 + 3 * n * 10 + 2
    assert all(k.startswith("module.") for k in sd)
    assert sd["module.conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["module.linear.weight"].shape == (10, 64) and sd["module.linear.bias"].shape == (10,)
    assert sd[f"module.layer3.{n - 1}.conv2.weight"].shape == (64, 64, 3, 3)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in sd.values())
    assert (sd["module.bn1.running_var"] > 0).all()


@needs_weights
def test_hash_prefix(tmp_path):
    src = WEIGHTS / RESNETS[20]
    assert sha256sum(src).startswith("12fca82f") and check_hash_prefix(src) == sha256sum(src)
    wrong = tmp_path / "resnet20-12fca820.th"
    wrong.write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="does not start with 12fca820"):
        load_torch(wrong, check_hash=True)
    unnamed = tmp_path / "resnet20.th"
    unnamed.write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="no '-<sha256 prefix>"):
        check_hash_prefix(unnamed)


@needs_weights
def test_load_does_not_import_torch():
    code = ("import sys, minicnn.io as io; io.load_torch(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code, str(WEIGHTS / RESNETS[20])], check=True, env=env)


# ---------------------------------------------------------------- against torch
def _assert_same(ours, ref, torch, where="root"):
    if isinstance(ref, torch.Tensor):
        expect = ref.detach().resolve_conj().resolve_neg()
        expect = (expect.float() if expect.dtype == torch.bfloat16 else expect).numpy()
        assert isinstance(ours, np.ndarray), where
        assert ours.dtype == expect.dtype and ours.shape == expect.shape, where
        if ref.dtype != torch.bfloat16 and not ref.is_conj() and not ref.is_neg() and ref.numel():
            # views of their storage, as in torch
            assert ours.strides == tuple(s * ours.itemsize for s in ref.stride()), where
        np.testing.assert_array_equal(ours, expect, err_msg=where)
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref), where
        for k in ref:
            _assert_same(ours[k], ref[k], torch, f"{where}.{k}")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same(a, b, torch, f"{where}[{i}]")
    else:
        assert ours == ref and type(ours) is type(ref), where


def _torch_objects(torch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g)
    dtypes = {}
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
               torch.int16, torch.int32, torch.int64, torch.uint8, torch.complex64):
        dtypes[str(dt)] = (x * 20).to(dt)
    dtypes["bool"] = x > 0
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, 2))
    net(torch.randn(2, 3, 6, 6, generator=g)).sum().backward()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    tagged = torch.arange(4.0)
    tagged.note = "python attribute, dropped"
    return {
        "dtypes": dtypes,
        "views": {"t": x.t(), "cols": x[:, 1::2], "rows": x[2:4], "expand": x[0:1].expand(3, 5),
                  "scalar": x[1, 2], "empty": x[:0], "same_storage_again": x,
                  "conj": (x[:2] * 1j).to(torch.complex64).conj()},
        "model": net.state_dict(),
        "params": list(net.parameters()),
        "optimizer": opt.state_dict(),
        "tagged": tagged,
        "meta": ("epoch", 3, 0.5, None, True, b"bytes", {1, 2}),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_matches_torch_load(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    obj = _torch_objects(torch)
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert zipfile.is_zipfile(path) != legacy
    ref = torch.load(path, weights_only=False)
    del ref["tagged"].note
    _assert_same(load_torch(path), ref, torch)


def test_uint16_matches_torch_load(tmp_path):
    torch = pytest.importorskip("torch")  # uint16 is a v3 dtype, untyped storage (zip only)
    t = torch.tensor([[0, 1, 65535], [7, 8, 9]], dtype=torch.int32).to(torch.uint16)[:, 1:]
    torch.save({"u": t}, tmp_path / "u.pt")
    got = load_torch(tmp_path / "u.pt")["u"]
    assert got.dtype == np.uint16 and got.tolist() == [[1, 65535], [8, 9]]


@needs_weights
def test_cifar_resnet_matches_torch_load():
    torch = pytest.importorskip("torch")
    path = WEIGHTS / RESNETS[56]
    _assert_same(load_torch(path), torch.load(path, map_location="cpu", weights_only=True), torch)


# ---------------------------------------------------------------- issue 17: attacks
# Attacks that crashed or exhausted memory run together in one fresh process whose
# address space is capped at what it holds after import + 384 MiB; it prints one line per
# file as it goes, so a crash shows as the missing lines from that file on.
ROOT = Path(__file__).resolve().parents[1]
CAPPED = """
import resource, sys
from minicnn.io import load_torch
vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))
resource.setrlimit(resource.RLIMIT_AS, (vm + (384 << 20), vm + (384 << 20)))
for path in sys.argv[1:]:
    try:
        out = 'OK ' + type(load_torch(path)).__name__
    except Exception as e:
        out = type(e).__name__ + ' | ' + ' '.join(str(e).split())[:300]
    print(path, out, sep='\\t', flush=True)
"""
HOSTILE = {}  # file name -> function(path) writing it


def hostile(name):
    def register(write):
        HOSTILE[name] = write
        return write
    return register


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """file name -> (path, 'OK type' or 'ErrorType | message') for every HOSTILE file."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {name: write(folder / name) for name, write in HOSTILE.items()}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", CAPPED, *map(str, paths.values())], capture_output=True,
                         text=True, env=env, timeout=600)
    outs = dict(line.split("\t", 1) for line in run.stdout.splitlines())
    crashed = f"no result: the process ended with {run.returncode} ({run.stderr[-300:]})"
    return {name: (path, outs.get(str(path), crashed)) for name, path in paths.items()}


def zip_of(path, pkl, blobs=None):
    return write_zip(path, PROTO + pkl + STOP, blobs or {})


def test_error_classes_are_one_family():
    assert issubclass(UnsafePickleError, UnsafeFileError) and issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert issubclass(UnsafeFileError, FileFormatError) and issubclass(LimitExceededError, FileFormatError)
    assert issubclass(FileFormatError, ValueError)


@hostile("seg.pt")
def _segfault(path):
    # The 665-byte segfault: BUILD makes storage 1's buffer the 8x8 tensor decoded before it;
    # the old bounds check counted elements, the slice took rows, as_strided read past the end.
    w2d = TENSOR(PID("0", 64), 0, (8, 8), (8, 1)) + PUT(1)
    evil = TENSOR(PID("1", 4) + D((S("raw"), GET(1))) + BUILD, 7, (57,), (1,))
    return zip_of(path, D((S("w"), w2d), (S("evil"), evil)), {"0": np.zeros(64, "<f4").tobytes(), "1": bytes(16)})


def test_build_on_a_storage_cannot_point_it_at_other_memory(capped):
    path, out = capped["seg.pt"]
    assert path.stat().st_size < 1200
    assert out.startswith("UnsafePickleError | ") and "seg.pt" in out, out
    assert "BUILD" in out and "StorageRef" in out


@pytest.mark.parametrize("fmt, state", [("legacy", False), ("zip", True)])
def test_build_cannot_flip_a_storage_between_deferred_and_ready(tmp_path, fmt, state):
    # legacy: 'later' cleared, a tensor came back as a copy of uninitialised np.empty memory;
    # zip: 'later' set, the internal deferred record came back in place of a tensor.
    storage = PID("0", 256, legacy=fmt == "legacy") + D((S("later"), b"\x88" if state else FALSE)) + BUILD
    pkl = PROTO + D((S("t"), TENSOR(storage, 0, (256,), (1,)))) + STOP
    path = WRITERS[fmt](tmp_path / "flip.pt", pkl, {"0": np.full(256, 7, "<f4").tobytes()})
    with pytest.raises(UnsafePickleError, match=r"flip\.pt: refusing BUILD"):
        load_torch(path)


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("state", [{"raw": 5}, {"dtype": "float64"}, {"args": 1}])
def test_build_on_internal_records_is_refused_not_an_attribute_error(tmp_path, fmt, state):
    storage = PID("0", 4, legacy=fmt == "legacy") + D(*[(S(k), I(v) if type(v) is int else S(v))
                                                        for k, v in state.items()]) + BUILD
    pkl = PROTO + D((S("t"), TENSOR(storage, 0, (4,), (1,)))) + STOP
    path = WRITERS[fmt](tmp_path / "attr.pt", pkl, {"0": bytes(16)})
    with pytest.raises(UnsafePickleError, match=r"attr\.pt: refusing BUILD"):
        load_torch(path)
    tensor_then_build = PROTO + TENSOR(PID("0", 4, legacy=fmt == "legacy"), 0, (4,), (1,)) + D() + BUILD + STOP
    got = load_torch(WRITERS[fmt](tmp_path / "ok.pt", tensor_then_build, {"0": bytes(16)}))
    assert got.shape == (4,)  # state on a tensor (Python attributes) is dropped, as documented


WIDE = {"1.6GB": (20000, 20000), "18.6GB": (50000, 100000)}
for _fmt in WRITERS:
    for _name, _size in WIDE.items():
        # 388 bytes asked for 1.6 GB (another geometry 18.6 GB) by copying a broadcast view
        hostile(f"wide-{_name}-{_fmt}.pt")(
            lambda path, fmt=_fmt, size=_size: WRITERS[fmt](path, PROTO + D((S("t"), TENSOR(
                PID("0", 1, legacy=fmt == "legacy"), 0, size, (0, 0)))) + STOP, {"0": bytes(4)}))


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("name", WIDE)
def test_stride0_view_of_huge_shape_is_refused_within_the_budget(capped, fmt, name):
    path, out = capped[f"wide-{name}-{fmt}.pt"]
    assert path.stat().st_size < 700
    assert out.startswith("LimitExceededError | ") and path.name in out, out
    assert f"spans {4 * WIDE[name][0] * WIDE[name][1]:,} bytes" in out


BOMB = 1536 << 20


def _bomb(path, member, honest):
    # 1.5 MB of deflate that inflates to 1.5 GB: declared (refused by the budget before any
    # allocation) or disguised as a small member (stopped at its declared size).
    numel = BOMB // 4 if honest and member == "data/0" else 4
    pkl = PROTO + D((S("t"), TENSOR(PID("0", numel), 0, (4,), (1,)))) + STOP
    members = {"archive/data.pkl": (pkl, len(pkl), zipfile.ZIP_STORED),
               "archive/data/0": (bytes(16), 16, zipfile.ZIP_STORED)}
    members[f"archive/{member}"] = (deflate_zeros(BOMB), BOMB if honest else members[f"archive/{member}"][1],
                                    zipfile.ZIP_DEFLATED)
    return raw_zip(path, [(n, *m) for n, m in members.items()])


for _member in ("pkl", "storage"):
    for _honest in ("declared", "lying"):
        hostile(f"bomb-{_member}-{_honest}.pt")(
            lambda path, m=_member, h=_honest: _bomb(path, "data.pkl" if m == "pkl" else "data/0", h == "declared"))


@pytest.mark.parametrize("member", ["pkl", "storage"])
@pytest.mark.parametrize("honest", ["declared", "lying"])
def test_zip_bombs_stop_at_the_limit(capped, member, honest):
    path, out = capped[f"bomb-{member}-{honest}.pt"]
    assert path.stat().st_size < 2 << 20 and path.name in out, out
    if honest == "declared":
        assert out.startswith("LimitExceededError | ") and f"needs {BOMB:,} bytes" in out
    else:  # zipfile itself stops at the declared size (and finds the CRC wrong)
        assert out.startswith("FileFormatError | ") and ("holds more than the" in out or "Bad CRC-32" in out)


def test_tensors_sharing_a_storage_are_views_not_copies(tmp_path):
    # 300 tensors on one storage took 300 copies (1.3 GB for a 4 MB storage); torch keeps views
    import tracemalloc
    n = 1 << 18
    # the storage id is written once, then fetched from the memo (as torch.save writes it)
    ts = [(S(f"t{i}"), TENSOR(PID("0", n) + PUT(7) if i == 0 else GET(7), i, (n - 300,), (1,)))
          for i in range(300)]
    path = zip_of(tmp_path / "shared.pt", D(*ts), {"0": np.arange(n, dtype="<f4").tobytes()})
    tracemalloc.start()
    try:
        got = load_torch(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got) == 300 and all(np.shares_memory(got["t0"], v) for v in got.values())
    assert got["t299"][0] == 299 and got["t5"][-1] == n - 300 + 4
    assert peak < 3 * 4 * n, f"peak {peak:,} bytes for a {4 * n:,}-byte storage"


def _nested_lists(depth):
    return b"]" * depth + b"a" * (depth - 1)


def _nested_dicts(depth):
    return (b"}" + S("k")) * depth + b"N" + b"s" * depth


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("shape", ["lists", "dicts", "tuples"])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, fmt, shape):
    depth = 5000  # past Python's recursion limit
    body = {"lists": _nested_lists(depth), "dicts": _nested_dicts(depth),
            "tuples": b")" + b"\x85" * depth}[shape]
    path = WRITERS[fmt](tmp_path / "deep.pt", PROTO + body + STOP, {})
    with pytest.raises(LimitExceededError, match=r"deep\.pt: containers nested more than 100 deep"):
        load_torch(path)
    shallow = PROTO + {"lists": _nested_lists(50), "dicts": _nested_dicts(50),
                       "tuples": b")" + b"\x85" * 50}[shape] + STOP
    assert load_torch(WRITERS[fmt](tmp_path / "ok.pt", shallow, {})) is not None


# hashing a tuple nested a million deep recurses in C without a guard (the old reader: SIGSEGV)
hostile("key.pt")(lambda path: zip_of(path, b"}" + b")" + b"\x85" * 1_000_000 + b"N" + b"s"))
# LONG_BINPUT 2**31: the C unpickler grows its memo array to twice the index (32 GiB)
hostile("memo.pt")(lambda path: zip_of(path, b"N" + PUT(2**31 - 1) + b"0" + GET(2**31 - 1)))


def test_deep_tuple_as_a_dict_key_is_refused_before_hashing(capped):
    path, out = capped["key.pt"]
    assert out.startswith("FileFormatError | ") and "dict key of type tuple" in out, out


def test_memo_index_cannot_allocate(capped):
    assert capped["memo.pt"][1] == "OK NoneType"


@pytest.mark.parametrize("fmt", WRITERS)
def test_budget_and_max_bytes(tmp_path, fmt):
    pkl = PROTO + D((S("w"), TENSOR(PID("0", 1024, legacy=fmt == "legacy"), 0, (32, 32), (32, 1)))) + STOP
    path = WRITERS[fmt](tmp_path / "w.pt", pkl, {"0": np.ones(1024, "<f4").tobytes()})
    with pytest.raises(LimitExceededError, match=r"w\.pt: .* over the memory budget of 2,000 bytes"):
        load_torch(path, max_bytes=2000)
    assert load_torch(path, max_bytes=1 << 20)["w"].sum() == 1024


@pytest.mark.parametrize("make", ["deep", "attr", "wide", "list", "intkey"])
def test_cli_convert_prints_one_line_never_a_traceback(tmp_path, capsys, make):
    from minicnn.cli import main
    files = {
        "deep": (PROTO + _nested_lists(5000) + STOP, {}),
        "attr": (PROTO + TENSOR(PID("0", 4) + D((S("raw"), I(5))) + BUILD, 0, (4,), (1,)) + STOP, {"0": bytes(16)}),
        "wide": (PROTO + D((S("t"), TENSOR(PID("0", 1), 0, (20000, 20000), (0, 0)))) + STOP, {"0": bytes(4)}),
        "list": (PROTO + L(TENSOR(PID("0", 1), 0, (1,), (1,))) + STOP, {"0": bytes(4)}),
        # loads, but trips the converter (an AttributeError there): still one line
        "intkey": (PROTO + b"}" + I(3) + TENSOR(PID("0", 1), 0, (1,), (1,)) + b"s" + STOP, {"0": bytes(4)}),
    }
    src = write_zip(tmp_path / "bad.pth", *files[make])
    assert main(["convert", str(src), str(tmp_path / "out.npz"), "--arch", "resnet20"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    if make != "intkey":
        assert err.startswith("minicnn convert: error: ") and "bad.pth" in err, err
    assert not (tmp_path / "out.npz").exists()


def test_cli_entry_point_one_line(tmp_path):
    src = write_zip(tmp_path / "bad.pth", PROTO + _nested_lists(5000) + STOP, {})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "minicnn", "convert", str(src), str(tmp_path / "o.npz"),
                          "--arch", "resnet20"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "nested more than 100 deep" in out.stderr


@pytest.mark.parametrize("fmt", WRITERS)
def test_neg_and_conj_bits_keep_zero_dim_tensors_arrays(tmp_path, fmt):
    # found by the fuzzer: np.conj of a 0-d array returned a NumPy scalar, not an array
    def bit(kind, flag, value):
        meta = D((S(flag), b"\x88"))
        return G("torch._utils", "_rebuild_tensor_v2") + T(
            PID(flag, 1, kind, legacy=fmt == "legacy"), I(0), T(), T(), FALSE,
            G("collections", "OrderedDict") + b")R", meta) + b"R"
    pkl = PROTO + D((S("c"), bit("ComplexFloatStorage", "conj", 0)), (S("n"), bit("FloatStorage", "neg", 0))) + STOP
    blobs = {"conj": np.array([1 + 2j], "<c8").tobytes(), "neg": np.array([3], "<f4").tobytes()}
    got = load_torch(WRITERS[fmt](tmp_path / "bits.pt", pkl, blobs) if fmt == "zip" else
                     write_legacy(tmp_path / "bits.pt", pkl, blobs, numels={"conj": 1, "neg": 1}))
    assert type(got["c"]) is np.ndarray and got["c"].shape == () and got["c"] == 1 - 2j
    assert type(got["n"]) is np.ndarray and got["n"].shape == () and got["n"] == -3


@pytest.mark.parametrize("n", [0, 2])
def test_neg_bit_on_a_bool_tensor_is_refused(tmp_path, n):
    # found by the fuzzer: NumPy cannot negate bools (TypeError), and the empty case used to load
    pkl = PROTO + G("torch._utils", "_rebuild_tensor_v2") + T(
        PID("0", n, "BoolStorage"), I(0), T(I(n)), T(I(1)), FALSE,
        G("collections", "OrderedDict") + b")R", D((S("neg"), b"\x88"))) + b"R" + STOP
    with pytest.raises(FileFormatError, match=r"negb\.pt: .* neg bit"):
        load_torch(write_zip(tmp_path / "negb.pt", pkl, {"0": bytes(n)}))


def test_empty_tensor_whose_other_dims_overflow_numpy_is_refused(tmp_path):
    # found by the fuzzer: np.zeros((0, 2**20, 2**40), complex64) raised a bare ValueError
    pkl = PROTO + D((S("t"), TENSOR(PID("0", 0), 0, (0, 2**20, 2**40), (0, 0, 0), dtype="complex64"))) + STOP
    with pytest.raises(FileFormatError, match=r"huge\.pt: .* an empty shape NumPy cannot represent"):
        load_torch(write_zip(tmp_path / "huge.pt", pkl, {"0": b""}))
