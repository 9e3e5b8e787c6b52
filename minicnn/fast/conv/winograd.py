"""Winograd F(2x2, 3x3): 3x3 stride-1 ungrouped convolutions with 2.25x fewer multiplications.

Each m x m block of output pixels (m = 2 here) is computed from an n x n input tile d
(n = m + 2); over the channels the work is n² GEMMs per chunk, one per tile position
ξ = n·a + b (Lavin & Gray 2016):

    forward   M_ξ = V_ξ · U_ξ,            V = Bᵀ d B per tile, U = G g Gᵀ, y = Aᵀ M A
    backward  dU_ξ = Σ_chunks V_ξᵀ · dM_ξ,  dM = A dy Aᵀ,   dV_ξ = dM_ξ · U_ξᵀ,  dx = B dV Bᵀ,
              dw = Gᵀ dU G

with V (n², tiles, C), U (n², C, O), M (n², tiles, O).  Exact in exact arithmetic; for
m = 2 the rounding errors are of the same order as the direct method's in float32 and
float64.  :class:`Winograd` is written for any :class:`Transform` (its matrices Bᵀ, G, Aᵀ):
``winograd4.py`` is the same route with F(4x4, 3x3)'s.  The tile transforms are the Numba
kernels of ``kernels.winograd``, driven by tables of the matrices' nonzero terms.
"""
import numpy as np

from ..kernels import winograd as KW
from ..layout import EMPTY
from .plan import Plan
from .route import ChunkedConv, nhwc_grad


class Transform:
    """The matrices of Winograd F(m x m, 3x3): Bᵀ (n, n), G (n, 3), Aᵀ (m, n) with n = m + 2,
    and the kernels' tables of Bᵀ, B, Aᵀ and A (per dtype: taps, coefficients, counts)."""

    def __init__(self, BT, G, AT):
        self.BT, self.G, self.AT = (np.asarray(a, np.float64) for a in (BT, G, AT))
        self.m, self.n = self.AT.shape
        assert self.BT.shape == (self.n, self.n) and self.G.shape == (self.n, 3) and self.n == self.m + 2
        self.tables = {np.dtype(t): {name: terms(mat, t) for name, mat in
                                     (("input", self.BT), ("input_grad", self.BT.T),
                                      ("output", self.AT), ("output_grad", self.AT.T))}
                       for t in (np.float32, np.float64)}

    def weight(self, w):
        """w (O, C, 3, 3) -> U (n², C, O), U[n·a + b, c, o] = (G w[o, c] Gᵀ)[a, b], computed in
        float64 (G has fractions such as 1/6 that float32 does not hold) and rounded once."""
        O, C = w.shape[:2]
        n = self.n
        gw = np.tensordot(self.G, w.reshape(O * C, 3, 3).astype(np.float64), axes=(1, 1))   # (n, OC, 3)
        u = np.tensordot(gw, self.G, axes=(2, 1)).reshape(n, O, C, n).transpose(0, 3, 2, 1)  # (a, b, C, O)
        return np.ascontiguousarray(u, dtype=w.dtype).reshape(n * n, C, O)

    def weight_grad(self, du, w_shape):
        """The adjoint of :meth:`weight`: dU (n², C, O) -> dw (O, C, 3, 3) = Gᵀ dU G."""
        O, C = w_shape[:2]
        n = self.n
        gd = np.tensordot(self.G, du.reshape(n, n * C * O).astype(np.float64), axes=(0, 0))   # (3, nCO): Gᵀ over a
        gdg = np.tensordot(gd.reshape(3, n, C * O), self.G, axes=(1, 0))                     # (3, CO, 3): · G over b
        return np.ascontiguousarray(gdg.reshape(3, C, O, 3).transpose(2, 1, 0, 3), dtype=du.dtype)


