"""Direct convolution: register-blocked loops on NHWC images, no GEMM (``kernels.direct``).

For thin layers (16-32 channels) the GEMM routes hand BLAS products of 16-32 columns and
K = kw·C of 48-96, which it runs well below its peak.  Here a block of 8 output pixels x
16 (or 32) output channels stays in SIMD registers while the loops run over the taps
and input channels: one broadcast input value times one 16-wide weight vector per fused
multiply-add, as oneDNN's direct AVX-512 kernels do:

    forward   y = bias + conv(x, Wd)                 Wd (kh, kw, C, O↑16), x zero-padded per image
    backward  dx = conv(dy zero-padded, flip(w)ᵀ)    stride 1; with a stride, im2row's dYᵀ · Wr and row2im
              dW = Σ_pixels x-window ⊗ dy            blocks of 8 taps x 16 (32) output channels

Any kernel size, stride, padding and dilation; no groups.  Output channels are rounded
up to 16 with zero weights, so a layer with few outputs (or, for dx, few inputs) wastes
most of its work: the autotuner leaves such layers to the other routes.

Measured on one thread of an Intel Xeon with AVX-512 (``lscpu`` model 207), float32,
the forward kernel alone: 16 -> 16 channels on 32x32 ~90-100 GFLOP/s, 32 -> 32 on
16x16 ~130 (the 32-channel blocks); per layer, forward and backward, against the other
routes: the commit that added this route.
"""
import numpy as np

from ..kernels import direct as K
from ..layout import EMPTY
from .im2row import Im2row
from .plan import Plan, rows_weight
from .route import ChunkedConv, nhwc_grad


def round_up(n, m):
    return -(-n // m) * m


class Direct(ChunkedConv):
    name = "direct"

    @staticmethod
    def applies(g):
        return g.groups == 1

    @classmethod
    def plan(cls, x_shape, w, options):
        plan = Plan(x_shape, w, options)
        sh, sw, pt, pl, dh, dw = plan.taps
        hp, wp = K.padded_shape(plan.Ho, plan.Wo, plan.kh, plan.kw, sh, sw, dh, dw)
        plan.padded = hp * wp * plan.C + K.PIXELS     # the weight gradient reads up to PIXELS past the end
        plan.Op = round_up(plan.O, K.LANES)
        # The weight gradient's taps per kernel row, in runs contiguous in the padded image
        # (kernels.direct.direct_weight_grad): one of kw·C taps, or kw of C with dilation.
        plan.runs, plan.run = (1, plan.kw * plan.C) if dw == 1 else (plan.kw, plan.C)
        # The input gradient as a convolution of dy padded by the flipped kernel's reach.
        plan.flipped = (sh == 1 and sw == 1, (plan.kh - 1) * dh - pt, (plan.kw - 1) * dw - pl)
        if plan.flipped[0]:
            hq, wq = K.padded_shape(plan.H, plan.W, plan.kh, plan.kw, 1, 1, dh, dw)
            plan.padded_grad = hq * wq * plan.O
        return plan

    @staticmethod
    def prepare(plan, w, b, post=None):
        """Wd (kh, kw, C, Op), the kernel flipped and transposed (kh, kw, O, C↑16) for the
        input gradient at stride 1, else im2row's Wr (1, O, kh·kw·C)."""
        O, C = plan.O, plan.C
        wd = np.zeros((plan.kh, plan.kw, C, plan.Op), w.dtype)
        wd[..., :O] = w.transpose(2, 3, 1, 0)
        if not plan.flipped[0]:
            return wd, rows_weight(w, 1)
        wt = np.zeros((plan.kh, plan.kw, O, round_up(C, K.LANES)), w.dtype)
        wt[..., :C] = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
        return wd, wt

    @staticmethod
    def forward_chunk(plan, weights, part, xh, bias, out):
        sh, sw, pt, pl, dh, dw = plan.taps
        K.direct_conv(xh, weights[0], bias, sh, sw, pt, pl, dh, dw, plan.buffer("xp", 1, plan.padded)[0],
                      plan.buffer("acc", 1, 2 * K.PIXELS * K.LANES)[0], out)

    @staticmethod
    def backward_chunk(plan, weights, part, xh, g, g_is_nhwc, gw, gx):
        sh, sw, pt, pl, dh, dw = plan.taps
        gh = nhwc_grad(plan, g, g_is_nhwc)
        if gw is not None:
            gw[...] = 0
            K.direct_weight_grad(xh, gh, plan.kw, sh, sw, pt, pl, dh, dw, plan.buffer("xp", 1, plan.padded)[0],
                                 plan.buffer("gp", 1, plan.L * plan.Op)[0], gw)
        if gx is None:
            return
        stride_one, top, left = plan.flipped
        if stride_one:
            K.direct_conv(gh, weights[1], EMPTY[plan.dtype][1], 1, 1, top, left, dh, dw,
                          plan.buffer("gq", 1, plan.padded_grad)[0], plan.buffer("acc", 1, 2 * K.PIXELS * K.LANES)[0],
                          gx)
        else:
            Im2row.input_grad(plan, weights[1], plan.grouped(gh.reshape(-1, plan.O)), gx)

    @staticmethod
    def grad_slot(plan, weights):
        return plan.kh, plan.runs, round_up(plan.run, K.PIXELS), plan.Op

    @staticmethod
    def weight_grad(gw, w_shape, plan):
        gw = gw[:, :, :plan.run, :plan.O].reshape(plan.kh, plan.kw, plan.C, plan.O)
        return np.ascontiguousarray(gw.transpose(3, 2, 0, 1))
