"""kernels.blas: the CBLAS gemm of NumPy's BLAS, as the row-tap convolutions call it."""
import sys

import numpy as np
import pytest

from minicnn.fast.kernels.blas import NO_TRANS, ROW_MAJOR, TRANS, gemm as find_gemm


def test_numpy_wheels_blas_is_found_on_linux():
    if not sys.platform.startswith("linux"):
        pytest.skip("the BLAS is looked up in /proc/self/maps (Linux); elsewhere conv falls back to im2row")
    assert find_gemm(np.float32) is not None and find_gemm(np.float64) is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_adds_into_a_block_at_an_offset(dtype, trans_a, trans_b, rng):
    """C[r0:r0+M, :N] = alpha·op(A)·op(B) + beta·C on a block of a wider C (ldc > N), the
    rest of C untouched: what the row taps do with beta = 1 and row offsets."""
    gemm = find_gemm(dtype)
    if gemm is None:
        pytest.skip("no CBLAS gemm found in this process's BLAS")
    M, N, K, r0 = 5, 3, 4, 2
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    c = rng.standard_normal((M + 4, N + 2)).astype(dtype)
    want = c.copy()
    want[r0:r0 + M, :N] = 0.5 * (a.T if trans_a else a) @ (b.T if trans_b else b) + 2.0 * c[r0:r0 + M, :N]
    gemm(ROW_MAJOR, TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS, M, N, K, 0.5,
         a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 2.0, c.ctypes.data + r0 * c.strides[0], c.shape[1])
    np.testing.assert_allclose(c, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_a_gemm_that_computes_wrong_is_not_taken():
    """_works guards against a BLAS whose integer width differs from its symbol's promise."""
    from minicnn.fast.kernels import blas

    def wrong(*args):          # leaves C as it was
        pass
    assert not blas._works(wrong, np.float32)
    if blas.gemm(np.float64) is not None:
        assert blas._works(blas.gemm(np.float64), np.float64)
