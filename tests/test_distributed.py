"""minicnn.distributed under ``mpiexec -n 2``: 2 ranks with batch B/2 train exactly as 1 rank
with batch B (SGD, Adam, SyncBatchNorm, the Trainer with resume), and a failing rank stops
the others.

MPI start-up costs about a second, so all equality checks run in ONE ``mpiexec -n 2`` of
this very file (``python tests/test_distributed.py checks OUT``): rank 0 also trains the
single-process reference in the same run and writes every comparison to OUT as JSON;
the tests below each assert one entry.  Two more short runs check the failures, and
one runs examples/sweep.py.
Skipped, with the reason, without mpi4py or mpiexec (``pip install "minicnn[distributed]"``).
"""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Tensor, nn, ops
from minicnn.data import DataLoader
from minicnn.ops import cross_entropy
from minicnn.optim import SGD, Adam
from minicnn.train import Callback, ModelCheckpoint, Trainer

RANKS = 2
TOLERANCE = 1e-10          # relative, float64
TIMEOUT = 120              # seconds for one mpiexec run (it takes a few)


# ------------------------------------------------------------------ the worker (under mpiexec)
def _models():
    f64 = dict(dtype=np.float64)

    class Plain(nn.Module):
        """conv 3x3 -> ReLU -> max pool -> linear, float64 (input cast from the loader's float32)."""
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, **f64), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Flatten(), nn.Linear(4 * 4 * 4, 3, **f64))

        def forward(self, x):
            return self.body(x.astype(np.float64))

    class Normed(nn.Module):
        """conv -> BN -> ReLU, then conv -> BN + residual -> ReLU (a ResNet block's end), pool, linear."""
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False, **f64), nn.BatchNorm2d(4, **f64),
                                      nn.ReLU())
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False, **f64)
            self.bn = nn.BatchNorm2d(4, **f64)
            self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, **f64))

        def forward(self, x):
            y = self.stem(x.astype(np.float64))
            return self.head(ops.relu(self.bn(self.conv(y)) + y))

    return Plain, Normed


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 8, 8))
    x[y == 0, :, :4] += 120
    x[y == 1, :4, :] += 120
    return x.astype(np.uint8), y.astype(np.int64)


def _relative(a, b):
    """max |a - b| / max |b| over two state dicts (every parameter and buffer)."""
    worst = 0.0
    for k in b:
        scale = max(float(np.max(np.abs(b[k]))), 1e-300)
        worst = max(worst, float(np.max(np.abs(np.asarray(a[k], np.float64) - b[k]))) / scale)
    return worst


