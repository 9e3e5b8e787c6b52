"""Row taps: ungrouped convolutions unrolled along the width only, one image at a time.

The windows are unrolled along the width only, ``wins (R·Wo, kw·C)`` per image, with the
input rows grouped by their residue mod sh; kernel row i's part of the im2row rows is
then a contiguous block of wins, and kh GEMMs per image sum into the output (BLAS's own
gemm with beta = 1, ``kernels.blas``, called from the Numba kernels
``kernels.conv.rowtap_forward``/``rowtap_backward``):

    forward   Yᵀ_n[oh rows of tap i] += wins_n[tap i] · Wt[i]      Wt = Wrᵀ by kernel rows (kh, kw·C, O)
    backward  dWt[i] += wins_n[tap i]ᵀ · dYᵀ_n[...],   dwins_n[tap i] += dYᵀ_n[...] · Wt[i]ᵀ,
              dx = row2im(dwins)

wins is about kh/sh times smaller than im2row's rows and stays in L2 between its GEMMs.
Needs a CBLAS gemm in the process (``kernels.blas.gemm``).
"""
import numpy as np

from ..kernels import conv as K
from ..kernels.blas import gemm
from ..layout import EMPTY
from .plan import Plan, rows_weight, rows_weight_grad
from .route import ChunkedConv, nhwc_grad


class RowTaps(ChunkedConv):
    name = "rowtaps"

    @staticmethod
    def applies(g):
        return g.groups == 1 and gemm(g.dtype) is not None

    @classmethod
    def plan(cls, x_shape, w, options):
        plan = Plan(x_shape, w, options)
        sh, pt, dh = plan.taps[0], plan.taps[2], plan.taps[4]
        taps, classes = tap_rows(plan.kh, sh, dh, pt, plan.H, plan.Ho)
        plan.rowtap_args = (taps, classes, plan.kw, sh, plan.taps[1], plan.taps[3], plan.taps[5], plan.Wo)
        plan.wins_shape = (int(classes[:, 2].sum()) * plan.Wo, plan.kw * plan.C)
        return plan

    @staticmethod
    def prepare(plan, w, b, post=None):
        """Wrᵀ (1, kh·kw·C, O) as Wt (kh, kw·C, O), contiguous: the weight by kernel rows."""
        return np.ascontiguousarray(rows_weight(w, 1).transpose(0, 2, 1)[0]).reshape(-1, plan.wins_shape[1], plan.O)

    @staticmethod
    def forward_chunk(plan, wt, part, xh, bias, out):     # the kernel adds the bias too
        K.rowtap_forward(gemm(plan.dtype), xh, wt, bias, *plan.rowtap_args, plan.buffer("rows", *plan.wins_shape),
                         out.reshape(xh.shape[0], plan.L, plan.O))

    @staticmethod
    def backward_chunk(plan, wt, part, xh, g, g_is_nhwc, gw, gx):   # dWtᵀ has dWrᵀ's memory layout
        n, empty = g.shape[0], EMPTY[plan.dtype]
        K.rowtap_backward(gemm(plan.dtype), empty[4] if xh is None else xh, wt,
                          nhwc_grad(plan, g, g_is_nhwc).reshape(n, plan.L, plan.O), *plan.rowtap_args,
                          plan.buffer("rows", *plan.wins_shape), plan.buffer("drows", *plan.wins_shape),
                          empty[3] if gw is None else gw, empty[4] if gx is None else gx)

    @staticmethod
    def grad_slot(plan, wt):
        return (1, plan.K, plan.O)

    @staticmethod
    def weight_grad(gw, w_shape, plan):
        return rows_weight_grad(gw, w_shape, 1)


def tap_rows(kh, sh, dh, pt, H, Ho):
    """The row taps and the wins row classes (see ``kernels.conv``), int64 arrays:
    taps (T, 4), per kernel row i that some output row reads inside the image,
    (i, first wins row, first output row, output rows), the one with the most output
    rows first (on a tie, the lower i); classes (R, 3), (rho, first wins row, rows) per
    residue rho of the input rows mod sh that a tap reads."""
    def class_rows(rho):                           # input rows rho, rho + sh, ... < H
        return -(-(H - rho) // sh)
    reads = []
    for i in range(kh):
        rho, q = (i * dh - pt) % sh, (i * dh - pt) // sh   # output row oh reads input row (oh + q)·sh + rho
        oh0, oh1 = max(0, -q), min(Ho, class_rows(rho) - q)
        if oh1 > oh0:
            reads.append((i, rho, oh0 + q, oh0, oh1 - oh0))
    classes, base = {}, 0
    for rho in sorted({r[1] for r in reads}):
        classes[rho] = (rho, base, class_rows(rho))
        base += classes[rho][2]
    taps = sorted(((i, classes[rho][1] + k, oh0, m) for i, rho, k, oh0, m in reads), key=lambda t: -t[3])
    return np.array(taps, np.int64).reshape(-1, 4), np.array(list(classes.values()), np.int64).reshape(-1, 3)


