"""Shared test settings.

Hypothesis profile "minicnn" (the default): no deadline, because the first call
of a Numba kernel compiles it, few examples, because the whole suite must stay
fast on 2 cores, and derandomized, so that every run (and CI) draws the same
examples: a failure is reproducible, and a pass does not depend on luck.  Without
hypothesis's "explain" phase, which re-runs a failing numeric test under a line
tracer for minutes.
``HYPOTHESIS_PROFILE=thorough pytest`` explores: 300 fresh random examples per
property in each run.

The fast routes' scratch buffers are filled with NaN whenever they are handed out
(``MINICNN_SCRATCH_FILL=nan``), so a kernel that forgets to zero a buffer it
accumulates into fails on every run, not only when stale values happen to differ.

The convolution routes come from the static table (``MINICNN_AUTOTUNE=0``), not from
timings, so that every run picks the same routes, at no timing cost; tests/test_autotune.py
turns autotuning on where it is tested.  ``MINICNN_AUTOTUNE=1 pytest`` runs the rest with
it too; the tests of the static table itself, and of the same bits at one and two
threads where no route is forced (the thread count is part of what a choice is timed
for), then fail by design.

Fixtures:
* ``torch``: the torch module in float64-friendly, single-threaded form, or a
  clean skip when torch is not installed (it is a reference, never a dependency).
* ``rng``: a fresh seeded ``np.random.Generator`` per test.
Every test starts from ``minicnn.manual_seed(0)``, so test order does not matter.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

import minicnn

settings.register_profile("minicnn", deadline=None, max_examples=20, derandomize=True,
                          phases=[p for p in Phase if p.name != "explain"],
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", parent=settings.get_profile("minicnn"), max_examples=300,
                          derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minicnn"))
os.environ.setdefault("MINICNN_AUTOTUNE", "0")
os.environ.setdefault("MINICNN_SCRATCH_FILL", "nan")


@pytest.fixture(autouse=True)
def _seeded():
    minicnn.manual_seed(0)


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)  # two BLAS pools on 2 cores only slow each other down
    return torch


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def against_torch(torch):
    """``against_torch(fn, torch_fn, *arrays)``: forward and every input gradient of
    ``fn`` (on minicnn tensors) equal ``torch_fn`` (on torch tensors) in float64.

    Float arrays become tensors that require grad; other arguments pass through as
    they are (integer targets: as torch tensors).  The backward seed is a fixed
    random array, so every output element counts.  Returns minicnn's output.
    """
    def check(fn, torch_fn, *args, rtol=1e-10, atol=1e-12):
        floats = [isinstance(a, np.ndarray) and a.dtype == np.float64 for a in args]
        mine = [minicnn.tensor(a, requires_grad=True) if f else a for a, f in zip(args, floats)]
        theirs = [torch.tensor(a, requires_grad=f) if isinstance(a, np.ndarray) else a
                  for a, f in zip(args, floats)]
        out, ref = fn(*mine), torch_fn(*theirs)
        np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=rtol, atol=atol, err_msg="forward")
        seed = np.asarray(np.random.default_rng(7).standard_normal(out.shape))
        out.backward(seed)
        ref.backward(torch.tensor(seed))
        for i, (m, t) in enumerate(zip(mine, theirs)):
            if floats[i]:
                expected = np.zeros(m.shape) if t.grad is None else t.grad.numpy()
                got = np.zeros(m.shape) if m.grad is None else m.grad
                np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")
        return out
    return check
