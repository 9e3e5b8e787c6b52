"""Numba kernels for convolution: im2row/row2im and the layout moves for the GEMM
route, the row taps (width-only windows and their GEMMs, per image) and direct
depthwise loops (the Winograd transforms are in ``kernels.winograd``).

A chunk of ``nb`` images is unrolled *pixel-major* into a row matrix

    rows[n*L + oh*Wo + ow, g*kh*kw*Cg + (i*kw + j)*Cg + c]
        = x[n, g*Cg + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]

of shape ``(nb*L, C*kh*kw)``, ``L = Ho*Wo``, zero where the index falls in the
padding (``ph``/``pw`` are the top/left paddings; the bottom/right ones are
implied by ``Ho``/``Wo``, so asymmetric 'same' padding needs no padded copy).
One row per output pixel, the window of each group contiguous (taps in (i, j, c)
order), so the GEMMs are

    forward   Yᵀ (nb*L, O)  = rows · Wrᵀ          Wr = w as (O, kh, kw, C/G) per group
    backward  dWrᵀ (K, O)   = rowsᵀ · dYᵀ,    drows = dYᵀ · Wr,    dx = row2im(drows)

with the long pixel axis as the GEMM's M dimension: OpenBLAS runs these narrow
convolutions (16-64 channels) at 80-95 GFLOP/s per core this way, against 35-60
with the pixel axis as N.  The rows are built from an NHWC copy of the chunk, so
each tap copies C/G contiguous values.  Thin layers (channel-major im2col),
depthwise convolutions have their own sections below.

The kernels are plain Python functions compiled with ``njit`` below, so
``NUMBA_DISABLE_JIT=1`` runs them as Python.  They are serial and release the GIL:
the parallelism is over chunks of images, one chunk per worker thread at a time
(see ``minicnn.fast.runtime``).  They index the arrays with indices cast to unsigned
(they are never negative): with signed ones Numba checks every access for
negative wraparound, which can stop LLVM from vectorizing (up to ~4x slower here).
"""
import numpy as np
from numba import njit

from .blas import NO_TRANS, ROW_MAJOR, TRANS
from .norm import epilogue

_u = np.uint64  # never-negative indices skip the wraparound check; arithmetic stays signed


def _transpose(src, bias, dst):
    """dst[b, s, r] = src[b, r, s] + bias[s]; src (B, R, S), dst (B, S, R), bias (S,) or empty.

    The layout moves: NCHW <-> NHWC (R, S = C, H·W or back) and the GEMM's
    pixel-major output to NCHW, fused with the bias add.  Tiles of 16x16 keep the
    strided side of the copy within a few cache lines.  When a row of src spans a
    multiple of 4 KiB (e.g. 1024 float32 pixels, 32x32), those lines all fall in one
    L1 set, more than its 8 ways: tiles of 8 rows then (16x1024 float32: 99 -> 51 µs)."""
    if (src.shape[2] * src.itemsize) % 4096 == 0:
        transpose_tiles(src, bias, dst, 8)     # literal tile sizes: LLVM unrolls the inner loop
    else:
        transpose_tiles(src, bias, dst, 16)


def _transpose_tiles(src, bias, dst, tile):
    B, R, S = src.shape
    has_bias = bias.shape[0] > 0
    for b in range(B):
        for r0 in range(0, R, tile):
            r1 = min(r0 + tile, R)
            for s0 in range(0, S, 16):
                for s in range(s0, min(s0 + 16, S)):
                    v = bias[s] if has_bias else 0
                    for r in range(r0, r1):
                        dst[_u(b), _u(s), _u(r)] = src[_u(b), _u(r), _u(s)] + v


def _add_bias(y, bias):
    """y[r, o] += bias[o] for the rows of y (M, O): a GEMM's channels-last output.
    (NumPy's broadcast add runs its inner loop over only O values per row: as slow as the
    Fashion-MNIST CNN's first-layer GEMM itself, 0.10 ms per chunk.)"""
    for r in range(y.shape[0]):
        for o in range(y.shape[1]):
            y[_u(r), _u(o)] += bias[_u(o)]


