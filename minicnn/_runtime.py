"""Thread-pool settings that must be in place before NumPy and Numba start.

On a small CPU two thread pools share the cores: OpenBLAS's (the GEMMs) and
Numba's (im2col, col2im, pooling, normalization).  By default both spin-wait
when idle, so each steals the cores the other is about to use; a NumPy+Numba
CNN measured 3-35x slower that way.  Passive waiting and a short OpenBLAS
thread timeout make an idle pool sleep instead.

The variables are only defaults: anything the user exported wins.  They take
effect only if this module runs before ``numpy`` is first imported, which is why
``minicnn/__init__.py`` imports it first.
"""
import os

_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "OPENBLAS_THREAD_TIMEOUT": "4",
    "KMP_BLOCKTIME": "0",
}

for _k, _v in _DEFAULTS.items():
    os.environ.setdefault(_k, _v)
