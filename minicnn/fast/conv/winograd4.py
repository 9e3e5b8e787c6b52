"""Winograd F(4x4, 3x3): 3x3 stride-1 ungrouped convolutions with 4x fewer multiplications.

The route of ``winograd.py`` with 6x6 input tiles giving 4x4 output tiles (Lavin & Gray
2016, points 0, ±1, ±2, ∞): 36 GEMMs per chunk, one per tile position ξ = 6a + b,

    forward   M_ξ = V_ξ · U_ξ    V = Bᵀ d B (36, tiles, C), U = G g Gᵀ (36, C, O), y = Aᵀ M A
    backward  dM = A dy Aᵀ,  dU_ξ = Σ_chunks V_ξᵀ · dM_ξ,  dV_ξ = dM_ξ · U_ξᵀ,  dx = B dV Bᵀ,
              dw = Gᵀ dU G

36 multiplications per 16 output pixels and channel pair against 144 for the direct
method (F(2x2, 3x3): 16 per 4, 2.25x).  The price is rounding: Bᵀ and Aᵀ have entries up
to 5 and 8 and G fractions down to 1/24, so in float32 the forward's error is ~10x the
other routes' (~1e-5 of the output's scale against ~5e-7, at 128-256 channels) and the
gradients' ~5x (``tests/test_winograd4.py``, ``benchmarks/conv_routes.py``); float64 stays
exact to ~1e-14.
"""
from .winograd import Transform, Winograd

F4x4 = Transform(BT=[[4, 0, -5, 0, 1, 0],
                     [0, -4, -4, 1, 1, 0],
                     [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0],
                     [0, 2, -1, -2, 1, 0],
                     [0, 4, 0, -5, 0, 1]],
                 G=[[1 / 4, 0, 0],
                    [-1 / 6, -1 / 6, -1 / 6],
                    [-1 / 6, 1 / 6, -1 / 6],
                    [1 / 24, 1 / 12, 1 / 6],
                    [1 / 24, -1 / 12, 1 / 6],
                    [0, 0, 1]],
                 AT=[[1, 1, 1, 1, 1, 0],
                     [0, 1, -1, 2, -2, 0],
                     [0, 1, 1, 4, 4, 0],
                     [0, 1, -1, 8, -8, 1]])


class Winograd4(Winograd):
    name = "winograd4"
    transform = F4x4