def _im2row(xh, groups, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, rows):
    """xh (nb, H, W, C) -> rows (nb*Ho*Wo, C*kh*kw), see the module docstring."""
    nb, H, W, C = xh.shape
    Cg = C // groups
    K = C * kh * kw
    xf, rf = xh.reshape(-1), rows.reshape(-1)
    # Without groups or dilation, the taps (j, c) of a window row inside the image
    # are kw*C contiguous values in both arrays: one copy.
    fast = groups == 1 and dw == 1
    for n in range(nb):
        for oh in range(Ho):
            for ow in range(Wo):
                r = ((n * Ho + oh) * Wo + ow) * K
                iw0 = ow * sw - pw
                inside = fast and iw0 >= 0 and iw0 + kw <= W
                for g in range(groups):
                    for i in range(kh):
                        ih = oh * sh - ph + i * dh
                        k0 = r + (g * kh + i) * kw * Cg
                        if ih < 0 or ih >= H:
                            for q in range(kw * Cg):
                                rf[_u(k0 + q)] = 0
                        elif inside:
                            x0 = ((n * H + ih) * W + iw0) * C
                            for q in range(kw * C):
                                rf[_u(k0 + q)] = xf[_u(x0 + q)]
                        else:
                            for j in range(kw):
                                iw = iw0 + j * dw
                                x0 = ((n * H + ih) * W + iw) * C + g * Cg
                                if iw < 0 or iw >= W:
                                    for c in range(Cg):
                                        rf[_u(k0 + j * Cg + c)] = 0
                                else:
                                    for c in range(Cg):
                                        rf[_u(k0 + j * Cg + c)] = xf[_u(x0 + c)]


def _row2im(rows, groups, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, dxh):
    """The adjoint of im2row: adds to dxh (nb, H, W, C) the rows entries of every window
    position that read each pixel."""
    nb, H, W, C = dxh.shape
    Cg = C // groups
    K = C * kh * kw
    xf, rf = dxh.reshape(-1), rows.reshape(-1)
    fast = groups == 1 and dw == 1
    for n in range(nb):
        for oh in range(Ho):
            for ow in range(Wo):
                r = ((n * Ho + oh) * Wo + ow) * K
                iw0 = ow * sw - pw
                inside = fast and iw0 >= 0 and iw0 + kw <= W
                for g in range(groups):
                    for i in range(kh):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        k0 = r + (g * kh + i) * kw * Cg
                        if inside:
                            x0 = ((n * H + ih) * W + iw0) * C
                            for q in range(kw * C):
                                xf[_u(x0 + q)] += rf[_u(k0 + q)]
                            continue
                        for j in range(kw):
                            iw = iw0 + j * dw
                            if iw >= 0 and iw < W:
                                x0 = ((n * H + ih) * W + iw) * C + g * Cg
                                for c in range(Cg):
                                    xf[_u(x0 + c)] += rf[_u(k0 + j * Cg + c)]


transpose_tiles = njit(cache=True, nogil=True, inline="always")(_transpose_tiles)
transpose = njit(cache=True, nogil=True)(_transpose)
add_bias = njit(cache=True, nogil=True)(_add_bias)
im2row = njit(cache=True, nogil=True)(_im2row)
row2im = njit(cache=True, nogil=True)(_row2im)


# ------------------------------------------------------------------ row taps
# A convolution without groups, one image at a time, with im2row along the width
# only: each input row unrolled into the windows of one kernel row,
#     wins[b*Wo + ow, j*C + c] = x[n, c, ih, ow*sw - pw + j*dw]          (R*Wo, kw*C)
# Output row oh reads input row ih = oh*sh + i*dh - ph through kernel row i.  The
# input rows are stored by class of ih mod sh (one class for stride 1), each class in
# order: ``classes`` (rho, first wins row, rows) holds the rows ih = rho, rho + sh, ...
# Kernel row i then reads consecutive rows of one class, so its part of the full
# im2row matrix is a contiguous block of wins.  A tap (i, b0, oh0, m): output rows
# oh0..oh0+m-1 read the wins rows from b0*Wo on (output rows that would read only
# padding are left out).  Per image:
#     forward   Yᵀ[oh0*Wo:][:m*Wo]   += wins[b0*Wo:][:m*Wo] · Wt[i]           (m*Wo, O)
#     backward  dWt[i]               += wins[b0*Wo:][:m*Wo]ᵀ · dYᵀ[oh0*Wo:][:m*Wo]
#               dwins[b0*Wo:][:m*Wo] += dYᵀ[oh0*Wo:][:m*Wo] · Wt[i]ᵀ,    dx = row2im(dwins)
# with Wt (kh, kw*C, O) the weight by kernel rows.  wins is about kh/sh times smaller
# than the im2row matrix and stays in L2 between its GEMMs, which run faster for it
# (one core, 8 images, 32->32 on 16x16: forward 0.475 -> 0.336 ms, backward
# 0.98 -> 0.77 ms).  BLAS is called directly (``kernels.blas``) for beta = 1 and the
# row offsets.  The tap with the most rows comes first: if it writes every output
# row, its GEMM (beta = 0) initializes the output.

