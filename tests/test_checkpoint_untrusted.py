"""Hostile checkpoints: every bad file is refused with a CheckpointError naming the field,
before anything (weights, optimizer, scheduler, RNG) has changed."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import nn
from minicnn.errors import FileFormatError, LimitExceededError
from minicnn.io import CheckpointError, load_model, load_state, load_training_state, save_model, save_training_state
from minicnn.optim import SGD, Adam, CosineAnnealingLR, SequentialLR, StepLR

REPO = Path(__file__).resolve().parents[1]


def small_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _trained(width=16):
    minicnn.manual_seed(1)
    net = small_net()
    opt = Adam(net.parameters(), lr=0.01)
    sched = StepLR(opt, 2, gamma=0.5)
    x = minicnn.tensor(np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32))
    for _ in range(2):
        opt.zero_grad()
        minicnn.ops.cross_entropy(net(x), np.arange(6) % 3).backward()
        opt.step()
        sched.step()
    return net, opt, sched


def _tamper(path, edit=None, arrays=None, text=None):
    """Rewrite the checkpoint at ``path``: ``edit(meta)`` changes its metadata in place
    (or returns a replacement), ``text`` rewrites its JSON text, ``arrays`` replaces or
    adds members."""
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    meta = json.loads(str(members["__meta__"]))
    if edit is not None:
        meta = edit(meta) or meta
    meta = json.dumps(meta)
    members["__meta__"] = np.array(text(meta) if text else meta)
    members.update(arrays or {})
    path.unlink()
    np.savez(path, **members)
    return path


class Snapshot:
    """Everything a load could change, to prove it did not."""

    def __init__(self, net, opt, sched):
        self.net, self.opt, self.sched = net, opt, sched
        self.weights = net.state_dict()
        self.groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        self.state = {i: {k: np.copy(v) for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}
        self.sched_state = None if sched is None else dict(sched.state_dict())
        self.rng = minicnn.random.get_state()

    def assert_unchanged(self):
        for (k, a), b in zip(self.net.state_dict().items(), self.weights.values()):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"{k} was changed"
        assert [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups] == self.groups
        state = self.opt.state_dict()["state"]
        assert state.keys() == self.state.keys()
        for i, s in state.items():
            assert s.keys() == self.state[i].keys() and all(np.array_equal(s[k], self.state[i][k]) for k in s)
        if self.sched is not None:
            assert self.sched.state_dict() == self.sched_state
        assert minicnn.random.get_state() == self.rng


def _fresh():
    minicnn.manual_seed(7)
    net = small_net()
    opt = Adam(net.parameters(), lr=0.5)
    return net, opt, StepLR(opt, 2, gamma=0.5)


@pytest.fixture
def training_file(tmp_path):
    net, opt, sched = _trained()
    return save_training_state(tmp_path / "s.npz", net, opt, sched, epoch=2, note=[1, 2])


def _load_refused(path, match):
    net, opt, sched = _fresh()
    snap = Snapshot(net, opt, sched)
    with pytest.raises(CheckpointError, match=match) as e:
        load_training_state(path, net, opt, sched)
    snap.assert_unchanged()
    assert str(path) in str(e.value) and e.value.path == path
    return e.value


def test_checkpoint_errors_are_file_format_errors():
    assert issubclass(CheckpointError, FileFormatError) and issubclass(CheckpointError, ValueError)


def test_adam_state_smaller_than_its_weight_is_refused(tmp_path):
    """The Numba Adam kernel indexes exp_avg by the weight's size: a 1-element state for a
    512x512 weight must never reach it."""
    net = nn.Sequential(nn.Linear(512, 512))
    opt = Adam(net.parameters())
    net[0].weight.grad = np.ones((512, 512), np.float32)
    net[0].bias.grad = np.ones(512, np.float32)
    opt.step()
    path = save_training_state(tmp_path / "s.npz", net, opt)
    _tamper(path, arrays={"optimizer/state/0/exp_avg": np.zeros(1, np.float32)})
    fresh = nn.Sequential(nn.Linear(512, 512))
    opt2 = Adam(fresh.parameters())
    snap = Snapshot(fresh, opt2, None)
    with pytest.raises(CheckpointError, match=r"optimizer.*exp_avg.*\(1,\).*\(512, 512\)"):
        load_training_state(path, fresh, opt2)
    snap.assert_unchanged()


def test_a_valid_file_still_loads(training_file):
    net, opt, sched = _fresh()
    assert load_training_state(training_file, net, opt, sched) == {"epoch": 2, "note": [1, 2]}
    assert sched.last_epoch == 2 and opt.param_groups[0]["lr"] == 0.005


@pytest.mark.parametrize("name, value, match", [
    ("1.weight", np.full((8, 16), "ab"), r"1\.weight.*dtype <U2"),
    ("4.bias", np.zeros(3, np.complex64), r"4\.bias.*complex"),
    ("1.bias", np.full(8, np.nan, np.float32), r"1\.bias.*not finite"),
    ("2.running_var", np.array([np.inf] * 8, np.float32), r"2\.running_var.*not finite"),
    ("2.num_batches_tracked", np.array(1.5), r"2\.num_batches_tracked.*float64.*int64"),
])
def test_bad_weight_arrays_refused_before_any_weight_changes(tmp_path, training_file, name, value, match):
    """The bad array is the last one loaded, so a loader that checks as it goes would already
    have overwritten the others."""
    _tamper(training_file, arrays={f"model/{name}": value})
    _load_refused(training_file, match)
    save_model(tmp_path / "m.npz", _trained()[0])
    _tamper(tmp_path / "m.npz", arrays={f"model/{name}": value})
    net = small_net()
    before = net.state_dict()
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "m.npz", net)
    assert all(np.array_equal(a, b) for a, b in zip(net.state_dict().values(), before.values()))


def test_module_load_state_dict_checks_dtypes_before_changing_anything():
    net = small_net()
    before = net.state_dict()
    sd = {k: np.ones_like(v) for k, v in before.items()}
    sd["4.bias"] = np.array([1 + 2j, 0, 0])
    with pytest.raises(ValueError, match=r"4\.bias.*complex128.*float32"):
        net.load_state_dict(sd)
    sd["4.bias"] = np.array([object(), 0, 0], dtype=object)
    with pytest.raises(ValueError, match=r"4\.bias.*object"):
        net.load_state_dict(sd)
    assert all(np.array_equal(a, b) for a, b in zip(net.state_dict().values(), before.values()))
    sd["4.bias"] = np.arange(3)  # integers into a float weight are fine
    net.load_state_dict(sd)
    assert net[4].bias.data.dtype == np.float32 and net[4].bias.data[2] == 2


def _set(*keys, value):
    def edit(meta):
        node = meta
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return edit


def _drop(*keys):
    def edit(meta):
        node = meta
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return edit


@pytest.mark.parametrize("edit, match", [
    (lambda m: [1, 2], r"metadata is a list"),
    (_set("version", value="1"), r"version"),
    (_set("tree", value=5), r"holds a int"),
    (_drop("tree"), r"tree"),
    (_set("tree", "model", value=[1, 2]), r"'model'.*dict"),
    (_set("tree", "model", "1.weight", value={"__array__": [1]}), r"__array__"),
    (_set("tree", "extra", value={"__tuple__": 5}), r"__tuple__"),
    (_set("tree", "architecture", value=7), r"architecture"),
    (_set("tree", "epoch", value="3"), r"epoch"),
    (_set("tree", "epoch", value=-1), r"epoch"),
    (_set("tree", "extra", value=[1]), r"extra"),
    (_set("tree", "optimizer", value="adam"), r"optimizer.*dict"),
    (_drop("tree", "optimizer", "param_groups"), r"param_groups"),
    (_set("tree", "optimizer", "param_groups", value=5), r"param_groups"),
    (_set("tree", "optimizer", "param_groups", 0, "lr", value="fast"), r"group 0.*'lr'.*'fast'"),
    (_set("tree", "optimizer", "param_groups", 0, "lr", value=None), r"group 0.*'lr'"),
    (_set("tree", "optimizer", "param_groups", 0, "lr", value=-1.0), r"learning rate must be >= 0"),
    (_set("tree", "optimizer", "param_groups", 0, "amsgrad", value=1), r"'amsgrad'.*bool"),
    (_set("tree", "optimizer", "param_groups", 0, "betas", value={"__tuple__": [0.9]}), r"'betas'"),
    (_set("tree", "optimizer", "param_groups", 0, "betas", value={"__tuple__": [0.9, 1.5]}),
     r"betas must be in \[0, 1\)"),
    (_set("tree", "optimizer", "param_groups", 0, "eps", value=float("nan")), r"'eps'.*finite"),
    (_set("tree", "optimizer", "param_groups", 0, "sneaky", value=1), r"unknown option 'sneaky'"),
    (_set("tree", "optimizer", "param_groups", 0, "params", value=[0, 1]), r"2 parameters.*6"),
    (_set("tree", "optimizer", "param_groups", 0, "params", value=["a"] * 6), r"params"),
    (_set("tree", "optimizer", "state", value=[1]), r"state"),
    (_set("tree", "optimizer", "state", "99", value={}), r"parameter '99'"),
    (_set("tree", "optimizer", "state", "x", value={}), r"'x'"),
    (_set("tree", "optimizer", "state", "0", value=5), r"state of parameter 0"),
    (_set("tree", "optimizer", "state", "0", "step", value="2"), r"parameter 0.*'step'"),
    (_set("tree", "optimizer", "state", "0", "step", value=-2), r"parameter 0.*'step'"),
    (_drop("tree", "optimizer", "state", "0", "exp_avg_sq"), r"parameter 0.*exp_avg_sq"),
    (_set("tree", "optimizer", "state", "0", "momentum_buffer", value=[0.0]), r"momentum_buffer"),
    (_set("tree", "scheduler", value=[1]), r"scheduler"),
    (_set("tree", "scheduler", "last_epoch", value="2"), r"scheduler.*last_epoch"),
    (_set("tree", "scheduler", "step_size", value=0), r"scheduler"),
    (_set("tree", "scheduler", "optimizer", value={}), r"scheduler.*optimizer"),
    (_drop("tree", "scheduler", "gamma"), r"scheduler.*gamma"),
    (_set("tree", "scheduler", "base_lrs", value=[0.01, 0.01]), r"scheduler.*base_lrs"),
    (_set("tree", "rng", value=5), r"rng"),
    (_set("tree", "rng", value='{"bit_generator": "PCG64", "state": 3}'), r"rng"),
    (_set("tree", "rng", value='{"bit_generator": "MT19937"}'), r"rng"),
    (_set("tree", "rng", value="not json"), r"rng"),
])
def test_wrong_metadata_is_named_and_changes_nothing(training_file, edit, match):
    _tamper(training_file, edit)
    _load_refused(training_file, match)


def test_bad_optimizer_arrays_change_nothing(training_file):
    for value, match in [(np.full((8, 16), "x"), r"exp_avg.*dtype"),
                         (np.full((8, 16), np.nan, np.float32), r"exp_avg.*not finite"),
                         (np.zeros((16, 8), np.float32), r"exp_avg.*\(16, 8\).*\(8, 16\)")]:
        _tamper(training_file, arrays={"optimizer/state/0/exp_avg": value})
        _load_refused(training_file, match)


def test_deeply_nested_metadata_is_a_checkpoint_error(training_file):
    _tamper(training_file, text=lambda t: t.replace('"note": [1, 2]', '"note": ' + "[" * 50000 + "]" * 50000))
    _load_refused(training_file, r"nested")


def test_sequential_scheduler_state_is_checked(tmp_path):
    net = small_net()
    opt = SGD(net.parameters(), lr=0.1, momentum=0.9)

    def sched_of(o):
        return SequentialLR(o, [StepLR(o, 2), CosineAnnealingLR(o, T_max=4)], milestones=[3])

    path = save_training_state(tmp_path / "s.npz", net, opt, sched_of(opt))
    _tamper(path, _set("tree", "scheduler", "_schedulers", 1, "T_max", value=0))
    net2 = small_net()
    opt2 = SGD(net2.parameters(), lr=0.1, momentum=0.9)
    sched2 = sched_of(opt2)
    snap = Snapshot(net2, opt2, sched2)
    sub = [s.state_dict() for s in sched2._schedulers]
    with pytest.raises(CheckpointError, match="scheduler"):
        load_training_state(path, net2, opt2, sched2)
    snap.assert_unchanged()
    assert [s.state_dict() for s in sched2._schedulers] == sub


def test_check_extra_runs_before_anything_changes(training_file):
    def refuse(extra):
        assert extra["note"] == [1, 2]
        raise ValueError("saved with other callbacks")

    net, opt, sched = _fresh()
    snap = Snapshot(net, opt, sched)
    with pytest.raises(CheckpointError, match="saved with other callbacks"):
        load_training_state(training_file, net, opt, sched, check_extra=refuse)
    snap.assert_unchanged()


def _npz_with_member(path, name, header_shape, payload=b"", compress=zipfile.ZIP_STORED):
    """An .npz whose member ``name`` has an .npy header claiming ``header_shape`` (float64)."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': %r, }" % (header_shape,)
    header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload
    meta = {"format": "minicnn-checkpoint", "version": 1, "kind": "state", "tree": {"w": {"__array__": "w"}}}
    with zipfile.ZipFile(path, "w", compress) as zf:
        zf.writestr("__meta__.npy", _npy_bytes(np.array(json.dumps(meta))))
        zf.writestr(f"{name}.npy", npy)
    return path


