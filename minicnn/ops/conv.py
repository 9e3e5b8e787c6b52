"""2-D convolution, the textbook way: im2col, then one matrix product per group.

x (N, C, H, W), w (O, C/g, kh, kw), b (O,) or None  ->  y (N, O, Ho, Wo), g = groups.

Let xp be x with zeros added: pt rows on top, pl columns on the left, and at the
bottom/right as many as the output size (Ho, Wo) needs (TensorFlow's 'same' puts
its odd pixel there).  Output pixel (i, j) of channel o sees the kh x kw taps

    xp[n, c, i·sh + p·dh, j·sw + q·dw]      p < kh, q < kw, c in o's group

    y[n, o, i, j] = b[o] + Σ_{c, p, q} w[o, c, p, q] · xp[n, c, i·sh + p·dh, j·sw + q·dw]

im2col copies every tap into a column matrix, cols[n, c, p, q, i, j] (the
formula above without the sum), so the convolution becomes a matrix product.
Per sample and group, with K = (C/g)·kh·kw rows and L = Ho·Wo columns:

    Y_g (O/g, L) = W_g (O/g, K) · cols_g (K, L)

Backward, with G = dL/dy in the same (O/g, L) layout:

    dL/db   = Σ over n, i, j of G
    dL/dW_g = Σ_n  G_g · cols_gᵀ                  (O/g, K)
    dL/dcols_g = W_gᵀ · G_g                        (K, L)
    dL/dx   = col2im(dL/dcols): every column entry's gradient goes back to the
              pixel it was copied from; pixels seen by several taps add them up.

``minicnn.fast.conv`` holds faster routes for the same function (Winograd, row taps,
...), each tested against this one; :func:`conv2d` picks one (``route=``).
"""
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..tensor import Function
from . import dispatch
from .checks import check_dtypes
from .checks import as_pair, check_float_input
from .util import raw



def _padded_size(size, k, s, p, d, n_out):
    """Length of a padded axis: at least the input plus its top/left padding, and
    long enough for the last output's last tap at (n_out - 1)·s + d·(k - 1)."""
    return max(size + p, (n_out - 1) * s + d * (k - 1) + 1)


def im2col(x, kernel, stride, padding, dilation, out_hw):
    """The taps of every output pixel: cols (N, C, kh, kw, Ho, Wo), a new array with

        cols[n, c, p, q, i, j] = xp[n, c, i·sh + p·dh, j·sw + q·dw]

    where xp is x (N, C, H, W) zero-padded by padding = (pt, pl) on top/left and as
    out_hw needs on the bottom/right.  x may have any strides."""
    (kh, kw), (sh, sw), (pt, pl), (dh, dw), (Ho, Wo) = kernel, stride, padding, dilation, out_hw
    N, C, H, W = x.shape
    Hp = _padded_size(H, kh, sh, pt, dh, Ho)
    Wp = _padded_size(W, kw, sw, pl, dw, Wo)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, Hp - H - pt), (pl, Wp - W - pl)))
    # A view that walks xp: one step along p moves dh rows, one step along i moves sh rows.
    n_, c_, h_, w_ = xp.strides
    taps = as_strided(xp, (N, C, kh, kw, Ho, Wo), (n_, c_, dh * h_, dw * w_, sh * h_, sw * w_),
                      writeable=False)
    return taps.copy()