def _at(a, k):
    """The address of element k of a's memory, as BLAS takes it."""
    return int(a.ctypes.data + k * a.itemsize)


def _class_windows(xh, classes, kw, sh, sw, pw, dw, Wo, wins):
    """wins (R*Wo, kw*C) of one NHWC image xh (1, H, W, C), class by class (see above)."""
    for c in range(classes.shape[0]):
        rho, b, rows = classes[c, 0], classes[c, 1], classes[c, 2]
        im2row(xh, 1, 1, kw, sh, sw, -rho, pw, 1, dw, rows, Wo, wins[b * Wo:(b + rows) * Wo])


def _rowtap_forward(gemm, xh, wt, bias, taps, classes, kw, sh, sw, pw, dw, Wo, wins, y):
    """y (nb, Ho*Wo, O) = bias + Σ_taps wins · Wt[i], per image (see above).  xh (nb, H, W, C)
    NHWC, wt (kh, kw*C, O), bias (O,) or empty, taps (T, 4) and classes (R, 3) int64,
    wins (R*Wo, kw*C) scratch."""
    kwc, O = wt.shape[1], wt.shape[2]
    Ho = y.shape[1] // Wo
    for n in range(xh.shape[0]):
        class_windows(xh[n:n + 1], classes, kw, sh, sw, pw, dw, Wo, wins)
        yn = y[n]
        beta = 0.0
        if bias.shape[0] > 0 or taps.shape[0] == 0 or taps[0, 3] < Ho:
            for r in range(Ho * Wo):
                for o in range(O):
                    yn[r, o] = bias[o] if bias.shape[0] > 0 else 0
            beta = 1.0
        for t in range(taps.shape[0]):
            i, b0, oh0, m = taps[t, 0], taps[t, 1], taps[t, 2], taps[t, 3]
            gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m * Wo, O, kwc, 1.0, at(wins, b0 * Wo * kwc), kwc,
                 at(wt, i * kwc * O), O, beta, at(yn, oh0 * Wo * O), O)
            beta = 1.0


def _rowtap_backward(gemm, xh, wt, gh, taps, classes, kw, sh, sw, pw, dw, Wo, wins, dwins, gw, gx):
    """gw (kh, kw*C, O) = Σ_n Σ_taps winsᵀ · dYᵀ and gx (nb, H, W, C) = row2im(Σ_taps dYᵀ · Wt[i]ᵀ),
    per image (see above); gh (nb, Ho*Wo, O) is the NHWC output gradient.  An empty
    gw or gx is not computed (xh may be empty without gw); wins, dwins (R*Wo, kw*C) scratch."""
    kwc, O = wt.shape[1], wt.shape[2]
    R, L = wins.shape[0] // Wo, gh.shape[1]
    want_w, want_x = gw.size > 0, gx.size > 0
    if want_w:
        gw[:] = 0
    for n in range(gh.shape[0]):
        if want_w:
            class_windows(xh[n:n + 1], classes, kw, sh, sw, pw, dw, Wo, wins)
        beta = 0.0
        if want_x and (taps.shape[0] == 0 or taps[0, 3] < R):    # no tap writes every row of dwins
            dwins[:] = 0
            beta = 1.0
        for t in range(taps.shape[0]):
            i, b0, oh0, m = taps[t, 0], taps[t, 1], taps[t, 2], taps[t, 3]
            g = at(gh, (n * L + oh0 * Wo) * O)
            if want_w:
                gemm(ROW_MAJOR, TRANS, NO_TRANS, kwc, O, m * Wo, 1.0, at(wins, b0 * Wo * kwc), kwc,
                     g, O, 1.0, at(gw, i * kwc * O), O)
            if want_x:
                gemm(ROW_MAJOR, NO_TRANS, TRANS, m * Wo, kwc, O, 1.0, g, O, at(wt, i * kwc * O), O,
                     beta, at(dwins, b0 * Wo * kwc), kwc)
                beta = 1.0
        if want_x:
            gx_n = gx[n:n + 1]
            gx_n[:] = 0                 # rows of no class (never read) stay zero
            for c in range(classes.shape[0]):
                rho, b, rows = classes[c, 0], classes[c, 1], classes[c, 2]
                row2im(dwins[b * Wo:(b + rows) * Wo], 1, 1, kw, sh, sw, -rho, pw, 1, dw, rows, Wo, gx_n)


