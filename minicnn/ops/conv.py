"""2-D convolution (cross-correlation, as in every framework) as im2col + GEMM.

    y[n, o, oh, ow] = b[o] + Σ_{c ∈ group(o), i, j} w[o, c, i, j] · x[n, c, oh·sh - pt + i·dh, ow·sw - pl + j·dw]

x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) -> y (N, O, Ho, Wo) with
Ho = ⌊(H + pt + pb - dh·(kh-1) - 1) / sh⌋ + 1 (likewise Wo).

Per chunk of images, ``kernels.conv.im2col`` unrolls the windows into
``cols (C·kh·kw, nb·Ho·Wo)`` and one batched GEMM per chunk does the work:

    forward   Y_g  = W_g · cols_g                      (O/G, nb·L) per group g
    backward  dW_g = Σ_chunks dY_g · cols_gᵀ
              dcols_g = W_gᵀ · dY_g,  dx = col2im(dcols)
              db  = Σ_{n, oh, ow} dY

Chunks keep the column matrix in cache and bound its memory; the backward pass
recomputes it from x instead of keeping it alive between the passes.  A 1x1
convolution with stride 1 and no padding needs no im2col at all: it is
``W · x[n]`` per image, straight into NCHW.
"""
import numpy as np

from ..kernels import conv as K
from ..tensor import Function

# Bytes of one chunk's column matrix: big enough for wide GEMMs, small enough to
# stay in the 32 MB L3 between im2col writing it and the GEMM reading it.
CHUNK_BYTES = 4 << 20
_FLOATS = (np.float32, np.float64)


