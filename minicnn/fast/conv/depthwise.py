"""Depthwise convolutions (one input channel per group): direct loops over the taps.

With C/G = 1 the GEMMs of the other routes would be too thin for BLAS, so the Numba
kernels ``kernels.conv.depthwise``/``depthwise_backward`` loop over the kh·kw taps of
each plane, NCHW in and out; the forward kernel also applies the bias, or the
inference epilogue act(y·scale + shift + residual), while the plane is in cache.
"""
import numpy as np

from ..kernels import conv as K
from ..kernels.norm import CLAMPS
from ..layout import EMPTY
from .route import ChunkedConv


class Depthwise(ChunkedConv):
    name = "depthwise"
    nhwc_input = False
    channels_last_output = False
    own_epilogue = True

    @staticmethod
    def applies(g):
        return g.w_shape[1] == 1 and g.groups > 1

    @staticmethod
    def prepare(plan, w, b, post=None):
        """The taps (O, kh, kw) and the epilogue (scale, shift, residual, activation)."""
        taps = w.reshape(plan.O, plan.kh, plan.kw)
        if post is None:
            return taps, (np.ones(plan.O), np.zeros(plan.O) if b is None else b.astype(np.float64),
                          EMPTY[w.dtype][4], None)
        scale, shift, res, act, _ = post       # conv2d_fused pools separately after this route
        return taps, (scale, shift, EMPTY[w.dtype][4] if res is None else np.ascontiguousarray(res), act)

    @staticmethod
    def forward_chunk(plan, weights, part, x_c, bias, out):
        taps, (scale, shift, res, act) = weights
        K.depthwise(x_c, taps, scale, shift, res[part] if res.size else res, *CLAMPS[act], *plan.taps, out)

    @staticmethod
    def backward_chunk(plan, weights, part, x_c, g, g_is_nhwc, gw, gx):
        empty = EMPTY[plan.dtype]
        K.depthwise_backward(x_c, weights[0], g, *plan.taps,
                             empty[4] if gx is None else gx, empty[3] if gw is None else gw)

    @staticmethod
    def grad_slot(plan, weights):
        return (plan.O, plan.kh, plan.kw)

    @staticmethod
    def weight_grad(gw, w_shape, plan):
        return gw.reshape(w_shape)