def _npy_bytes(array):
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_header_claiming_more_than_the_file_holds(tmp_path):
    """A 300-byte member whose header claims 8 TB must not reach the allocator."""
    path = _npz_with_member(tmp_path / "big.npz", "w", (10 ** 12,), b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"'w\.npy'.*8000000000000 bytes"):
        load_state(path)


def test_decompression_bomb_needs_max_bytes(tmp_path):
    payload = bytes(32 << 20)   # 32 MB of zeros: about 32 KB deflated
    path = _npz_with_member(tmp_path / "bomb.npz", "w", (4 << 20,), payload, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(LimitExceededError, match=r"max_bytes"):
        load_state(path)
    assert load_state(path, max_bytes=40 << 20)["w"].shape == (4 << 20,)


# ------------------------------------------------------------- orphaned temporaries
_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from minicnn import nn
    from minicnn.io import save_model
    net = nn.Sequential(nn.Linear(2000, 2000))
    save_model(sys.argv[1], net, {"run": 1})
    print("saved", flush=True)
    while True:
        save_model(sys.argv[1], net, {"run": 2})
""")


def test_sigkill_mid_save_leaves_an_orphan_the_next_load_removes(tmp_path):
    path = tmp_path / "m.npz"
    others = [tmp_path / ".m.npz.notmine.tmp", tmp_path / ".m.npz.abcdefgh.part", tmp_path / "x.tmp",
              tmp_path / ".other.npz.abcdefgh.tmp"]
    for p in others:
        p.write_text("not the saver's")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "saved\n"
        deadline = time.monotonic() + 60
        while not _orphans(tmp_path, others) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert _orphans(tmp_path, others), "the saver was never caught mid-write"
    net = nn.Sequential(nn.Linear(2000, 2000))
    assert load_model(path, net)["run"] in (1, 2)
    assert not _orphans(tmp_path, others)
    assert all(p.read_text() == "not the saver's" for p in others)


def _orphans(folder, others):
    return [p for p in folder.iterdir() if p.name != "m.npz" and p not in others]


def test_save_removes_orphans_but_not_a_temp_being_written(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    path = save_model(tmp_path / "m.npz", small_net())
    dead = tmp_path / ".m.npz.dead0001.tmp"
    dead.write_bytes(b"half")
    live = tmp_path / ".m.npz.live0001.tmp"
    with open(live, "wb") as f:   # another saver, still writing: it holds the lock
        fcntl.flock(f, fcntl.LOCK_EX)
        save_model(path, small_net())
        assert live.exists() and not dead.exists()
