"""Checkpoints: round trips, atomic writes, clear errors, and exact resumption of a run."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import nn
from minicnn.data import transforms
from minicnn.io import (CheckpointError, load_model, load_state, load_training_state, save_model,
                        save_state, save_training_state)
from minicnn.optim import SGD, Adam, StepLR
from minicnn.train import EarlyStopping, ReduceLROnPlateau, Trainer

REPO = Path(__file__).resolve().parents[1]


def small_net(width=16, p=0.3):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Dropout(p), nn.Linear(width, 3))


def test_tree_round_trip(tmp_path):
    tree = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": [1, 2.5, None, True, "x"],
            "t": (0.9, 0.999), 3: {"step": 7, "m": np.float32(1.5), "z": np.zeros((), np.float64)},
            "nan": float("nan"), "empty": np.zeros((0, 4), np.float32)}
    path = save_state(tmp_path / "t.npz", tree)
    back = load_state(path)
    assert back["a"].dtype == np.int16 and np.array_equal(back["a"], tree["a"])
    assert back["b"] == [1, 2.5, None, True, "x"] and back["t"] == (0.9, 0.999)
    assert back["3"]["step"] == 7 and back["3"]["m"] == 1.5 and back["3"]["z"].shape == ()
    assert np.isnan(back["nan"]) and back["empty"].shape == (0, 4)
    with np.load(path, allow_pickle=False) as z:  # a plain npz, readable without minicnn
        assert "a" in z.files and "3/z" in z.files


def test_unstorable_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="only dicts"):
        save_state(tmp_path / "x.npz", {"f": lambda: 0})
    with pytest.raises(TypeError, match="keys must be str or int"):
        save_state(tmp_path / "x.npz", {(1, 2): 0})
    assert not list(tmp_path.iterdir())


def test_model_round_trip_and_metadata(tmp_path):
    a, b = small_net(), small_net()
    a[2].running_mean[:] = np.arange(16)
    save_model(tmp_path / "m.npz", a, {"classes": ["x", "y", "z"], "epoch": 3})
    meta = load_model(tmp_path / "m.npz", b)
    assert meta == {"classes": ["x", "y", "z"], "epoch": 3}
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert va.dtype == vb.dtype and np.array_equal(va, vb), k


def test_other_architecture_is_named(tmp_path):
    save_model(tmp_path / "m.npz", small_net(width=16))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "m.npz", small_net(width=8))
    msg = str(e.value)
    assert "m.npz" in msg and "another architecture" in msg
    assert "1.weight: saved shape (16, 64), model has (8, 64)" in msg
    deeper = nn.Sequential(*small_net(), nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match="missing from the checkpoint: 6.weight, 6.bias"):
        load_model(tmp_path / "m.npz", deeper)


def _write_valid(path):
    save_model(path, small_net())
    return path.read_bytes()


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    raw = _write_valid(path)
    for cut in (len(raw) // 2, 100, 0):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match=r"m\.npz: truncated or corrupt"):
            load_model(path, small_net())


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "m.npz"
    raw = bytearray(_write_valid(path))
    raw[len(raw) // 3: len(raw) // 3 + 64] = bytes(64)  # inside a weight: CRC mismatch
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path, small_net())


def test_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minicnn checkpoint"):
        load_state(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="text.npz"):
        load_state(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_state(tmp_path / "nope.npz")
    save_model(tmp_path / "m.npz", small_net())
    with pytest.raises(CheckpointError, match="holds a 'model' state, expected a 'training' one"):
        load_training_state(tmp_path / "m.npz", small_net(), SGD(small_net().parameters(), lr=0.1))


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = _write_valid(path)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, small_net(width=4))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # the temp file is gone


def test_crash_mid_write_keeps_the_old_file(tmp_path):
    """A process killed while writing (here: it exits inside fsync, before the rename)
    leaves the previous checkpoint intact and loadable."""
    path = tmp_path / "m.npz"
    script = textwrap.dedent(f"""
        import os, numpy as np
        from minicnn import nn
        from minicnn.io import save_model
        net = nn.Sequential(nn.Linear(64, 300), nn.Linear(300, 3))
        save_model({str(path)!r}, net, {{"run": 1}})
        os.fsync = lambda fd: os._exit(17)   # the power goes out during the second write
        save_model({str(path)!r}, nn.Sequential(nn.Linear(64, 300), nn.Linear(300, 3)), {{"run": 2}})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 17, done.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.npz.")  # a stray temp, never the target
    net = nn.Sequential(nn.Linear(64, 300), nn.Linear(300, 3))
    assert load_model(path, net) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # the load removed the orphan


