"""minicnn.distributed without MPI: the sampler's shares, the DataLoader's sampler hook, and
that minicnn never imports the distributed package or mpi4py."""
import subprocess
import sys

import numpy as np
import pytest

from minicnn.data import DataLoader
from minicnn.distributed import DistributedSampler


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
