"""Numba kernels on raw ndarrays: the loops that NumPy cannot express in one pass.

No Tensor here; the differentiable ops in ``minicnn.ops`` call these.  Each kernel
is a plain Python function compiled with ``njit(cache=True, ...)`` beside its
definition, so ``NUMBA_DISABLE_JIT=1`` runs the same code as Python.

    conv        im2row / row2im, row taps, im2col / col2im, depthwise, layout moves
    winograd    the tile transforms of Winograd F(2x2, 3x3) and F(4x4, 3x3)
    blas        the CBLAS gemm of NumPy's BLAS, for kernels that call it themselves
    pool        max pooling with stored argmax (NCHW and channels-last 2x2), average pooling
    norm        row and column statistics of the normalization layers
    activation  ReLU;  optim  fused Adam;  special  erf;  reduce  channels-last column sums
"""