def _steps(model, optimizer, loader, steps=10):
    done = 0
    while done < steps:
        for x, y in loader:
            optimizer.zero_grad()
            cross_entropy(model(Tensor(x)), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return model.state_dict()


def _equal_steps(dist, make, optim, sync_bn, batch=8, fused=False):
    """Relative difference of 10 steps on 2 ranks (batch/2 each) from 1 rank (batch), on rank 0."""
    data = _data()
    minicnn.manual_seed(1)
    model = make()
    if sync_bn:
        model = dist.convert_sync_batchnorm(model)
    if fused:
        model = nn.fuse(model)
    opt = dist.DistributedOptimizer(optim(model.parameters()))
    dist.broadcast_parameters(model)
    sampler = dist.DistributedSampler(len(data[1]), seed=5)
    got = _steps(model, opt, DataLoader(data, batch_size=batch // RANKS, sampler=sampler, dtype=np.float64))
    if dist.rank() != 0:
        return None
    minicnn.manual_seed(1)
    ref = make()
    want = _steps(ref, optim(ref.parameters()), DataLoader(data, batch_size=batch, shuffle=True, seed=5,
                                                           dtype=np.float64))
    return {"relative": _relative(got, want), "calls": opt.allreduce_calls,
            "converted": sum(type(m).__name__ == "SyncBatchNorm" for m in model.modules())}


class Counter(Callback):
    """A callback that only the main process should run."""
    main_process_only = True

    def __init__(self):
        self.epochs = 0

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]

    def on_epoch_end(self, trainer, epoch, logs):
        self.epochs += 1


def _trainer_checks(dist, folder):
    """fit on 2 ranks (batch 4 each) against fit on 1 (batch 8); resume against uninterrupted."""
    _, Normed = _models()
    data, val = _data(48, seed=2), _data(21, seed=3)

    def run(strategy, batch, epochs, stop_after=None, resume=None, stream=None, checkpoint=None):
        minicnn.manual_seed(7)
        model = Normed()
        if strategy is not None:
            model = dist.convert_sync_batchnorm(model)
        callbacks = [ModelCheckpoint(os.path.join(folder, "best.npz")), Counter()]
        t = Trainer(model, data, SGD(model.parameters(), lr=0.05, momentum=0.9), validation_data=val,
                    batch_size=batch, callbacks=callbacks, seed=None, verbose=1, strategy=strategy,
                    stream=stream or io.StringIO(), checkpoint_path=checkpoint, resume_from=resume)
        t.fit(stop_after or epochs)
        return t, model.state_dict()

    strategy = dist.MPIStrategy()
    out = io.StringIO()
    t, got = run(strategy, 4, 3, stream=out)
    ckpt = os.path.join(folder, "state.npz")
    run(strategy, 4, 3, stop_after=1, checkpoint=ckpt)
    resumed, again = run(strategy, 4, 3, resume=ckpt)
    result = {"printed": len(out.getvalue()), "saved": t.callbacks[0].last_saved is not None,
              "counted": t.callbacks[1].epochs, "sampler": type(t.train_loader.sampler).__name__,
              "resume_relative": _relative(again, got),
              "resume_history": max(abs(a - b) for k in ("loss", "val_loss", "accuracy")
                                    for a, b in zip(resumed.history[k], t.history[k]))}
    if dist.rank() == 0:
        ref, want = run(None, 8, 3)
        result["relative"] = _relative(got, want)
        result["history"] = max(abs(a - b) / abs(b) for k in ("loss", "val_loss", "accuracy", "val_accuracy")
                                for a, b in zip(t.history[k], ref.history[k]))
    return result


def _checks(out):
    import minicnn.distributed as dist
    Plain, Normed = _models()
    sgd = lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3)   # noqa: E731
    adam = lambda p: Adam(p, lr=1e-2)                                 # noqa: E731
    folder = dist.world().bcast(out + ".d" if dist.rank() == 0 else None)
    if dist.rank() == 0:
        os.makedirs(folder, exist_ok=True)
    dist.barrier()
    results = {"size": dist.size(), "threads": os.environ.get("MINICNN_NUM_THREADS"),
               "sgd": _equal_steps(dist, Plain, sgd, False), "adam": _equal_steps(dist, Plain, adam, False),
               "sgd_syncbn": _equal_steps(dist, Normed, sgd, True),
               "adam_syncbn": _equal_steps(dist, Normed, adam, True),
               "sgd_syncbn_fused": _equal_steps(dist, Normed, sgd, True, fused=True)}
    results["trainer"] = _trainer_checks(dist, folder)
    everyone = dist.world().gather(results)
    if dist.rank() == 0:
        Path(out).write_text(json.dumps(everyone))


def _fail(how):
    """Rank 1 dies (SIGKILL) or raises at step 3 of 20; rank 0 would print 'finished'."""
    import signal
    import minicnn.distributed as dist
    dist.init()
    Plain, _ = _models()
    minicnn.manual_seed(0)
    model = Plain()
    opt = dist.DistributedOptimizer(SGD(model.parameters(), lr=0.1))
    data = _data()
    loader = DataLoader(data, batch_size=4, sampler=dist.DistributedSampler(len(data[1])))
    for step in range(20):
        for x, y in loader:
            if dist.rank() == 1 and step == 3:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("rank 1 lost its data")
            opt.zero_grad()
            cross_entropy(model(Tensor(x)), y).backward()
            opt.step()
    print("finished", flush=True)


# ------------------------------------------------------------------ the tests (under pytest)
def _mpiexec():
    pytest.importorskip("mpi4py", reason='needs mpi4py: pip install "minicnn[distributed]"')
    exe = shutil.which("mpiexec") or (shutil.which("mpiexec", path=os.path.dirname(sys.executable)))
    if exe is None:
        pytest.skip('needs mpiexec on PATH: pip install "minicnn[distributed]" (mpich)')
    return exe


def _run(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    env.pop("MINICNN_NUM_THREADS", None)
    return subprocess.run([_mpiexec(), "-n", str(RANKS), sys.executable, __file__, *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi") / "results.json"
    proc = _run("checks", str(out))
    assert proc.returncode == 0, f"mpiexec failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def test_ranks_share_the_cores(results):
    assert [r["size"] for r in results] == [RANKS] * RANKS
    assert [r["threads"] for r in results] == [str(max(1, len(os.sched_getaffinity(0)) // RANKS))] * RANKS


@pytest.mark.parametrize("case", ["sgd", "adam", "sgd_syncbn", "adam_syncbn"])
def test_two_ranks_half_batch_equal_one_rank_full_batch(results, case):
    r = results[0][case]
    assert r["relative"] <= TOLERANCE, r
    assert r["calls"] == 10            # one bucket: one Allreduce per step, not one per tensor
    assert r["converted"] == (2 if case.endswith("syncbn") else 0)


def test_fused_model_with_sync_batchnorm(results):
    """nn.fuse leaves a SyncBatchNorm to its own forward (statistics over all ranks)."""
    assert results[0]["sgd_syncbn_fused"]["relative"] <= TOLERANCE


def test_trainer_on_two_ranks_equals_one_rank(results):
    r = results[0]["trainer"]
    assert r["sampler"] == "DistributedSampler"
    assert r["relative"] <= TOLERANCE and r["history"] <= TOLERANCE, r


def test_only_rank_0_prints_and_writes(results):
    main, other = results[0]["trainer"], results[1]["trainer"]
    assert main["printed"] > 0 and main["saved"] and main["counted"] == 3
    assert other["printed"] == 0 and not other["saved"] and other["counted"] == 0


def test_resumed_run_equals_the_uninterrupted_one(results):
    for r in results:
        assert r["trainer"]["resume_relative"] == 0.0 and r["trainer"]["resume_history"] == 0.0, r


@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_failed_rank_stops_the_others(how):
    proc = _run("fail", how)        # a hang would raise TimeoutExpired
    assert proc.returncode != 0
    assert "finished" not in proc.stdout
    if how == "raise":
        assert "rank 1 of 2 failed" in proc.stderr and "rank 1 lost its data" in proc.stderr, proc.stderr
    else:
        assert "signal 9" in (proc.stdout + proc.stderr).lower() or "killed" in (proc.stdout + proc.stderr).lower()


if __name__ == "__main__":
    {"checks": _checks, "fail": _fail}[sys.argv[1]](*sys.argv[2:])


@pytest.mark.slow
def test_sweep_gathers_every_configuration_on_rank_0(tmp_path):
    from test_example_fashion import generated_fashion
    generated_fashion(tmp_path, n_train=200, n_test=20)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("MINICNN_NUM_THREADS", None)
    sweep = Path(__file__).resolve().parents[1] / "examples" / "sweep.py"
    proc = subprocess.run([_mpiexec(), "-n", str(RANKS), sys.executable, str(sweep), "--quick", "--data-dir",
                           str(tmp_path), "--model", "basic", "--lr", "1e-3,3e-3", "--batch-size", "32",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert sorted(float(r["lr"]) for r in rows) == [1e-3, 3e-3]
    accs = [float(r["best_val_accuracy"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert proc.stdout.count("model ") == 1             # rank 0 alone prints the table
    assert "rank 0: configuration 1/2 done" in proc.stdout and "rank 1: configuration 2/2 done" in proc.stdout
