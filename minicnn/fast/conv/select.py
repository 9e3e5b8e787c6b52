"""The static choice among the convolution routes that apply to a geometry.

A rule of thumb per route, measured on the machine the routes were first tuned on
(the measurements and why each threshold sits where it does: docs/performance.md,
"Convolution routes").  Other machines may prefer other routes.
"""

WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_WIDTH = 32, 64     # min(C, O) and max(C, O)
IM2COL_MAX_TAPS = 32                                   # C·kh·kw per window
ROW_TAPS_MIN_PIXELS, ROW_TAPS_MAX_WEIGHT = 64, 16384   # output pixels per image; kw·C·O


def preferred(name, g):
    """True if the static rules prefer route ``name`` for geometry ``g`` (where it applies)."""
    C, O, kw = g.x_shape[1], g.w_shape[0], g.w_shape[3]
    if name == "winograd":
        return min(C, O) >= WINOGRAD_MIN_CHANNELS and max(C, O) >= WINOGRAD_MIN_WIDTH
    if name == "winograd4":     # autotuned only: the static choices keep the float32 rounding of the
        return False            # other routes (F(4x4)'s is ~10x theirs, tests/test_winograd4.py)
    if name == "im2col":
        return C * g.w_shape[2] * kw <= IM2COL_MAX_TAPS
    if name == "rowtaps":
        return g.out_hw[0] * g.out_hw[1] >= ROW_TAPS_MIN_PIXELS and kw * C * O <= ROW_TAPS_MAX_WEIGHT
    return True


def choice(g, candidates):
    """The first of ``candidates`` (in the routes table's order) that the rules prefer for ``g``."""
    return next(r for r in candidates if preferred(r.name, g))
