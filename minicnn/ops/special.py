"""Special functions NumPy lacks, as Numba kernels on raw ndarrays."""
import math

import numpy as np
from numba import njit


def _erf_flat(x, out):
    for i in range(x.size):
        out[i] = math.erf(x[i])


_erf_flat_jit = njit(cache=True)(_erf_flat)


def erf(x):
    """Elementwise error function erf(x) = 2/√π ∫₀ˣ e^(-t²) dt, same dtype and shape as ``x``."""
    flat = np.ascontiguousarray(x).ravel()
    out = np.empty_like(flat)
    _erf_flat_jit(flat, out)
    return out.reshape(np.shape(x))
