"""The CBLAS ``?gemm`` of the BLAS that NumPy loaded, for kernels that call it directly.

    gemm(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc):
        C (M, N) = alpha · op(A) (M, K) · op(B) (K, N) + beta · C

with ``order`` = ROW_MAJOR, ``trans_*`` = NO_TRANS or TRANS, and A, B, C the
addresses of the first elements (``arr.ctypes.data`` plus a byte offset).

Why not ``np.matmul``: the row-tap convolution (``kernels.conv.rowtap_forward``)
sums a few GEMMs per image into one output block (beta = 1) at row offsets inside
small per-image buffers.  Through NumPy each would cost a Python call and, for the
sum, an extra pass over the output.  Numba calls ctypes functions in nopython
mode; kernels take the function as an *argument* (not a global), so the address
is not compiled into Numba's on-disk cache.

``gemm(dtype)`` is the function for float32 (sgemm) and float64 (dgemm), or None
where the BLAS cannot be found (not Linux, or no CBLAS symbols): the convolutions
then keep to their ``np.matmul`` routes.  Integer arguments are 64-bit for an ILP64
build (NumPy's wheels: symbols ending in ``64_``), else C ints; a function is only
taken after it computed a small product right.  The loaded libraries are searched on
the first call only (when a row-tap convolution first runs), not at import.
"""
import ctypes
import functools

import numpy as np

from ..runtime import loaded_libraries

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# (symbol stem, suffix, integer type), most specific first: NumPy >= 2 wheels
# (scipy-openblas, ILP64), NumPy 1.x wheels (OpenBLAS ILP64), plain LP64 CBLAS.
_SYMBOLS = (("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "64_", ctypes.c_int64), ("cblas_", "", ctypes.c_int))


def _find(prefix, real):
    """The CBLAS ``prefix + 'gemm'`` (prefix 's' or 'd') of a loaded BLAS, typed, or None.
    Symbol by symbol, so that NumPy's own (scipy-openblas) wins over any other BLAS that
    this process may have mapped."""
    libraries = []
    for path in loaded_libraries("blas"):
        try:
            libraries.append(ctypes.CDLL(path))
        except OSError:         # mapped but not loadable by name: not ours to call
            pass
    for stem, suffix, integer in _SYMBOLS:
        for lib in libraries:
            fn = getattr(lib, f"{stem}{prefix}gemm{suffix}", None)
            if fn is not None:
                enum, ptr = ctypes.c_int, ctypes.c_void_p
                fn.restype = None
                fn.argtypes = [enum, enum, enum, integer, integer, integer, real, ptr, integer, ptr, integer,
                               real, ptr, integer]
                if _works(fn, np.float32 if real is ctypes.c_float else np.float64):
                    return fn
    return None


def _works(gemm, dtype):
    """True if ``gemm`` computes a small known product: guards against a BLAS whose integer
    width differs from what its symbol names suggest (the result would be garbage)."""
    a, b = np.arange(6, dtype=dtype).reshape(2, 3), np.arange(6, dtype=dtype).reshape(3, 2)
    c = np.ones((2, 2), dtype)
    gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, 2, 2, 3, 1.0, a.ctypes.data, 3, b.ctypes.data, 2, 1.0, c.ctypes.data, 2)
    return bool(np.array_equal(c, a @ b + 1))


@functools.lru_cache(maxsize=None)
def gemm(dtype):
    """The CBLAS gemm for ``dtype`` (float32: sgemm, float64: dgemm), or None if there is none."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return _find("s", ctypes.c_float)
    return _find("d", ctypes.c_double) if dtype == np.float64 else None
