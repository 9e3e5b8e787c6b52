"""Fast convolution routes, one per file, each tested equal to ``minicnn.ops.conv.Conv2d``.

    im2row      the general route: windows unrolled pixel-major, one GEMM per group
    pointwise   1x1 stride-1 convolutions: a GEMM on the NHWC image itself
    im2col      thin layers (few taps per window): channel-major columns, NCHW in place
    rowtaps     ungrouped: windows unrolled along the width only, BLAS gemm per kernel row
    winograd    3x3 stride 1: Winograd F(2x2, 3x3), 2.25x fewer multiplications
    winograd4   3x3 stride 1: Winograd F(4x4, 3x3), 4x fewer multiplications, float32 a little less exact
    depthwise   one input channel per group: direct loops over the taps
    direct      ungrouped, thin layers: blocks of 8 pixels x 16 output channels in SIMD registers, no GEMM

:data:`ROUTES` is the one table of them.  ``minicnn.ops.conv2d`` asks :func:`choose`
(registered with ``minicnn.ops.dispatch``) which route runs a geometry: the one forced
with ``route=NAME``, else the fastest of those that apply, timed on this machine the
first time the geometry is met (:mod:`.autotune`), or ``select.choice``'s with
``MINICNN_AUTOTUNE=0``.  :func:`choices` lists what was chosen and why.
"""
import numpy as np

from ...ops import dispatch
from ...ops.conv import Conv2d, conv_geometry
from ...ops.activation import relu, relu6
from ...ops.pool import max_pool2d
from ...ops.util import raw
from ...tensor import Tensor, is_grad_enabled
from . import autotune
from .autotune import choices, format_choices
from .depthwise import Depthwise
from .direct import Direct
from .im2col import Im2col
from .im2row import Im2row
from .pointwise import Pointwise
from .rowtaps import RowTaps
from .winograd import Winograd
from .winograd4 import Winograd4

ROUTES = {r.name: r for r in (Depthwise, Pointwise, Winograd, Winograd4, Im2col, RowTaps, Im2row, Direct)}

__all__ = ["ROUTES", "choices", "choose", "conv2d_fused", "format_choices"]


def choose(g, route=None):
    """The route class for geometry ``g``: ``route`` if given (it must apply), else the
    fastest measured on this machine, or the static table's with ``MINICNN_AUTOTUNE=0``
    (:mod:`.autotune`; :func:`choices` lists what was chosen and why)."""
    if route is not None and not ROUTES[route].applies(g):
        raise ValueError(f"conv2d: route {route!r} cannot run this convolution ({g.describe()}); "
                         f"routes that can: {', '.join(n for n, r in ROUTES.items() if r.applies(g))}")
    return autotune.pick(g, ROUTES, route)


dispatch.register("conv2d", choose, ROUTES)


def conv2d_fused(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, scale=None,
                 residual=None, activation=None, pool=None, route=None):
    """act(conv2d(x, weight)·scale + bias + residual), each part optional, then with
    ``pool=2`` a 2x2 max pooling (stride 2, no padding, floor).

    The epilogue runs on each chunk of the output while it is in cache (as oneDNN's
    post-ops): an eval-mode batch norm folded into the convolution is such a ``scale``
    (O,) and ``bias`` (O,); ``residual`` has the convolution's output shape; ``activation``
    is None, 'relu' or 'relu6'; with ``pool`` only the pooled output is written (a route
    with an epilogue of its own, depthwise, pools in a separate pass).  Gradients flow
    through pool(act(conv2d(x, weight) + bias)), no scale or residual: the epilogue then
    records each window's winner for the backward pass (``minicnn.fast.conv.route``);
    any other epilogue is for inference and raises if a gradient is wanted.  Used by
    ``minicnn.nn.fuse``."""
    layer = "conv2d_fused"
    if activation not in (None, "relu", "relu6"):
        raise ValueError(f"{layer}: activation must be None, 'relu' or 'relu6', got {activation!r}")
    if pool not in (None, 2):
        raise ValueError(f"{layer}: pool must be None or 2 (a 2x2 max pooling of stride 2), got {pool!r}")
    wants_grad = is_grad_enabled() and any(getattr(t, "requires_grad", False)
                                           for t in (x, weight, bias, scale, residual))
    if wants_grad and not (pool and scale is None and residual is None):
        raise RuntimeError(f"{layer}: gradients flow only through pool(act(conv + bias)) (pool=2, no scale or "
                           "residual); any other epilogue is for inference and passes no gradient: run it inside "
                           "minicnn.no_grad() or on tensors that need none")
    g = conv_geometry(raw(x), raw(weight), raw(bias), stride, padding, dilation, groups, layer)
    O = g.w_shape[0]
    if scale is not None and tuple(scale.shape) != (O,):
        raise ValueError(f"{layer}: scale must have shape ({O},), got {tuple(scale.shape)}")
    if residual is not None and tuple(residual.shape) != g.out_shape:
        raise ValueError(f"{layer}: residual must have the output's shape {g.out_shape}, "
                         f"got {tuple(residual.shape)}")
    if residual is not None and residual.dtype != g.dtype:
        raise TypeError(f"{layer}: residual dtype {residual.dtype} differs from input dtype {g.dtype}")
    if pool and min(g.out_hw) < 2:
        raise ValueError(f"{layer}: a 2x2 pooling needs an output of at least 2x2 pixels, got {g.out_hw}")
    impl = dispatch.implementation("conv2d", Conv2d, g, route)
    if wants_grad and (impl is Conv2d or impl.own_epilogue):     # the steps one by one, each with its backward
        y = impl.apply(x, weight, bias, **g.options)
        y = y if activation is None else {"relu": relu, "relu6": relu6}[activation](y)
        return max_pool2d(y, 2)
    if impl is Conv2d:      # the reference: the epilogue as separate NumPy steps
        y = Conv2d.apply(x, weight, None, **g.options).data
        for term in (scale, bias, residual):
            if term is not None:
                t = raw(term) if term is residual else raw(term).reshape(-1, 1, 1)
                y = y * t if term is scale else y + t
        lo, hi = {None: (None, None), "relu": (0, None), "relu6": (0, 6)}[activation]
        y = Tensor(y if activation is None else np.clip(y, lo, hi).astype(y.dtype))
        return max_pool2d(y, 2) if pool else y
    if wants_grad:          # the bias in the route, whose backward gives its gradient
        return impl.apply(x, weight, bias, post=(np.ones(O), np.zeros(O), None, activation, True), **g.options)
    s = np.ones(O) if scale is None else np.asarray(raw(scale), np.float64)
    shift = np.zeros(O) if bias is None else np.asarray(raw(bias), np.float64)
    in_epilogue = bool(pool) and not impl.own_epilogue
    y = impl.apply(x, weight, None, post=(s, shift, None if residual is None else raw(residual), activation,
                                          in_epilogue), **g.options)
    return max_pool2d(y, 2) if pool and not in_epilogue else y
