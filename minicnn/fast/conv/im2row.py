"""im2row + GEMM: the general route (any groups, stride, padding, dilation).

Per chunk of images, ``kernels.conv.im2row`` unrolls each output pixel's window into
one row of ``rows (nb·Ho·Wo, C·kh·kw)`` (pixel-major, from the chunk's NHWC memory, each
group's window contiguous), and one GEMM per group does the work (Wr: the weight with
each output channel's window in row order, ``plan.rows_weight``):

    forward   Yᵀ_g    = rows_g · Wr_gᵀ                 (nb·L, O/G), + bias
    backward  dWr_gᵀ  = Σ_chunks rows_gᵀ · dYᵀ_g
              drows_g = dYᵀ_g · Wr_g,   dx = row2im(drows)

Yᵀ is the output in NHWC order, written in place into a channels-last output.  The
backward pass recomputes the rows from the input's NHWC memory instead of keeping the
9x larger rows alive between the passes.
"""
import numpy as np

from ..kernels import conv as K
from .plan import rows_weight, rows_weight_grad
from .route import ChunkedConv, nhwc_grad


class Im2row(ChunkedConv):
    name = "im2row"

    @staticmethod
    def applies(g):
        return True

    @staticmethod
    def prepare(plan, w, b, post=None):
        wr = rows_weight(w, plan.groups)
        return wr, wr.transpose(0, 2, 1)

    @classmethod
    def rows(cls, plan, xh):
        """The pixel-major rows (nb·L, K) of an NHWC chunk, in the worker's ``rows`` buffer."""
        rows = plan.buffer("rows", xh.shape[0] * plan.L, plan.K)
        K.im2row(xh, *plan.kernel_args, rows)
        return rows

    @classmethod
    def forward_chunk(cls, plan, weights, part, xh, bias, out):
        yt = out.reshape(-1, plan.O)
        np.matmul(plan.grouped(cls.rows(plan, xh)), weights[1], out=plan.grouped(yt))
        if bias.size:
            K.add_bias(yt, bias)

    @classmethod
    def backward_chunk(cls, plan, weights, part, xh, g, g_is_nhwc, gw, gx):
        n = g.shape[0]
        gt_g = plan.grouped(nhwc_grad(plan, g, g_is_nhwc).reshape(n * plan.L, plan.O))
        if gw is not None:               # as dWrᵀ: the faster GEMM orientation here
            np.matmul(plan.grouped(cls.rows(plan, xh)).transpose(0, 2, 1), gt_g, out=gw)
        if gx is not None:
            cls.input_grad(plan, weights[0], gt_g, gx)

    @staticmethod
    def input_grad(plan, wr, gt_g, gx):
        """dx (NHWC chunk) = row2im(dYᵀ · Wr)."""
        d_rows = plan.buffer("rows", gx.shape[0] * plan.L, plan.K)
        np.matmul(gt_g, wr, out=plan.grouped(d_rows))
        gx[...] = 0
        K.row2im(d_rows, *plan.kernel_args, gx)

    @staticmethod
    def grad_slot(plan, weights):
        return weights[1].shape

    @staticmethod
    def weight_grad(gw, w_shape, plan):
        return rows_weight_grad(gw, w_shape, plan.groups)