def col2im(dcols, x_shape, stride, padding, dilation):
    """The adjoint of im2col: dx (x_shape) from dcols (N, C, kh, kw, Ho, Wo),

        dxp[n, c, i·sh + p·dh, j·sw + q·dw] += dcols[n, c, p, q, i, j]

    summed over every tap (p, q), then the padding is cut away.  One tap's pixels
    never repeat (a strided slice), so each tap is one vectorised addition."""
    N, C, kh, kw, Ho, Wo = dcols.shape
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    H, W = x_shape[2:]
    Hp = _padded_size(H, kh, sh, pt, dh, Ho)
    Wp = _padded_size(W, kw, sw, pl, dw, Wo)
    dxp = np.zeros((N, C, Hp, Wp), dcols.dtype)
    for p in range(kh):
        for q in range(kw):
            rows = slice(p * dh, p * dh + (Ho - 1) * sh + 1, sh)   # Ho rows, sh apart
            cols = slice(q * dw, q * dw + (Wo - 1) * sw + 1, sw)   # Wo columns, sw apart
            dxp[:, :, rows, cols] += dcols[:, :, p, q]
    return dxp[:, :, pt:pt + H, pl:pl + W]


class Conv2d(Function):
    """y = x ⋆ w + b as im2col + one matrix product per group (see the module docstring).

    x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) or None; stride (sh, sw);
    padding (pt, pl), the top and left padding only (bottom and right follow from
    out_hw); dilation (dh, dw); out_hw (Ho, Wo) as computed by the caller.
    """

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups, out_hw):
        N = x.shape[0]
        O, Cg, kh, kw = w.shape
        g = groups
        cols = im2col(x, (kh, kw), stride, padding, dilation, out_hw)
        cols = cols.reshape(N, g, Cg * kh * kw, out_hw[0] * out_hw[1])   # (N, g, K, L): group-major channels
        w_g = w.reshape(g, O // g, Cg * kh * kw)              # (g, O/g, K)
        y = np.matmul(w_g, cols)                              # (N, g, O/g, L), one product per (n, group)
        y = y.reshape(N, O, *out_hw)
        if b is not None:
            y += b.reshape(1, O, 1, 1)
        ctx.save_for_backward(cols if ctx.needs_input_grad[1] else None, w)
        ctx.x_shape, ctx.groups, ctx.geometry = x.shape, g, (stride, padding, dilation)
        ctx.b_dtype = None if b is None else b.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        cols, w = ctx.saved
        g = ctx.groups
        N, O, Ho, Wo = gy.shape
        G = gy.reshape(N, g, O // g, Ho * Wo)                 # (N, g, O/g, L)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            w_g = w.reshape(g, O // g, -1)                    # (g, O/g, K)
            dcols = np.matmul(w_g.swapaxes(1, 2), G)          # (N, g, K, L) = W_gᵀ · G_g
            C, (kh, kw) = ctx.x_shape[1], w.shape[2:]
            gx = col2im(dcols.reshape(N, C, kh, kw, Ho, Wo), ctx.x_shape, *ctx.geometry)
        if ctx.needs_input_grad[1]:
            gw = np.matmul(G, cols.swapaxes(2, 3)).sum(axis=0)  # Σ_n G_g · cols_gᵀ: (g, O/g, K)
            gw = gw.reshape(w.shape)
        if ctx.b_dtype is not None and ctx.needs_input_grad[2]:
            gb = gy.sum(axis=(0, 2, 3)).astype(ctx.b_dtype)
        return gx, gw, gb


# --------------------------------------------------------------------- arguments

def _same_padding(size, k, s, d):
    """(before, after) padding of 'same' along one axis: output ⌈size/s⌉, as TensorFlow
    (for s = 1 this is PyTorch's symmetric 'same'); the odd pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def conv_padding(padding, in_hw, kernel, stride, dilation, layer="conv2d"):
    """Resolve ``padding`` (int, pair, 'valid' or 'same') to ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            return tuple(_same_padding(n, k, s, d) for n, k, s, d in zip(in_hw, kernel, stride, dilation))
        raise ValueError(f"{layer}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = as_pair(padding, "padding", layer, 0)
    return (ph, ph), (pw, pw)


class ConvGeometry(NamedTuple):
    """Everything that decides how a convolution runs, resolved (``padding`` as ((top,
    bottom), (left, right))): the key a route is chosen by."""
    x_shape: tuple
    w_shape: tuple
    dtype: np.dtype
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    out_hw: tuple
    has_bias: bool
    channels_last: bool = False     # the input's memory is NHWC (routes that read NHWC skip a copy)

    @property
    def options(self):
        """The keyword options of the conv Functions (top/left padding; out_hw implies the rest)."""
        return dict(stride=self.stride, padding=(self.padding[0][0], self.padding[1][0]),
                    dilation=self.dilation, groups=self.groups, out_hw=self.out_hw)

    @property
    def out_shape(self):
        return (self.x_shape[0], self.w_shape[0]) + self.out_hw

    def describe(self):
        return (f"input {self.x_shape}, weight {self.w_shape}, stride {self.stride}, padding {self.padding}, "
                f"dilation {self.dilation}, groups {self.groups}, {self.dtype}"
                + (", channels-last" if self.channels_last else ""))


def conv_geometry(x, weight, bias, stride, padding, dilation, groups, layer="conv2d"):
    """Check a convolution's arguments (clear errors naming ``layer``) and resolve them."""
    check_float_input(x, layer)
    if weight.ndim != 4:
        raise ValueError(f"{layer}: expected a 4-D weight (O, C/groups, kh, kw), got shape {tuple(weight.shape)}")
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{layer}: groups must be a positive int, got {groups!r}")
    if C % groups or O % groups:
        raise ValueError(f"{layer}: groups={groups} must divide both the input channels ({C}) "
                         f"and the output channels ({O})")
    if Cg * groups != C:
        raise ValueError(f"{layer}: input {tuple(x.shape)} has {C} channels, weight {tuple(weight.shape)} "
                         f"with groups={groups} expects {Cg * groups}")
    check_dtypes(layer, x, weight=weight, bias=bias)
    if bias is not None and tuple(bias.shape) != (O,):
        raise ValueError(f"{layer}: bias must have shape ({O},), got {tuple(bias.shape)}")
    stride = as_pair(stride, "stride", layer, 1)
    dilation = as_pair(dilation, "dilation", layer, 1)
    pads = conv_padding(padding, (H, W), (kh, kw), stride, dilation, layer)
    out = []
    for size, (p0, p1), k, s, d in zip((H, W), pads, (kh, kw), stride, dilation):
        span = d * (k - 1) + 1
        if size + p0 + p1 < span:
            raise ValueError(f"{layer}: kernel {(kh, kw)} with dilation {dilation} spans {span} pixels, more than "
                             f"the padded input {(H + sum(pads[0]), W + sum(pads[1]))} of input {tuple(x.shape)}")
        out.append((size + p0 + p1 - span) // s + 1)
    return ConvGeometry(x_shape=tuple(x.shape), w_shape=tuple(weight.shape), dtype=x.dtype, stride=stride,
                        padding=pads, dilation=dilation, groups=int(groups), out_hw=tuple(out),
                        has_bias=bias is not None,
                        channels_last=not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, route=None):
    """2-D convolution as ``torch.nn.functional.conv2d``.

    x (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) or None -> (N, O, Ho, Wo).
    ``stride`` and ``dilation``: int or pair.  ``padding``: int or pair (symmetric),
    'valid' (none) or 'same' (output ⌈H/stride⌉; for stride 1 PyTorch's 'same',
    for stride > 1 TensorFlow's rule; an odd total puts the extra pixel bottom/right).
    ``groups`` splits the channels into independent convolutions (groups == C:
    depthwise).  x, weight and bias share one dtype, float32 or float64.

    ``route``: None (the fastest route for this geometry, or the reference inside
    ``minicnn.reference_mode()``), 'reference' (:class:`Conv2d` above), or the name of a
    route of ``minicnn.fast.conv`` (e.g. 'winograd'), which must apply to the geometry.
    """
    g = conv_geometry(raw(x), raw(weight), raw(bias), stride, padding, dilation, groups)
    return dispatch.implementation("conv2d", Conv2d, g, route).apply(x, weight, bias, **g.options)
