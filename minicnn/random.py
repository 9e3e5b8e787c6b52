"""One source of randomness, so that the same seed gives the same run.

Weight init, dropout masks, shuffling and augmentation all draw from NumPy
``Generator`` objects that descend from a single global generator:

    manual_seed(0)          # reset everything
    rng = default_rng()     # the global generator (init, dropout)
    g = new_rng()           # an independent child, seeded from the global one

``get_state``/``set_state`` capture the global generator's exact state, so a
run resumed from a checkpoint continues the same random stream.
"""
import json

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator; returns it.  ``seed`` is a non-negative int."""
    global _rng
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed expects a non-negative int, got {seed!r}")
    _rng = np.random.default_rng(int(seed))
    return _rng


def default_rng():
    """The global ``np.random.Generator`` (reset by :func:`manual_seed`)."""
    return _rng


def new_rng(seed=None):
    """An independent Generator: from ``seed`` if given, else drawn from the global one."""
    if seed is None:
        seed = int(_rng.integers(0, 2**63 - 1))
    return np.random.default_rng(seed)


def get_state():
    """The global generator's state as a JSON string (storable in an .npz)."""
    return json.dumps(_rng.bit_generator.state)


def set_state(state):
    """Restore a state returned by :func:`get_state`."""
    _rng.bit_generator.state = json.loads(state) if isinstance(state, str) else state
