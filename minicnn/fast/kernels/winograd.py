"""Numba kernels of the Winograd convolutions F(m x m, 3x3): the tile transforms, for any
output tile size m (the routes use m = 2 and m = 4), on NHWC data.

A 3x3 stride-1 convolution is computed on n x n input tiles d (n = m + 2) that each give
an m x m output tile (Lavin & Gray 2016):

    Y = Aᵀ [ Σ_c (G g Gᵀ) ⊙ (Bᵀ d B) ] A        Bᵀ (n, n), G (n, 3), Aᵀ (m, n)

Every transform here is a 2-D one, out = L · in · Lᵀ (Bᵀ for the input, Aᵀ for the
output, and their transposes B and A for the gradients), done *separably*: a 1-D
transform down the columns of the tile, then one along its rows.  For F(4x4, 3x3) that
is 2·6·6 outputs of ~4 terms each per channel instead of 36 outputs of up to 16 terms.
Each 1-D output is a weighted sum of a few rows of values, all its terms summed in one
vectorized inner loop (``combine``).  The matrices come as tables of their nonzero terms
(``minicnn.fast.conv.winograd.Transform``): per output row, the column indices (taps),
the coefficients and how many there are (counts), padded to ``MAX_TERMS`` columns.

Tiles t = (n*th + ty)*tw + tx; tile (ty, tx) covers input rows m·ty - ph .. m·ty - ph + n - 1
(and the columns alike); the transformed tiles are stored as (n·n, tiles, channels),
position ξ = a·n + b first, so that the route's GEMMs run on contiguous (tiles, channels)
matrices.  The kernels work on a block of neighbouring tiles of a tile row at a time
(``BLOCK`` values per channel row, in L1), laid side by side as [k, q, tile, channel]:
then each 1-D output is one ``combine`` over the whole block (tiles x channels), not one
per tile.  Per tile, with 16-32 channels, ``combine``'s fixed cost (addresses, alias
checks, the loop's tail) outweighed its work: the blocks took half the time of tile-by-
tile transforms there, and the same at 128 channels (measured on an AVX-512 Xeon).

The kernels are serial and release the GIL (the route runs one chunk of images per
worker thread); never-negative indices are cast to unsigned (see ``kernels.conv``).
"""
import numpy as np
from numba import njit

_u = np.uint64
MAX_TERMS = 6       # nonzero terms per row of a transform matrix (F(4x4, 3x3)'s have up to 5)
BLOCK = 128         # values per channel row of a block of tiles (tiles side by side)


def _combine(src, base, step, taps, coefs, count, dst, out, n):
    """dst[out + c] = Σ_{k < count} coefs[k] · src[base + taps[k]·step + c] for c < n.

    One output of a 1-D transform: all its terms in one pass (a pass per term, storing and
    reloading the sum, took 2.3x as long in the first F(2x2) kernels).  Unused taps are 0,
    so every address is in bounds."""
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


