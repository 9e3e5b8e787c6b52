"""Numba kernels on raw ndarrays: the loops that NumPy cannot express in one pass.

No Tensor here; the differentiable ops in ``minicnn.ops`` call these.  Each kernel
is a plain Python function compiled with ``njit(cache=True, ...)`` beside its
definition, so ``NUMBA_DISABLE_JIT=1`` runs the same code as Python.

    conv   im2col / col2im and the moves between GEMM and NCHW layouts
    pool   max pooling with stored argmax, average and adaptive average pooling
"""
