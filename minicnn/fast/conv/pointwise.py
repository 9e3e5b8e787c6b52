"""1x1 convolutions (stride 1, no padding, no groups): a GEMM on the NHWC image itself.

The rows of ``im2row`` would be the NHWC pixels unchanged, so there is no unrolling:

    forward   Yᵀ = Xᵀ · Wᵀ,    backward   dW = dYᵀᵀ · Xᵀ,   dXᵀ = dYᵀ · W      (pixels × channels)
"""
import numpy as np

from .im2row import Im2row


class Pointwise(Im2row):
    name = "pointwise"

    @staticmethod
    def applies(g):
        return (g.w_shape[2:] == (1, 1) and g.stride == (1, 1) and g.padding == ((0, 0), (0, 0))
                and g.groups == 1)

    @classmethod
    def rows(cls, plan, xh):
        return xh.reshape(-1, plan.K)

    @staticmethod
    def input_grad(plan, wr, gt_g, gx):
        np.matmul(gt_g, wr, out=plan.grouped(gx.reshape(-1, plan.K)))
