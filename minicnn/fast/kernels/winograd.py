"""Numba kernels of the Winograd convolutions F(m x m, 3x3): the tile transforms, for any
output tile size m (the routes use m = 2 and m = 4), on NHWC data.

A 3x3 stride-1 convolution is computed on n x n input tiles d (n = m + 2) that each give
an m x m output tile (Lavin & Gray 2016):

    Y = Aᵀ [ Σ_c (G g Gᵀ) ⊙ (Bᵀ d B) ] A        Bᵀ (n, n), G (n, 3), Aᵀ (m, n)

Every transform here is a 2-D one, out = L · in · Rᵀ with L = R (Bᵀ for the input, Aᵀ
for the output, and their transposes B and A for the gradients), done *separably*: a
1-D transform along the rows of the tile, then one along its columns.  For F(4x4, 3x3)
that is 2·6·6 outputs of ~4 terms each per channel instead of 36 outputs of up to 16
terms.  Each 1-D output is a ±weighted sum of a few input rows of channels, all its terms
summed in one inner loop over the channels (vectorized): ``combine``.  The matrices come
as tables of their nonzero terms (``minicnn.fast.conv.winograd.Transform``): per output
row, the column indices (taps), the coefficients and how many there are (counts), padded
to ``MAX_TERMS`` columns.

The tile is worked on whole while it is in L1: read (from the image, or from a zero-padded
copy at the image's edges), row pass into a small scratch, column pass into the
destination.  Tiles t = (n*th + ty)*tw + tx; tile (ty, tx) covers input rows m·ty - ph ..
m·ty - ph + n - 1 (and the columns alike); the transformed tiles are stored as
(n·n, tiles, channels), position ξ = a·n + b first, so the GEMMs of the route run on
contiguous (tiles, channels) matrices.

The kernels are serial and release the GIL (the route runs one chunk of images per
worker thread); never-negative indices are cast to unsigned (see ``kernels.conv``).
"""
import numpy as np
from numba import njit

_u = np.uint64
MAX_TERMS = 6       # nonzero terms per row of a transform matrix (F(4x4, 3x3)'s have up to 5)


def _combine(src, base, step, taps, coefs, count, dst, out, n):
    """dst[out + c] = Σ_{k < count} coefs[k] · src[base + taps[k]·step + c] for c < n.

    One output of a 1-D transform: all its terms in one pass over the channels (a pass per
    term, storing and reloading the sum, took about twice as long).  Unused taps are 0, so
    every address is in bounds."""
    a0, a1, a2 = base + taps[0] * step, base + taps[1] * step, base + taps[2] * step
    a3, a4, a5 = base + taps[3] * step, base + taps[4] * step, base + taps[5] * step
    k0, k1, k2, k3, k4, k5 = coefs[0], coefs[1], coefs[2], coefs[3], coefs[4], coefs[5]
    if count == 1:
        for c in range(n):
            dst[_u(out + c)] = k0 * src[_u(a0 + c)]
    elif count == 2:
        for c in range(n):
            dst[_u(out + c)] = k0 * src[_u(a0 + c)] + k1 * src[_u(a1 + c)]
    elif count == 3:
        for c in range(n):
            dst[_u(out + c)] = k0 * src[_u(a0 + c)] + k1 * src[_u(a1 + c)] + k2 * src[_u(a2 + c)]
    elif count == 4:
        for c in range(n):
            dst[_u(out + c)] = (k0 * src[_u(a0 + c)] + k1 * src[_u(a1 + c)] + k2 * src[_u(a2 + c)]
                                + k3 * src[_u(a3 + c)])
    elif count == 5:
        for c in range(n):
            dst[_u(out + c)] = (k0 * src[_u(a0 + c)] + k1 * src[_u(a1 + c)] + k2 * src[_u(a2 + c)]
                                + k3 * src[_u(a3 + c)] + k4 * src[_u(a4 + c)])
    else:
        for c in range(n):
            dst[_u(out + c)] = (k0 * src[_u(a0 + c)] + k1 * src[_u(a1 + c)] + k2 * src[_u(a2 + c)]
                                + k3 * src[_u(a3 + c)] + k4 * src[_u(a4 + c)] + k5 * src[_u(a5 + c)])


def _tile_transform(src, s0, s_row, s_col, rows, taps, coefs, counts, tmp, dst, d0, d_row, d_col, n):
    """dst[a, b] = (L · src · Lᵀ)[a, b] for one tile, each entry a row of n channels.

    src[i, j] (i, j < rows) is at src[s0 + i·s_row + j·s_col : ... + n], dst[a, b] at
    dst[d0 + a·d_row + b·d_col]; L (p, rows) is given by its table (taps, coefs, counts);
    tmp is scratch for the (rows, p) intermediate."""
    p = counts.shape[0]
    for i in range(rows):                  # along each row: src · Lᵀ
        for b in range(p):
            combine(src, s0 + i * s_row, s_col, taps[b], coefs[b], counts[b], tmp, (i * p + b) * n, n)
    for b in range(p):                     # down each column: L · (src · Lᵀ)
        for a in range(p):
            combine(tmp, b * n, p * n, taps[a], coefs[a], counts[a], dst, d0 + a * d_row + b * d_col, n)