def _winograd_tiles(src, ph, pw, th, tw, size, taps, coefs, counts, out):
    """out[a·n + b, t, :] = (L d_t Lᵀ)[a, b, :], d_t the size x size tile t of the NHWC chunk src
    (nb, H, W, C) zero-padded by (ph, pw) at the top/left (and zero past its end); out (n·n,
    nb·th·tw, C); L (n, size) as its table; tiles m = n - 2 pixels apart.

    Both transforms into tile positions: the input's V = Bᵀ d B (size n, L = Bᵀ) and the
    output gradient's dM = A dY Aᵀ (size m, no padding, L = A)."""
    nb, H, W, C = src.shape
    n = counts.shape[0]
    m = n - 2
    T = nb * th * tw
    per = max(1, min(tw, BLOCK // C))      # tiles per block
    xs = np.empty(size * size * per * C, src.dtype)
    tmp = np.empty(n * size * per * C, src.dtype)
    of = out.reshape(-1)
    for i in range(nb):
        for ty in range(th):
            for x0 in range(0, tw, per):
                nt = min(per, tw - x0)
                row = nt * C            # one entry (k, q) of the block's tiles, side by side
                for k in range(size):   # xs[k, q, tx, :] = d_(ty, x0 + tx)[k, q, :]
                    r = m * ty - ph + k
                    for q in range(size):
                        for tx in range(nt):
                            col, dst = m * (x0 + tx) - pw + q, ((k * size + q) * nt + tx) * C
                            if 0 <= r < H and 0 <= col < W:
                                for c in range(C):
                                    xs[_u(dst + c)] = src[_u(i), _u(r), _u(col), _u(c)]
                            else:
                                for c in range(C):
                                    xs[_u(dst + c)] = 0
                for a in range(n):      # down the columns, L · d: each a pass over the whole block
                    combine(xs, 0, size * row, taps[a], coefs[a], counts[a], tmp, a * size * row, size * row)
                t0 = (i * th + ty) * tw + x0
                for a in range(n):      # along the rows, (L · d) · Lᵀ, into the tile positions
                    for b in range(n):
                        combine(tmp, a * size * row, row, taps[b], coefs[b], counts[b], of,
                                ((a * n + b) * T + t0) * C, row)


def _winograd_untile(src, ph, pw, th, tw, taps, coefs, counts, bias, add, out):
    """The tiles R S_t Rᵀ (size x size) of the tile positions src (n·n, nb·th·tw, C), written
    (or with ``add`` summed: they overlap) into the NHWC out (nb, H, W, C) at m·ty - ph,
    m·tx - pw (m = n - 2), the pixels outside out dropped, plus bias (C,) unless empty; R
    (size, n) as its table.

    Both transforms out of tile positions: the output's y = Aᵀ M A (R = Aᵀ, size m, no
    padding, plus the bias) and the input gradient's dx = Σ_t B dV_t Bᵀ (R = B, size n,
    ``add``; the adjoint of the input transform of winograd_tiles)."""
    nb, H, W, C = out.shape
    size = counts.shape[0]
    n = int(np.sqrt(src.shape[0]) + 0.5)
    m = n - 2
    T = nb * th * tw
    per = max(1, min(tw, BLOCK // C))
    tmp = np.empty(n * size * per * C, out.dtype)
    ys = np.empty(size * size * per * C, out.dtype)
    sf = src.reshape(-1)
    if add:
        out[...] = 0
    for i in range(nb):
        for ty in range(th):
            for x0 in range(0, tw, per):
                nt = min(per, tw - x0)
                row = nt * C
                t0 = (i * th + ty) * tw + x0
                for a in range(n):      # along the rows, S · Rᵀ: each a pass over the block
                    for j in range(size):
                        combine(sf, (a * n * T + t0) * C, T * C, taps[j], coefs[j], counts[j], tmp,
                                (a * size + j) * row, row)
                for a in range(size):   # down the columns, R · (S · Rᵀ)
                    combine(tmp, 0, size * row, taps[a], coefs[a], counts[a], ys, a * size * row, size * row)
                for a in range(size):
                    r = m * ty - ph + a
                    if r < 0 or r >= H:
                        continue
                    for b in range(size):
                        for tx in range(nt):
                            col, s = m * (x0 + tx) - pw + b, ((a * size + b) * nt + tx) * C
                            if col < 0 or col >= W:
                                continue
                            if add:
                                for c in range(C):
                                    out[_u(i), _u(r), _u(col), _u(c)] += ys[_u(s + c)]
                            elif bias.size:
                                for c in range(C):
                                    out[_u(i), _u(r), _u(col), _u(c)] = ys[_u(s + c)] + bias[_u(c)]
                            else:
                                for c in range(C):
                                    out[_u(i), _u(r), _u(col), _u(c)] = ys[_u(s + c)]


combine = njit(cache=True, nogil=True, inline="always")(_combine)
winograd_tiles = njit(cache=True, nogil=True)(_winograd_tiles)
winograd_untile = njit(cache=True, nogil=True)(_winograd_untile)