def test_training_state_round_trip(tmp_path):
    minicnn.manual_seed(3)
    net = small_net()
    opt = Adam(net.parameters(), lr=0.01)
    sched = StepLR(opt, 2, gamma=0.5)
    x = minicnn.tensor(np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32))
    for _ in range(3):
        opt.zero_grad()
        minicnn.ops.cross_entropy(net(x), np.arange(8) % 3).backward()
        opt.step()
        sched.step()
    save_training_state(tmp_path / "s.npz", net, opt, sched, epoch=3, note={"k": [1, 2]})
    expected_draw = minicnn.random.default_rng().random()
    net2 = small_net()
    opt2 = Adam(net2.parameters(), lr=0.5)
    sched2 = StepLR(opt2, 2, gamma=0.5)
    minicnn.manual_seed(99)
    extra = load_training_state(tmp_path / "s.npz", net2, opt2, sched2)
    assert extra == {"epoch": 3, "note": {"k": [1, 2]}}
    assert minicnn.random.default_rng().random() == expected_draw
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and sched2.last_epoch == 3
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s2[0]["step"] == 3 and isinstance(s2[0]["step"], int)
    assert all(np.array_equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    with pytest.raises(CheckpointError, match="has a LR scheduler state but none was given"):
        load_training_state(tmp_path / "s.npz", net2, opt2)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_training_state(tmp_path / "s.npz", net2, Adam(list(net2.parameters())[:2]), sched2)


# ------------------------------------------------------------ exact resumption
def _data():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (240, 8, 8)).astype(np.uint8)
    labels = (images[:, :4].mean((1, 2)) > images[:, 4:].mean((1, 2))).astype(np.int64) + \
        (images[:, :, :4].mean((1, 2)) > 127).astype(np.int64)
    return images, labels


def _run(epochs, checkpoint_path=None, resume_from=None, init_seed=0):
    minicnn.manual_seed(init_seed)
    net = small_net()
    opt = Adam(net.parameters(), lr=0.01)
    sched = StepLR(opt, 2, gamma=0.5)
    callbacks = [ReduceLROnPlateau(monitor="val_accuracy", patience=1, factor=0.5, min_delta=0.5),
                 EarlyStopping(patience=10, restore_best_weights=True)]
    augment = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(8, padding=1)])
    trainer = Trainer(net, _data(), opt, validation_split=0.25, batch_size=16, scheduler=sched,
                      callbacks=callbacks, transform=augment, seed=None if resume_from else 11,
                      verbose=0, checkpoint_path=checkpoint_path, resume_from=resume_from)
    trainer.fit(epochs)
    return net, opt, trainer


def test_resumed_run_is_bit_identical(tmp_path):
    """Dropout (global RNG), shuffling and augmentation (loader seed), Adam, a StepLR and
    callbacks with memory: 2 epochs + resume to 5 == 5 epochs straight."""
    net_a, opt_a, tr_a = _run(5)
    _run(2, checkpoint_path=tmp_path / "state.npz")
    net_b, opt_b, tr_b = _run(5, resume_from=tmp_path / "state.npz", init_seed=123)
    assert tr_b.seed == 11 and len(tr_b.history) == 5
    for (k, a), (_, b) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        assert np.array_equal(a, b), f"{k} differs after resuming"
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        assert np.array_equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert tr_a.history.history == tr_b.history.history | {"time": tr_a.history["time"]}
    assert min(tr_a.history["lr"]) < 0.005  # ReduceLROnPlateau and StepLR both acted


def test_resume_needs_the_same_callbacks(tmp_path):
    _run(1, checkpoint_path=tmp_path / "state.npz")
    net = small_net()
    opt = Adam(net.parameters())
    with pytest.raises(CheckpointError, match=r"saved with callbacks \['ReduceLROnPlateau', 'EarlyStopping'\]"):
        Trainer(net, _data(), opt, scheduler=StepLR(opt, 2), verbose=0, resume_from=tmp_path / "state.npz")


@pytest.mark.parametrize("edit, match", [
    (None, r"saved with callbacks \['ReduceLROnPlateau', 'EarlyStopping'\]"),
    (lambda e: e.__setitem__("train_loader", {"seed": "x", "epoch": 1}), r"'train_loader'"),
    (lambda e: e.__setitem__("seed", -3), r"'seed'"),
    (lambda e: e.__setitem__("history", [1]), r"'history'"),
    (lambda e: e["history"]["history"].__setitem__("loss", ["x"]), r"'history'"),
    (lambda e: e.__setitem__("callbacks", [["EarlyStopping"]]), r"'callbacks'"),
])
def test_a_resume_that_does_not_fit_changes_nothing(tmp_path, edit, match):
    """The trainer's own trees (seed, loader, history, callbacks) are checked with the rest,
    before load_training_state changes the model or the optimizer."""
    import json
    _run(1, checkpoint_path=tmp_path / "state.npz")
    if edit is not None:
        with np.load(tmp_path / "state.npz", allow_pickle=False) as z:
            members = {k: z[k] for k in z.files}
        meta = json.loads(str(members["__meta__"]))
        edit(meta["tree"]["extra"])
        members["__meta__"] = np.array(json.dumps(meta))
        np.savez(tmp_path / "state.npz", **members)
    net = small_net()
    opt = Adam(net.parameters(), lr=0.5)
    before = net.state_dict()
    callbacks = [] if edit is None else [ReduceLROnPlateau(monitor="val_accuracy"), EarlyStopping()]
    with pytest.raises(CheckpointError, match=match):
        Trainer(net, _data(), opt, scheduler=StepLR(opt, 2), callbacks=callbacks, verbose=0,
                resume_from=tmp_path / "state.npz")
    assert all(np.array_equal(a, b) for a, b in zip(net.state_dict().values(), before.values()))
    assert opt.param_groups[0]["lr"] == 0.5 and opt.state == {}


def test_fortran_order_big_endian_and_empty_arrays_round_trip(tmp_path):
    tree = {"f": np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)), "be": np.arange(5, dtype=">i4"),
            "empty": np.zeros((0, 3), np.float32), "s": np.array(["héllo", "x"])}
    back = load_state(save_state(tmp_path / "t.npz", tree))
    for k, v in tree.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
        assert back[k].flags.writeable
    assert back["f"].flags.f_contiguous