at = njit(cache=True, inline="always")(_at)
class_windows = njit(cache=True, nogil=True)(_class_windows)
rowtap_forward = njit(cache=True, nogil=True)(_rowtap_forward)
rowtap_backward = njit(cache=True, nogil=True)(_rowtap_backward)


# ------------------------------------------------------------------ depthwise
# With one input channel per group (depthwise: groups == C, O = C·mult) the GEMMs
# would have K = kh·kw: too small for BLAS.  These loop over the taps directly,
# on NCHW, with the output column as the vectorized inner loop.

def _valid_span(o_count, stride, pad, offset, size):
    """The o in [lo, hi) with 0 <= o*stride - pad + offset < size."""
    lo = max(0, -((offset - pad) // stride))
    hi = min(o_count, (size - 1 + pad - offset) // stride + 1)
    return lo, max(lo, hi)


def _depthwise(x, w, scale, shift, res, low, high, sh, sw, ph, pw, dh, dw, y):
    """y[n, o] = clamp(scale[o]·Σ_ij w[o, i, j] · x[n, o // mult] shifted + shift[o] + res[n, o], low, high);
    x (nb, C, H, W), w (O, kh, kw), scale and shift float64 (O,), res y's shape or empty,
    y (nb, O, Ho, Wo), mult = O / C.  (A plain convolution: scale 1, shift the bias, no
    clamping.)  The epilogue runs on each output plane while it is in cache."""
    nb, C, H, W = x.shape
    O, kh, kw = w.shape
    Ho, Wo = y.shape[2], y.shape[3]
    mult = O // C
    add = res.size > 0
    for n in range(nb):
        for o in range(O):
            c = o // mult
            for oh in range(Ho):
                for ow in range(Wo):
                    y[_u(n), _u(o), _u(oh), _u(ow)] = 0
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, i, j]
                    lo, hi = valid_span(Wo, sw, pw, j * dw, W)
                    for oh in range(Ho):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        iw0 = lo * sw - pw + j * dw
                        for q in range(hi - lo):
                            y[_u(n), _u(o), _u(oh), _u(lo + q)] += wv * x[_u(n), _u(c), _u(ih), _u(iw0 + q * sw)]
            a, b = scale[o], shift[o]
            plane = y[n, o].reshape(-1)
            if add:
                r = res[n, o].reshape(-1)
                for q in range(plane.size):
                    plane[_u(q)] = epilogue(np.float64(plane[_u(q)]) * a + b, np.float64(r[_u(q)]), low, high)
            else:
                for q in range(plane.size):
                    plane[_u(q)] = epilogue(np.float64(plane[_u(q)]) * a + b, 0.0, low, high)


def _depthwise_backward(x, w, gy, sh, sw, ph, pw, dh, dw, gx, gw):
    """gx (nb, C, H, W) overwritten with dL/dx (skipped if empty); gw (O, kh, kw)
    overwritten with this chunk's dL/dw (skipped if empty)."""
    nb, C, H, W = x.shape
    O, kh, kw = w.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    mult = O // C
    need_x, need_w = gx.shape[0] > 0, gw.shape[0] > 0
    if need_x:
        gx[...] = 0
    if need_w:
        gw[...] = 0
    for n in range(nb):
        for o in range(O):
            c = o // mult
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, i, j]
                    lo, hi = valid_span(Wo, sw, pw, j * dw, W)
                    s = 0.0
                    for oh in range(Ho):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        iw0 = lo * sw - pw + j * dw
                        for q in range(hi - lo):
                            g = gy[_u(n), _u(o), _u(oh), _u(lo + q)]
                            if need_w:
                                s += g * x[_u(n), _u(c), _u(ih), _u(iw0 + q * sw)]
                            if need_x:
                                gx[_u(n), _u(c), _u(ih), _u(iw0 + q * sw)] += wv * g
                    if need_w:
                        gw[o, i, j] += s


valid_span = njit(cache=True, inline="always")(_valid_span)
depthwise = njit(cache=True, nogil=True)(_depthwise)
depthwise_backward = njit(cache=True, nogil=True)(_depthwise_backward)


# ------------------------------------------------------------------ im2col (thin layers)
# With few taps per window (K = C·kh·kw small, e.g. a 1- or 3-channel first layer)
# the GEMMs are cheap and the layout moves around them dominate.  The channel-major
# unrolling of each image,
#     cols[n, (c*kh + i)*kw + j, oh*Wo + ow] = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
# (nb, K, L), is read from and written back to NCHW directly, and the GEMMs
#     forward  y_n = W · cols_n (O, L)     backward  dW = Σ_n dy_n · cols_nᵀ,  dcols_n = Wᵀ · dy_n
# produce NCHW with no transpose.

def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, cols):
    """x (nb, C, H, W) -> cols (nb, C*kh*kw, Ho*Wo) as above, zero in the padding.

    With stride 1 and Wo == W ('same' width), a tap's column block is the image plane
    shifted by a constant flat offset d = (i·dh - ph)·W + (j·dw - pw): one long copy over
    the valid output rows, then the |shift| border columns of each row (which the copy
    filled from the neighbouring row) set to zero.  Rows of 32 pixels made the general
    loop pay its overhead every 32 values."""
    nb, C, H, W = x.shape
    flat = sh == 1 and sw == 1 and Wo == W
    for n in range(nb):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    k = (c * kh + i) * kw + j
                    if flat:
                        shifted_plane(x[n, c].reshape(-1), i * dh - ph, j * dw - pw, Ho, W, cols[n, k])
                        continue
                    lo, hi = valid_span(Wo, sw, pw, j * dw, W)
                    iw0 = lo * sw - pw + j * dw
                    for oh in range(Ho):
                        r = oh * Wo
                        ih = oh * sh - ph + i * dh
                        lo_, hi_ = (Wo, Wo) if ih < 0 or ih >= H else (lo, hi)   # a padding row: all zero
                        for q in range(lo_):
                            cols[_u(n), _u(k), _u(r + q)] = 0
                        for q in range(hi_, Wo):
                            cols[_u(n), _u(k), _u(r + q)] = 0
                        for q in range(hi_ - lo_):
                            cols[_u(n), _u(k), _u(r + lo + q)] = x[_u(n), _u(c), _u(ih), _u(iw0 + q * sw)]


