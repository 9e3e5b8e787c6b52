"""Winograd F(2x2, 3x3): 3x3 stride-1 ungrouped convolutions with 2.25x fewer multiplications.

Each 2x2 block of output pixels is computed from a 4x4 input tile d; over the channels
the work is 16 GEMMs per chunk, one per tile position ξ = 4a + b (Lavin & Gray 2016):

    forward   M_ξ = V_ξ · U_ξ,            V = Bᵀ d B per tile, U = G g Gᵀ, y = Aᵀ M A
    backward  dU_ξ = Σ_chunks V_ξᵀ · dM_ξ,  dM = A dy Aᵀ,   dV_ξ = dM_ξ · U_ξᵀ,  dx = B dV Bᵀ

Exact in exact arithmetic, with rounding errors of the same order as the direct
method's in float32 and float64.  The transforms are Numba kernels
(``kernels.conv.winograd_*``) driven by tables of their nonzero terms.
"""
import numpy as np

from ..kernels import conv as K
from .plan import Plan
from .route import ChunkedConv, nhwc_grad


class Winograd(ChunkedConv):
    name = "winograd"

    @staticmethod
    def applies(g):
        return g.w_shape[2:] == (3, 3) and g.stride == (1, 1) and g.dilation == (1, 1) and g.groups == 1

    @classmethod
    def plan(cls, x_shape, w, options):
        Ho, Wo = options[4]
        tiles = (-(-Ho // 2), -(-Wo // 2))
        plan = Plan(x_shape, w, options, per_image=16 * tiles[0] * tiles[1] * x_shape[1])
        plan.tiles = tiles
        return plan

    @staticmethod
    def prepare(plan, w, b, post=None):
        return winograd_weight(w)

    @staticmethod
    def input_tiles(plan, xh):
        """The transformed input tiles (16, tiles, C) of an NHWC chunk, in the worker's ``rows`` buffer."""
        n = xh.shape[0]
        v = plan.buffer("rows", 16, n * plan.tiles[0] * plan.tiles[1], plan.C)
        K.winograd_input(xh, plan.taps[2], plan.taps[3], *plan.tiles, *_TABLES[plan.dtype][0],
                         padded_tiles(plan, n), v)
        return v

    @classmethod
    def forward_chunk(cls, plan, u, part, xh, bias, out):
        v = cls.input_tiles(plan, xh)
        m = plan.buffer("yt", 16, v.shape[1], plan.O)
        np.matmul(v, u, out=m)
        K.winograd_output(m, *plan.tiles, *_TABLES[plan.dtype][1], out)
        if bias.size:
            K.add_bias(out.reshape(-1, plan.O), bias)

    @classmethod
    def backward_chunk(cls, plan, u, part, xh, g, g_is_nhwc, gw, gx):
        n = g.shape[0]
        gh = nhwc_grad(plan, g, g_is_nhwc, "gh")
        dm = plan.buffer("yt", 16, n * plan.tiles[0] * plan.tiles[1], plan.O)
        K.winograd_output_grad(gh, *plan.tiles, *_TABLES[plan.dtype][2], dm)
        if gw is not None:
            np.matmul(cls.input_tiles(plan, xh).transpose(0, 2, 1), dm, out=gw)
        if gx is not None:
            dv = plan.buffer("rows", 16, dm.shape[1], plan.C)
            np.matmul(dm, u.transpose(0, 2, 1), out=dv)
            K.winograd_input_grad(dv, plan.taps[2], plan.taps[3], *plan.tiles, *_TABLES[plan.dtype][0],
                                  padded_tiles(plan, n), gx)

    @staticmethod
    def grad_slot(plan, u):
        return (16, plan.C, plan.O)

    @staticmethod
    def weight_grad(gu, w_shape, plan):
        return winograd_weight_grad(gu, w_shape)


def padded_tiles(plan, n):
    """Scratch for the chunk zero-padded to whole tiles, NHWC (n, 2·th + 2, 2·tw + 2, C)."""
    return plan.buffer("xp", n, 2 * plan.tiles[0] + 2, 2 * plan.tiles[1] + 2, plan.C)


# Winograd F(2x2, 3x3) matrices (see kernels/conv.py): U = G g Gᵀ per (c, o).
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def _terms(coef, n_out, n_in):
    """The nonzero terms of out[p] = Σ_q coef(p, q) · in[q]: (indices, signs, counts) as arrays,
    each row's terms in increasing q, padded with zeros to the longest row."""
    taps = [[q for q in range(n_in) if coef(p, q)] for p in range(n_out)]
    width = max(map(len, taps))
    signs = [[coef(p, q) for q in row] + [0] * (width - len(row)) for p, row in enumerate(taps)]
    counts = np.array([len(row) for row in taps])
    return np.array([row + [0] * (width - len(row)) for row in taps]), np.array(signs, dtype=np.float64), counts


# (Bᵀ d B)[4a + b] from d[i, j]: 4 terms each; (Aᵀ M A)[2i + j] from M[4a + b]: 9 terms each;
# its adjoint (A dY Aᵀ)[4a + b] from dY[i, j]: 1, 2 or 4 terms.
_IN_TAPS, _IN_SIGNS, _ = _terms(lambda p, q: _BT[p // 4, q // 4] * _BT[p % 4, q % 4], 16, 16)
_IN_TAPS = np.stack([_IN_TAPS // 4, _IN_TAPS % 4], axis=-1)
_OUT_TAPS, _OUT_SIGNS, _ = _terms(lambda p, q: _AT[p // 2, q // 4] * _AT[p % 2, q % 4], 4, 16)
_OUT_GRAD_TAPS, _OUT_GRAD_SIGNS, _OUT_GRAD_COUNTS = _terms(lambda k, p: _AT[p // 2, k // 4] * _AT[p % 2, k % 4], 16, 4)
# Per dtype: the input transform's (taps, signs), the output transform's, and its adjoint's (taps, signs, counts).
_TABLES = {np.dtype(t): ((_IN_TAPS, _IN_SIGNS.astype(t)), (_OUT_TAPS, _OUT_SIGNS.astype(t)),
                           (_OUT_GRAD_TAPS, _OUT_GRAD_SIGNS.astype(t), _OUT_GRAD_COUNTS)) for t in (np.float32, np.float64)}


def winograd_weight(w):
    """w (O, C, 3, 3) -> U (16, C, O), U[4a + b, c, o] = (G w[o, c] Gᵀ)[a, b]."""
    O, C = w.shape[:2]
    g = _G.astype(w.dtype)
    gw = np.tensordot(g, w.reshape(O * C, 3, 3), axes=(1, 1))         # (4, OC, 3)
    return np.ascontiguousarray(np.tensordot(gw, g, axes=(2, 1)).reshape(4, O, C, 4)
                                .transpose(0, 3, 2, 1)).reshape(16, C, O)


def winograd_weight_grad(du, w_shape):
    """The adjoint of winograd_weight: dU (16, C, O) -> dw (O, C, 3, 3) = Gᵀ dU G."""
    O, C = w_shape[:2]
    g = _G.astype(du.dtype)
    gd = np.tensordot(g, du.reshape(4, 4 * C * O), axes=(0, 0))        # (3, 4CO): Gᵀ over a
    gdg = np.tensordot(gd.reshape(3, 4, C * O), g, axes=(1, 0))       # (3, CO, 3): · G over b
    return np.ascontiguousarray(gdg.reshape(3, C, O, 3).transpose(2, 1, 0, 3))
