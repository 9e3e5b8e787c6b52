"""Numba kernels for ReLU on flat arrays: one pass each, serial, GIL released, so
``minicnn.ops.activation`` runs slices of a large activation on the worker threads
(NumPy's ``np.maximum`` and ``g * (y > 0)`` run on one core, the second in two passes;
measurements in docs/performance.md, "ReLU")."""
from numba import njit


def _relu(x, y):
    """y = max(x, 0), NaN kept (as np.maximum and PyTorch); x, y 1-D of one length."""
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 or v != v else 0


def _relu_backward(g, y, gx):
    """gx = g where y > 0, else 0 (PyTorch's threshold_backward); all 1-D of one length."""
    for i in range(g.size):
        gx[i] = g[i] if y[i] > 0 else 0


relu = njit(cache=True, nogil=True)(_relu)
relu_backward = njit(cache=True, nogil=True)(_relu_backward)