def _chunk_images(n, col_bytes_per_image):
    return max(1, min(n, CHUNK_BYTES // max(1, col_bytes_per_image)))


class Conv2d(Function):
    """y = conv(x, w) + b (see the module docstring).  Options: ``stride`` (sh, sw),
    ``padding`` (pt, pl) top/left, ``dilation`` (dh, dw), ``groups``, ``out_hw`` (Ho, Wo);
    the bottom/right padding is implied by ``out_hw``."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups, out_hw):
        x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
        ctx.save_for_backward(x, w)
        ctx.geometry = stride, padding, dilation, groups, out_hw
        ctx.has_bias = b is not None
        N, O = x.shape[0], w.shape[0]
        Ho, Wo = out_hw
        bias = b if b is not None else np.empty(0, x.dtype)
        if _is_pointwise(w, stride, padding, groups):
            y = np.matmul(w.reshape(O, -1), x.reshape(N, x.shape[1], -1))
            if b is not None:
                y += b[:, None]
            return y.reshape(N, O, Ho, Wo)
        y = np.empty((N, O, Ho, Wo), x.dtype)
        wg = _grouped(w, groups)
        gemm_out = None
        for cols, y_c in _chunks(x, w, ctx.geometry, y):
            m = cols.shape[1]
            if gemm_out is None:
                gemm_out = np.empty(O * m, x.dtype)
            out = gemm_out[:O * m].reshape(groups, O // groups, m)
            np.matmul(wg, cols.reshape(groups, -1, m), out=out)
            K.cols_to_nchw(out.reshape(O, m), bias, y_c.reshape(y_c.shape[0], O, -1))
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved
        stride, padding, dilation, groups, out_hw = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:2] + (ctx.has_bias and ctx.needs_input_grad[2],)
        gy = np.ascontiguousarray(gy)
        N, O = gy.shape[:2]
        if _is_pointwise(w, stride, padding, groups):
            return _pointwise_backward(x, w, gy, need_x, need_w, need_b)
        gx = np.empty_like(x) if need_x else None
        gw = np.zeros((groups, O // groups, w[0].size), x.dtype) if need_w else None
        gb = np.zeros(O, np.float64) if need_b else np.empty(0, np.float64)
        if need_x or need_w:
            wg_t = np.ascontiguousarray(_grouped(w, groups).transpose(0, 2, 1)) if need_x else None
            args = _kernel_args(w, ctx.geometry)
            for cols, gy_c, gx_c in _chunks(x, w, ctx.geometry, gy, gx, im2col=need_w):
                m = cols.shape[1]
                g_cols = np.empty((O, m), x.dtype)
                K.nchw_to_cols(gy_c.reshape(gy_c.shape[0], O, -1), g_cols, gb)
                g_cols = g_cols.reshape(groups, O // groups, m)
                cols = cols.reshape(groups, -1, m)
                if need_w:
                    gw += np.matmul(g_cols, cols.transpose(0, 2, 1))
                if need_x:
                    np.matmul(wg_t, g_cols, out=cols)
                    K.col2im(cols.reshape(-1, m), *args, gx_c)
        elif need_b:
            gb = gy.sum(axis=(0, 2, 3), dtype=np.float64)
        return (gx, gw.reshape(w.shape) if need_w else None,
                gb.astype(x.dtype) if need_b else None)


def _is_pointwise(w, stride, padding, groups):
    return w.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0) and groups == 1


def _pointwise_backward(x, w, gy, need_x, need_w, need_b):
    """1x1 convolution: dx[n] = Wᵀ dY[n], dW = Σ_n dY[n] x[n]ᵀ, db = Σ dY."""
    N, C, O = x.shape[0], x.shape[1], w.shape[0]
    g3, x3 = gy.reshape(N, O, -1), x.reshape(N, C, -1)
    gx = np.matmul(w.reshape(O, C).T, g3).reshape(x.shape) if need_x else None
    gw = np.tensordot(g3, x3, axes=([0, 2], [0, 2])).reshape(w.shape) if need_w else None
    gb = g3.sum(axis=(0, 2), dtype=np.float64).astype(x.dtype) if need_b else None
    return gx, gw, gb


def _grouped(w, groups):
    return w.reshape(groups, w.shape[0] // groups, -1)


def _kernel_args(w, geometry):
    (sh, sw), (pt, pl), (dh, dw), _, (Ho, Wo) = geometry
    return w.shape[2], w.shape[3], sh, sw, pt, pl, dh, dw, Ho, Wo


def _chunks(x, w, geometry, *others, im2col=True):
    """Yield (column buffer (C·kh·kw, nb·L), chunk of each of ``others``) per chunk of images.

    ``im2col`` fills the buffer from the chunk of x.  The buffer is reused from chunk to
    chunk (a smaller last chunk gets a view of it), so callers must be done with it
    before asking for the next.  ``others`` are batch-major arrays or None."""
    N, C = x.shape[:2]
    Ho, Wo = geometry[4]
    L = Ho * Wo
    rows = C * w.shape[2] * w.shape[3]
    nb = _chunk_images(N, rows * L * x.itemsize)
    buf = np.empty(rows * nb * L, x.dtype)
    args = _kernel_args(w, geometry)
    for n0 in range(0, N, nb):
        x_c = x[n0:n0 + nb]
        cols = buf[:rows * x_c.shape[0] * L].reshape(rows, -1)
        if im2col:
            K.im2col(x_c, *args, cols)
        yield (cols,) + tuple(None if a is None else a[n0:n0 + nb] for a in others)


# --------------------------------------------------------------------- arguments

def _pair(v, what, layer, minimum):
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(p, (int, np.integer)) for p in pair):
        raise TypeError(f"{layer}: {what} must be an int or a pair of ints, got {v!r}")
    if min(pair) < minimum:
        raise ValueError(f"{layer}: {what} must be >= {minimum}, got {v!r}")
    return int(pair[0]), int(pair[1])


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
    ph, pw = _pair(padding, "padding", layer, 0)
    return (ph, ph), (pw, pw)


def check_float_input(x, layer, ndim=4, layout="(N, C, H, W)"):
    """Raise unless ``x`` is a float32/float64 array of rank ``ndim``."""
    if x.ndim != ndim:
        raise ValueError(f"{layer}: expected a {ndim}-D input {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{layer}: expected a float32 or float64 input, got {x.dtype}")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution as ``torch.nn.functional.conv2d``.

    x (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) or None -> (N, O, Ho, Wo).
    ``stride`` and ``dilation``: int or pair.  ``padding``: int or pair (symmetric),
    'valid' (none) or 'same' (output ⌈H/stride⌉; for stride 1 PyTorch's 'same',
    for stride > 1 TensorFlow's rule; an odd total puts the extra pixel bottom/right).
    ``groups`` splits the channels into independent convolutions (groups == C:
    depthwise).  x, weight and bias share one dtype, float32 or float64.
    """
    layer = "conv2d"
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
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{layer}: {name} dtype {t.dtype} differs from input dtype {x.dtype}")
    if bias is not None and tuple(bias.shape) != (O,):
        raise ValueError(f"{layer}: bias must have shape ({O},), got {tuple(bias.shape)}")
    stride = _pair(stride, "stride", layer, 1)
    dilation = _pair(dilation, "dilation", layer, 1)
    pads = conv_padding(padding, (H, W), (kh, kw), stride, dilation, layer)
    out = []
    for size, (p0, p1), k, s, d in zip((H, W), pads, (kh, kw), stride, dilation):
        span = d * (k - 1) + 1
        if size + p0 + p1 < span:
            raise ValueError(f"{layer}: kernel {(kh, kw)} with dilation {dilation} spans {span} pixels, more than "
                             f"the padded input {(H + sum(pads[0]), W + sum(pads[1]))} of input {tuple(x.shape)}")
        out.append((size + p0 + p1 - span) // s + 1)
    return Conv2d.apply(x, weight, bias, stride=stride, padding=(pads[0][0], pads[1][0]),
                        dilation=dilation, groups=int(groups), out_hw=tuple(out))
