"""minicnn.distributed without MPI: the sampler's shares, the DataLoader's sampler hook, the
Trainer's strategy hooks (with a stand-in strategy), convert_sync_batchnorm, and that minicnn
never imports the distributed package or mpi4py."""
import io
import subprocess
import sys

import numpy as np
import pytest

from minicnn import Tensor, nn
from minicnn.data import DataLoader
from minicnn.distributed import DistributedSampler, SyncBatchNorm, convert_sync_batchnorm
from minicnn.optim import SGD
from minicnn.train import CSVLogger, ModelCheckpoint, Trainer
from minicnn.train.loop import OneProcess


def _shares(n, ranks, epoch=0, **kw):
    samplers = [DistributedSampler(n, ranks, r, **kw) for r in range(ranks)]
    for s in samplers:
        s.set_epoch(epoch)
    return [s.indices() for s in samplers]


@pytest.mark.parametrize("n, ranks", [(12, 2), (13, 2), (10, 3), (2, 4)])
def test_even_shares_are_equal_disjoint_and_cover_the_data(n, ranks):
    shares = _shares(n, ranks, seed=3)
    assert {len(s) for s in shares} == {-(-n // ranks)}
    everything = np.concatenate(shares)
    assert set(everything.tolist()) == set(range(n))
    assert len(everything) - n == (-n) % ranks            # only the padding repeats


@pytest.mark.parametrize("n, ranks", [(13, 2), (10, 3), (2, 4)])
def test_uneven_shares_partition_the_data(n, ranks):
    shares = _shares(n, ranks, shuffle=False, even=False)
    assert sorted(np.concatenate(shares).tolist()) == list(range(n))
    assert [len(s) for s in shares] == [len(DistributedSampler(n, ranks, r, even=False)) for r in range(ranks)]


def test_ranks_deal_out_the_single_process_order():
    """Batch k of 2 ranks x batch 3 holds the images of batch k of 1 process x batch 6."""
    labels = np.arange(24)
    images = np.zeros((24, 2, 2), np.uint8)
    one = DataLoader((images, labels), batch_size=6, shuffle=True, seed=11)
    one.set_epoch(2)
    ranks = [DataLoader((images, labels), batch_size=3, sampler=DistributedSampler(24, 2, r, seed=11))
             for r in range(2)]
    for loader in ranks:
        loader.set_epoch(2)
    for (_, y), (_, y0), (_, y1) in zip(one, *ranks):
        assert sorted(y.tolist()) == sorted(y0.tolist() + y1.tolist())


def test_epochs_differ_and_repeat():
    a, b, a_again = _shares(20, 2, 0, seed=1)[0], _shares(20, 2, 1, seed=1)[0], _shares(20, 2, 0, seed=1)[0]
    assert not np.array_equal(a, b) and np.array_equal(a, a_again)


def test_ranks_augment_independently():
    s0, s1 = DistributedSampler(8, 2, 0), DistributedSampler(8, 2, 1)
    data = (np.zeros((8, 2, 2), np.uint8), np.zeros(8, np.int64))
    r0 = DataLoader(data, sampler=s0, seed=5).epoch_rng(0).random()
    r1 = DataLoader(data, sampler=s1, seed=5).epoch_rng(0).random()
    assert r0 != r1


def test_bad_arguments_are_named():
    data = (np.zeros((4, 2, 2), np.uint8), np.arange(4))
    with pytest.raises(ValueError, match="shuffle=True or a sampler"):
        DataLoader(data, shuffle=True, sampler=[0, 1])
    with pytest.raises(IndexError, match=r"\[0, 9\], outside the 4 images"):
        list(DataLoader(data, sampler=[0, 9]))
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedSampler(4, 2, 2)
    with pytest.raises(ValueError, match="n must be a positive int"):
        DistributedSampler(0, 2, 0)


def test_a_list_of_indices_is_a_sampler():
    data = (np.zeros((5, 1, 1), np.uint8), np.arange(5))
    loader = DataLoader(data, batch_size=2, sampler=[4, 0, 4])
    assert len(loader) == 2 and [y.tolist() for _, y in loader] == [[4, 0], [4]]


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_minicnn_never_imports_mpi():
    proc = _run("import sys, minicnn, minicnn.train, minicnn.data, minicnn.models, minicnn.io, minicnn.cli\n"
                "import minicnn.distributed\n"   # importing it starts nothing either
                "print(sorted(m for m in sys.modules if m.startswith('mpi4py')))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_missing_mpi4py_says_how_to_install():
    proc = _run("import sys; sys.modules['mpi4py'] = None\n"
                "import minicnn.distributed as d\n"
                "d.init()")
    assert proc.returncode != 0
    assert 'pip install "minicnn[distributed]"' in proc.stderr


class SecondRank(OneProcess):
    """Rank 1 of 2, without MPI: sums are this process's alone."""
    is_main = False

    def sampler(self, n, shuffle, seed, train):
        return DistributedSampler(n, 2, 1, shuffle=shuffle, seed=seed, even=train)


def _blobs(n=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 4, 4)).astype(np.uint8), rng.integers(0, 2, n)


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def test_a_rank_other_than_0_prints_and_writes_nothing(tmp_path):
    model, out = _mlp(), io.StringIO()
    callbacks = [ModelCheckpoint(tmp_path / "best.npz"), CSVLogger(tmp_path / "log.csv")]
    t = Trainer(model, _blobs(), SGD(model.parameters(), lr=0.1), validation_data=_blobs(10), batch_size=4,
                callbacks=callbacks, verbose=1, stream=out, strategy=SecondRank(),
                checkpoint_path=tmp_path / "state.npz")
    t.fit(2)
    assert out.getvalue() == "" and sorted(p.name for p in tmp_path.iterdir()) == []
    assert len(t.history) == 2 and callbacks[0].last_saved is None
    assert len(t.train_loader) == 5                       # its 20 of the 40 images, batch 4
    assert sorted(t.val_loader.sampler.indices().tolist()) == [1, 3, 5, 7, 9]


def test_a_loader_without_a_sampler_cannot_be_shared_out():
    model = _mlp()
    with pytest.raises(ValueError, match="pass the data itself"):
        Trainer(model, DataLoader(_blobs()), SGD(model.parameters(), lr=0.1), strategy=SecondRank())


def test_convert_keeps_parameters_buffers_and_positions():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), bn, nn.ReLU())
    bn.running_mean[...] = 0.5
    model.eval()
    x = np.random.default_rng(0).random((2, 1, 5, 5), dtype=np.float32)
    before = model(Tensor(x)).data
    params = [id(p) for p in model.parameters()]
    converted = convert_sync_batchnorm(model)
    assert converted is model and type(model[1]) is SyncBatchNorm and not model[1].training
    assert [id(p) for p in model.parameters()] == params
    assert model[1].running_mean is bn.running_mean
    np.testing.assert_array_equal(model(Tensor(x)).data, before)   # eval mode: no MPI needed
    assert type(convert_sync_batchnorm(nn.BatchNorm2d(2))) is SyncBatchNorm