def _load_tile(src, n_img, r0, c0, size, tile):
    """tile (size, size, C) flattened = src[n_img, r0 : r0 + size, c0 : c0 + size, :], zero outside src."""
    _, H, W, C = src.shape
    for i in range(size):
        for j in range(size):
            off = (i * size + j) * C
            r, c = r0 + i, c0 + j
            if 0 <= r < H and 0 <= c < W:
                for k in range(C):
                    tile[_u(off + k)] = src[_u(n_img), _u(r), _u(c), _u(k)]
            else:
                for k in range(C):
                    tile[_u(off + k)] = 0


def _winograd_tiles(src, ph, pw, th, tw, size, taps, coefs, counts, out):
    """out[a·n + b, t, :] = (L d_t Lᵀ)[a, b, :], d_t the size x size tile t of the NHWC chunk src
    (nb, H, W, C) zero-padded by (ph, pw) at the top/left (and zero past its end); out (n·n,
    nb·th·tw, C); L (n, size) as its table, tiles m = n - 2 pixels apart.

    Both transforms into tile positions: the input's V = Bᵀ d B (size n, L = Bᵀ) and the
    output gradient's dM = A dY Aᵀ (size m, no padding, L = A)."""
    nb, H, W, C = src.shape
    n = counts.shape[0]
    m = n - 2
    T = nb * th * tw
    d = np.empty(size * size * C, src.dtype)
    tmp = np.empty(size * n * C, src.dtype)
    of = out.reshape(-1)
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                load_tile(src, i, m * ty - ph, m * tx - pw, size, d)
                tile_transform(d, 0, size * C, C, size, taps, coefs, counts, tmp, of, t * C, n * T * C, T * C, C)


def _winograd_input_grad(dv, ph, pw, th, tw, taps, coefs, counts, dxh):
    """The adjoint of winograd_tiles' input transform: dxh (nb, H, W, C), overwritten, = Σ_t
    of the tiles B dV_t Bᵀ (they overlap by 2 pixels) inside the image; dv (n·n, nb·th·tw,
    C); B (n, n) as its table."""
    nb, H, W, C = dxh.shape
    n = counts.shape[0]
    m = n - 2
    T = nb * th * tw
    d = np.empty(n * n * C, dxh.dtype)
    tmp = np.empty(n * n * C, dxh.dtype)
    vf = dv.reshape(-1)
    dxh[...] = 0
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                tile_transform(vf, t * C, n * T * C, T * C, n, taps, coefs, counts, tmp, d, 0, n * C, C, C)
                r0, c0 = m * ty - ph, m * tx - pw
                for a in range(n):
                    for b in range(n):
                        r, c = r0 + a, c0 + b
                        if 0 <= r < H and 0 <= c < W:
                            off = (a * n + b) * C
                            for k in range(C):
                                dxh[_u(i), _u(r), _u(c), _u(k)] += d[_u(off + k)]


def _winograd_output(mt, th, tw, taps, coefs, counts, bias, yh):
    """The adjoint of winograd_tiles' output-gradient transform (and a bias):
    yh[i, m·ty + a, m·tx + b, :] = (Aᵀ M_t A)[a, b, :] + bias for the pixels inside the
    output yh (nb, Ho, Wo, O) NHWC; mt (n·n, nb·th·tw, O); Aᵀ (m, n) as its table; bias (O,)
    or empty."""
    nb, Ho, Wo, O = yh.shape
    m = counts.shape[0]
    n = m + 2
    T = nb * th * tw
    y = np.empty(m * m * O, yh.dtype)
    tmp = np.empty(n * m * O, yh.dtype)
    mf = mt.reshape(-1)
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                tile_transform(mf, t * O, n * T * O, T * O, n, taps, coefs, counts, tmp, y, 0, m * O, O, O)
                for a in range(min(m, Ho - m * ty)):        # the pixels past the output are dropped
                    for b in range(min(m, Wo - m * tx)):
                        off = (a * m + b) * O
                        if bias.size:
                            for k in range(O):
                                yh[_u(i), _u(m * ty + a), _u(m * tx + b), _u(k)] = y[_u(off + k)] + bias[_u(k)]
                        else:
                            for k in range(O):
                                yh[_u(i), _u(m * ty + a), _u(m * tx + b), _u(k)] = y[_u(off + k)]


combine = njit(cache=True, nogil=True, inline="always")(_combine)
tile_transform = njit(cache=True, nogil=True, inline="always")(_tile_transform)
load_tile = njit(cache=True, nogil=True, inline="always")(_load_tile)
winograd_tiles = njit(cache=True, nogil=True)(_winograd_tiles)
winograd_input_grad = njit(cache=True, nogil=True)(_winograd_input_grad)
winograd_output = njit(cache=True, nogil=True)(_winograd_output)
