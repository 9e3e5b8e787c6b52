"""load_torch: both checkpoint formats, the restricted unpickler, corrupt input.

Checkpoints are crafted here without torch (a pickler that writes any global
by name), and, where torch is installed, written by torch.save and compared
with torch.load.
"""
import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from minicnn.io import UnsafePickleError, check_hash_prefix, load_torch, sha256sum
from minicnn.io.torch_load import LEGACY_MAGIC, LEGACY_PROTOCOL

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "cifar10-resnet"
RESNETS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th",
           44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}
needs_weights = pytest.mark.skipif(not WEIGHTS.is_dir(), reason="shared weights not present")


# ---------------------------------------------------------------- crafting
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
    buf = io.BytesIO()
    CraftPickler(buf, legacy).dump(obj)
    return buf.getvalue()


def tensor(storage, offset, size, stride, v3_dtype=None):
    if v3_dtype:
        return Call(Ref("torch._utils._rebuild_tensor_v3"), storage, offset, size, stride, False,
                    Call(Ref("collections.OrderedDict")), Ref(f"torch.{v3_dtype}"))
    return Call(Ref("torch._utils._rebuild_tensor_v2"), storage, offset, size, stride, False,
                Call(Ref("collections.OrderedDict")))


def write_zip(path, obj, blobs, byteorder="little"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", craft_pickle(obj))
        z.writestr("archive/byteorder", byteorder)
        for key, blob in blobs.items():
            z.writestr(f"archive/data/{key}", blob)
    return path


def write_legacy(path, obj, blobs, numels=None, keys=None):
    header = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(LEGACY_PROTOCOL, 2),
              pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2)]
    body = [craft_pickle(obj, legacy=True), pickle.dumps(list(keys or blobs), 2)]
    for key, blob in blobs.items():
        numel = (numels or {}).get(key, len(blob) // 4)
        body.append(numel.to_bytes(8, "little") + blob)
    Path(path).write_bytes(b"".join(header + body))
    return path


WRITERS = {"zip": write_zip, "legacy": write_legacy}


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
        assert arr.flags.c_contiguous and arr.flags.writeable and arr.dtype == np.float32
    got["t"][0, 0] = 99  # copies, not views of one shared buffer
    assert got["nested"][0][0][0] == 0 and got["expanded"][0, 0] == 7


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
    with pytest.raises(ValueError, match="truncated storage"):
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
        assert ours.flags.c_contiguous, where
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