def _shifted_plane(xf, row_shift, col_shift, Ho, W, out):
    """out[oh·W + ow] = xf[(oh + row_shift)·W + ow + col_shift], zero where that pixel is
    outside the H x W plane xf (flat); out has Ho·W entries."""
    H = xf.size // W
    oh0 = min(Ho, max(0, -row_shift))                          # output rows [oh0, oh1) have an input row
    oh1 = max(oh0, min(Ho, H - row_shift))
    d = row_shift * W + col_shift
    q0 = min(max(oh0 * W, -d), oh1 * W)                        # out[q0:q1] = xf[q0 + d:q1 + d], the rest 0
    q1 = max(q0, min(oh1 * W, xf.size - d))
    for q in range(q0):
        out[_u(q)] = 0
    for q in range(q0, q1):
        out[_u(q)] = xf[_u(q + d)]
    for q in range(q1, Ho * W):
        out[_u(q)] = 0
    a, b = (0, -col_shift) if col_shift < 0 else (W - col_shift, W)    # the columns the shift wrapped
    for oh in range(oh0, oh1):
        for q in range(max(a, 0), min(b, W)):
            out[_u(oh * W + q)] = 0


def _col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, gx):
    """The adjoint of im2col: gx (nb, C, H, W) = Σ of the cols entries that read each
    pixel.  ``gx`` is overwritten."""
    nb, C, H, W = gx.shape
    gx[...] = 0
    for n in range(nb):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    k = (c * kh + i) * kw + j
                    lo, hi = valid_span(Wo, sw, pw, j * dw, W)
                    iw0 = lo * sw - pw + j * dw
                    for oh in range(Ho):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        r = oh * Wo + lo
                        for q in range(hi - lo):
                            gx[_u(n), _u(c), _u(ih), _u(iw0 + q * sw)] += cols[_u(n), _u(k), _u(r + q)]


shifted_plane = njit(cache=True, nogil=True, inline="always")(_shifted_plane)
im2col = njit(cache=True, nogil=True)(_im2col)
col2im = njit(cache=True, nogil=True)(_col2im)