def terms(mat, dtype):
    """The nonzero terms of out[p] = Σ_q mat[p, q] · in[q]: column indices (p, MAX_TERMS),
    coefficients (p, MAX_TERMS) in ``dtype`` (both padded with zeros) and counts (p,)."""
    p = mat.shape[0]
    taps = np.zeros((p, KW.MAX_TERMS), np.int64)
    coefs = np.zeros((p, KW.MAX_TERMS), dtype)
    counts = np.zeros(p, np.int64)
    for row in range(p):
        nonzero = np.flatnonzero(mat[row])
        if len(nonzero) > KW.MAX_TERMS:
            raise ValueError(f"Winograd transform: row {row} has {len(nonzero)} nonzero terms, "
                             f"the kernels take at most {KW.MAX_TERMS}")
        counts[row] = len(nonzero)
        taps[row, :len(nonzero)] = nonzero
        coefs[row, :len(nonzero)] = mat[row, nonzero]
    return taps, coefs, counts


# Winograd F(2x2, 3x3), points 0, ±1, ∞.
F2x2 = Transform(BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
                 G=[[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
                 AT=[[1, 1, 1, 0], [0, 1, -1, -1]])


class TransformedWeight:
    """U = G g Gᵀ (n², C, O) of one call, and its transpose Uᵀ (n², O, C), made contiguous the
    first time a backward chunk asks: OpenBLAS multiplied dM by a transposed view of U up to
    2x slower with 16-32 channels (measured on an AVX-512 Xeon)."""

    def __init__(self, u):
        self.u, self._ut = u, None

    def transposed(self):
        if self._ut is None:        # two workers may both make it: the same values either way
            self._ut = np.ascontiguousarray(self.u.transpose(0, 2, 1))
        return self._ut


class Winograd(ChunkedConv):
    name = "winograd"
    transform = F2x2

    @staticmethod
    def applies(g):
        return g.w_shape[2:] == (3, 3) and g.stride == (1, 1) and g.dilation == (1, 1) and g.groups == 1

    @classmethod
    def plan(cls, x_shape, w, options):
        Ho, Wo = options[4]
        m, n = cls.transform.m, cls.transform.n
        tiles = (-(-Ho // m), -(-Wo // m))
        plan = Plan(x_shape, w, options, per_image=n * n * tiles[0] * tiles[1] * x_shape[1])
        plan.tiles = tiles
        plan.positions = n * n
        plan.tables = cls.transform.tables[plan.dtype]
        return plan

    @classmethod
    def prepare(cls, plan, w, b, post=None):
        return TransformedWeight(cls.transform.weight(w))

    @classmethod
    def input_tiles(cls, plan, xh):
        """The transformed input tiles V (n², tiles, C) of an NHWC chunk, in the worker's ``rows`` buffer."""
        v = plan.buffer("rows", plan.positions, xh.shape[0] * plan.tiles[0] * plan.tiles[1], plan.C)
        KW.winograd_tiles(xh, plan.taps[2], plan.taps[3], *plan.tiles, cls.transform.n, *plan.tables["input"], v)
        return v

    @classmethod
    def forward_chunk(cls, plan, u, part, xh, bias, out):
        v = cls.input_tiles(plan, xh)
        m = plan.buffer("yt", plan.positions, v.shape[1], plan.O)
        np.matmul(v, u.u, out=m)
        KW.winograd_untile(m, 0, 0, *plan.tiles, *plan.tables["output"], bias, False, out)

    @classmethod
    def backward_chunk(cls, plan, u, part, xh, g, g_is_nhwc, gw, gx):
        n = g.shape[0]
        gh = nhwc_grad(plan, g, g_is_nhwc, "gh")
        dm = plan.buffer("yt", plan.positions, n * plan.tiles[0] * plan.tiles[1], plan.O)
        KW.winograd_tiles(gh, 0, 0, *plan.tiles, cls.transform.m, *plan.tables["output_grad"], dm)
        if gw is not None:
            np.matmul(cls.input_tiles(plan, xh).transpose(0, 2, 1), dm, out=gw)
        if gx is not None:
            dv = plan.buffer("rows", plan.positions, dm.shape[1], plan.C)
            np.matmul(dm, u.transposed(), out=dv)
            KW.winograd_untile(dv, plan.taps[2], plan.taps[3], *plan.tiles, *plan.tables["input_grad"],
                               EMPTY[plan.dtype][1], True, gx)

    @staticmethod
    def grad_slot(plan, u):
        return (plan.positions, plan.C, plan.O)

    @classmethod
    def weight_grad(cls, gu, w_shape, plan):
        return cls.transform.weight_grad(gu, w_shape)
