"""Channel-major im2col + GEMM, per image: the route for thin layers (few taps per window).

``kernels.conv.im2col`` unrolls a chunk of NCHW images into ``cols (nb, C·kh·kw, L)``,
read from and written back to NCHW directly, so a thin layer (e.g. an RGB input layer,
K = 27) pays no layout moves, which would cost more than the GEMMs:

    forward   y_nᵀ = cols_nᵀ · Wrᵀ     (into a channels-last output)
    backward  dW = Σ_n dy_n · cols_nᵀ,   dcols_n = Wrᵀ · dy_n,   dx = col2im(dcols)   (NCHW)
"""
import numpy as np

from ..kernels import conv as K
from .route import ChunkedConv


class Im2col(ChunkedConv):
    name = "im2col"
    nhwc_input = False

    @staticmethod
    def applies(g):
        return g.groups == 1

    @staticmethod
    def prepare(plan, w, b, post=None):
        return w.reshape(plan.O, -1)

    @staticmethod
    def cols(plan, x_c):
        """The chunk's channel-major columns (nb, K, L) in the worker's ``rows`` buffer."""
        cols = plan.buffer("rows", x_c.shape[0], plan.K, plan.L)
        K.im2col(x_c, *plan.kernel_args[1:], cols)
        return cols

    @classmethod
    def forward_chunk(cls, plan, w2, part, x_c, bias, out):
        yt = out.reshape(-1, plan.L, plan.O)
        np.matmul(cls.cols(plan, x_c).transpose(0, 2, 1), w2.T, out=yt)
        if bias.size:
            K.add_bias(yt.reshape(-1, plan.O), bias)

    @classmethod
    def backward_chunk(cls, plan, w2, part, x_c, g, g_is_nhwc, gw, gx):
        n = g.shape[0]
        g_c = g.reshape(n, plan.O, plan.L) if not g_is_nhwc else g.reshape(n, plan.L, plan.O).transpose(0, 2, 1)
        if gw is not None:
            gw_n = plan.buffer("gw", n, plan.O, plan.K)
            np.matmul(g_c, cls.cols(plan, x_c).transpose(0, 2, 1), out=gw_n)
            gw_n.sum(axis=0, out=gw)
        if gx is not None:
            d_cols = plan.buffer("rows", n, plan.K, plan.L)
            np.matmul(w2.T, g_c, out=d_cols)
            K.col2im(d_cols, *plan.kernel_args[1:], gx)

    @staticmethod
    def grad_slot(plan, w2):
        return w2.shape

    @staticmethod
    def weight_grad(gw, w_shape, plan):
        return gw.reshape(w_shape)
