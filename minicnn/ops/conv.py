"""2-D convolution (cross-correlation, as in every framework) as im2row + GEMM.

    y[n, o, oh, ow] = b[o] + Σ_{c ∈ group(o), i, j} w[o, c, i, j] · x[n, c, oh·sh - pt + i·dh, ow·sw - pl + j·dw]

x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) -> y (N, O, Ho, Wo) with
Ho = ⌊(H + pt + pb - dh·(kh-1) - 1) / sh⌋ + 1 (likewise Wo).

Per chunk of images, ``kernels.conv.im2row`` unrolls the windows into one row per
output pixel, ``rows (nb·Ho·Wo, C·kh·kw)``, and one GEMM per group does the work
(Wr: the weight with each output channel's window in row order):

    forward   Yᵀ_g   = rows_g · Wr_gᵀ                 (nb·L, O/G), + bias
    backward  dWr_g  = Σ_chunks dYᵀ_gᵀ · rows_g
              drows_g = dYᵀ_g · Wr_g,   dx = row2im(drows)
              db     = Σ_{n, oh, ow} dY

Layout.  Yᵀ is the output in NHWC order, so it is written in place into a
channels-last output: y has the NCHW shape, with NHWC memory behind it
(``minicnn.ops._util.nhwc``, PyTorch's ``channels_last``).  A channels-last input
is read as it is, and a channels-last output gradient likewise; the input gradient
comes back channels-last.  Batch norm, ReLU and 2x2 max pooling keep the layout, so
a network of them moves no layout between its convolutions; any other op simply
sees a non-contiguous NCHW array.  Depthwise convolutions stay NCHW.

Chunks keep the row matrix in cache and bound its memory, and are spread over
the worker threads (``minicnn._runtime.parallel_for``); the backward pass
recomputes the rows from x's NHWC memory (a channels-last input itself, or the
NHWC copy that the forward pass keeps), instead of keeping the 9x larger rows alive between the passes.  A
1x1 convolution with stride 1 and no padding needs no im2row: its rows are the
NHWC image itself.  Thin layers (few taps per window, e.g. an RGB input layer) use
the classic channel-major im2col instead, ``cols (nb, K, L)`` per chunk, whose GEMMs
work on NCHW images (``kernels.conv.im2col``):

    forward   y_n = Wr · cols_n,   backward  dW = Σ_n dy_n · cols_nᵀ,  dcols_n = Wrᵀ · dy_n,  dx = col2im(dcols)

(as y_nᵀ = cols_nᵀ · Wrᵀ into a channels-last output; a channels-last dy_n is read as the
transposed view it is; dx stays NCHW).

Row taps.  Without groups, the windows are unrolled along the width only, one image
at a time, ``wins (R·Wo, kw·C)`` with the input rows grouped by their residue mod sh;
kernel row i's part of the rows above is then a contiguous block of wins, and kh GEMMs
per image sum into the output (BLAS's own gemm with beta = 1, ``kernels.blas``;
``kernels.conv.rowtap_forward``):

    forward   Yᵀ_n[oh rows of tap i] += wins_n[tap i] · Wt[i]      Wt = Wrᵀ by kernel rows (kh, kw·C, O)
    backward  dWt[i] += wins_n[tap i]ᵀ · dYᵀ_n[...],   dwins_n[tap i] += dYᵀ_n[...] · Wt[i]ᵀ,
              dx = row2im(dwins)

wins is about kh/sh times smaller than the rows and stays in L2 between its GEMMs.

With one input channel per group (depthwise) the GEMMs would be too thin for
BLAS, so ``kernels.conv.depthwise`` loops over the taps.
Wide 3x3 stride-1 convolutions use Winograd F(2x2, 3x3) instead
(``kernels.conv.winograd_*``): 16 GEMMs per chunk on transformed 4x4 tiles,

    forward   M_ξ = V_ξ · U_ξ,            V = Bᵀ d B per tile, U = G g Gᵀ, y = Aᵀ M A
    backward  dU_ξ = Σ_chunks V_ξᵀ · dM_ξ,  dM = A dy Aᵀ,   dV_ξ = dM_ξ · U_ξᵀ,  dx = B dV Bᵀ

with 2.25x fewer multiplications; exact in exact arithmetic, with rounding
errors of the same order as the direct method's in float32 and float64.
"""
import math

import numpy as np

from .._runtime import parallel_for, scratch
from ..kernels import conv as K
from ..kernels.blas import GEMM
from ..kernels.norm import normalize_cols_serial
from ..kernels.reduce import column_sums
from ..tensor import Function, is_grad_enabled
from ._util import EMPTY, nhwc, raw
from .activation import CLAMPS

# Bytes of one chunk's row matrix: big enough for efficient GEMMs, small enough that
# a worker's rows stay in cache between im2row and the GEMMs.  At least MIN_CHUNKS
# chunks, so that a few workers share the batch; a fixed number (not the thread
# count) keeps the chunking, hence the gradients' rounding, the same on every machine.
CHUNK_BYTES = 2 << 20
MIN_CHUNKS = 4
# 3x3 stride-1 ungrouped convolutions with min(C, O) >= WINOGRAD_MIN_CHANNELS and
# max(C, O) >= WINOGRAD_MIN_WIDTH use Winograd F(2x2, 3x3): its 16 GEMMs have K = C and
# N = O, too thin for BLAS below that, and its transforms cost per channel what the
# GEMMs save per pair of channels.  Whole steps on two workers, training / inference
# img/s, Winograd from 64 channels -> from 32 channels: Fashion-MNIST CNN (its 32->64 on
# 14x14) 4,460 -> 4,910 / 12,757 -> 13,343, improved CIFAR CNN 752 -> 796 / 2,464 -> 2,663,
# but ResNet-20 (32->32 on 16x16, row taps otherwise) 556 -> 537 / 1,963 -> 1,912; with
# 64 on one side as well, the improved CNN's 32->32 stays on the row taps: 736 -> 756 /
# 2,424 -> 2,416 (min 32 alone: 763 / 2,530).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_WIDTH = 64
# Ungrouped convolutions with at most IM2COL_MAX_K taps per window (C·kh·kw) use the
# channel-major im2col route, whose GEMMs write NCHW in place: for such thin layers the
# layout moves of im2row cost more than its faster GEMMs save.  Measured on one core,
# forward+backward, im2row -> im2col: Fashion-MNIST conv 1->32 (K = 9, batch 64)
# 7.5 -> 4.3 ms, ResNet conv 3->16 (K = 27, batch 128) 16.2 -> 7.2 ms; 8->16 (K = 72)
# 26.8 -> 32.9 ms, and at K = 144 im2row's GEMMs alone are 1.7x faster.  Against the
# row taps, two workers, forward+backward of a first layer (C-ordered images): 1->32
# 1.95 -> 1.48 ms, 3->16 4.76 -> 3.85 ms; a thin inner layer (channels-last input) is a
# tie, 2->16 (K = 18) 6.57 -> 6.91 ms.
IM2COL_MAX_K = 32
# Convolutions left for im2row take the row taps instead when BLAS's own gemm is at
# hand (``kernels.blas.GEMM``), each image has at least ROW_TAPS_MIN_PIXELS output
# pixels and a kernel row's weight (kw·C, O) at most ROW_TAPS_MAX_WEIGHT elements.
# Whole steps on two workers, im2row -> row taps (first for vertical stride 1 only),
# training / inference img/s: ResNet-20 (batch 128) 452 -> 541 / 1,486 -> 1,860,
# Fashion-MNIST CNN (64) 4,131 -> 4,401 / 11,091 -> 12,169; ResNet-20's two stride-2
# layers too: 532 -> 540 / 1,816 -> 1,856.  Winograd keeps the 64-channel layers: row
# taps there instead gave ResNet-20 529 / 1,878 and the improved CIFAR CNN 716 -> 629 /
# 2,232 -> 2,030.  The per-image weight-gradient GEMMs have K = output pixels of the
# image, and each adds into all of dW: with few pixels and a large weight that traffic
# loses.  Single layers, batch 128, forward+backward, im2row / row taps (pixels, weight):
# 32->32 on 8x8 1.17x (64, 3K), 32->64 s2 on 8x8 0.86x (16, 6K), 32->48 on 6x6 0.89x
# (36, 4.6K), 64->128 s2 on 16x16 0.93x (64, 25K) and on 32x32 1.03x (256, 25K),
# 128->256 s2 on 8x8 0.64x (16, 98K).
ROW_TAPS_MIN_PIXELS = 64
ROW_TAPS_MAX_WEIGHT = 16384
_FLOATS = (np.float32, np.float64)


def _chunk_images(n, row_bytes_per_image):
    """Images per chunk: at most CHUNK_BYTES of rows, and at least MIN_CHUNKS chunks."""
    chunks = max(MIN_CHUNKS, -(-n * row_bytes_per_image // CHUNK_BYTES))
    return max(1, -(-n // chunks))


class _Plan:
    """How a convolution splits into chunks of images, and the per-chunk pieces.

    Per chunk (see ``minicnn.kernels.conv`` for the layouts): the NHWC copy ``xh``
    (nb, H, W, C) of a C-ordered input, the pixel-major ``rows`` (nb·L, K), and the
    NHWC output gradient ``yt`` (nb·L, O) of a C-ordered one (Winograd: its tiles).
    ``x_shape`` is the input's (N, C, H, W); ``w`` the weight, in the conv's dtype."""

    def __init__(self, x_shape, w, geometry):
        (sh, sw), (pt, pl), (dh, dw), self.groups, (Ho, Wo) = geometry
        self.N, self.C, self.H, self.W = x_shape
        self.O, self.L = w.shape[0], Ho * Wo
        self.K = self.C * w.shape[2] * w.shape[3]
        self.pointwise = w.shape[2:] == (1, 1) and geometry[:2] == ((1, 1), (0, 0)) and self.groups == 1
        self.depthwise = w.shape[1] == 1 and self.groups > 1
        self.taps = (sh, sw, pt, pl, dh, dw)
        self.winograd = (w.shape[2:] == (3, 3) and geometry[0] == geometry[2] == (1, 1) and self.groups == 1
                         and min(self.C, self.O) >= WINOGRAD_MIN_CHANNELS and max(self.C, self.O) >= WINOGRAD_MIN_WIDTH)
        self.im2col = (not (self.pointwise or self.winograd) and self.groups == 1
                       and self.K <= IM2COL_MAX_K)
        self.row_taps = (GEMM[w.dtype] is not None and self.groups == 1
                         and not (self.pointwise or self.winograd or self.im2col)
                         and self.L >= ROW_TAPS_MIN_PIXELS and w.shape[3] * self.C * self.O <= ROW_TAPS_MAX_WEIGHT)
        self.via_nhwc = not (self.im2col or self.depthwise)     # im2row, row taps, 1x1, Winograd: NHWC input
        self.channels_last = not self.depthwise                   # output and input gradient layout
        self.tiles = (-(-Ho // 2), -(-Wo // 2))
        per_image = 16 * self.tiles[0] * self.tiles[1] * self.C if self.winograd else self.K * self.L
        self.nb = _chunk_images(self.N, per_image * w.itemsize)
        self.n_chunks = -(-self.N // self.nb)
        self.kernel_args = (self.groups, w.shape[2], w.shape[3], sh, sw, pt, pl, dh, dw, Ho, Wo)
        if self.row_taps:
            taps, classes = _tap_rows(w.shape[2], sh, dh, pt, self.H, Ho)
            self.rowtap_args = (taps, classes, w.shape[3], sh, sw, pl, dw, Wo)
            self.wins_shape = (int(classes[:, 2].sum()) * Wo, w.shape[3] * self.C)
        self.dtype = w.dtype

    def images(self, k):
        return slice(k * self.nb, min((k + 1) * self.nb, self.N))

    def buffer(self, name, n_images, *shape):
        """A worker's scratch array (n_images, *shape), in the conv's dtype."""
        return scratch(name, n_images * math.prod(shape), self.dtype).reshape(n_images, *shape)

    def cols(self, x_c):
        """The chunk's channel-major columns (nb, K, L) in the worker's ``rows`` buffer."""
        cols = self.buffer("rows", x_c.shape[0], self.K, self.L)
        K.im2col(x_c, *self.kernel_args[1:], cols)
        return cols

    def nhwc(self, x_c, out=None):
        """The chunk as NHWC (nb, H, W, C), in ``out`` or else the worker's ``xh`` buffer."""
        xh = self.buffer("xh", x_c.shape[0], self.H, self.W, self.C) if out is None else out
        K.transpose(x_c.reshape(x_c.shape[0], self.C, -1), EMPTY[self.dtype][1], xh.reshape(x_c.shape[0], -1, self.C))
        return xh

    def rows(self, xh):
        """The pixel-major rows (nb·L, K) of an NHWC chunk; for a 1x1 conv, the chunk itself."""
        if self.pointwise:
            return xh.reshape(-1, self.K)
        rows = self.buffer("rows", xh.shape[0] * self.L, self.K)
        K.im2row(xh, *self.kernel_args, rows)
        return rows

    def wins(self, name):
        """A worker's scratch for one image's row-tap windows (R·Wo, kw·C)."""
        return self.buffer(name, *self.wins_shape)

    def winograd_input(self, xh):
        """The transformed input tiles (16, tiles, C) of an NHWC chunk, in the worker's ``rows`` buffer."""
        n = xh.shape[0]
        v = self.buffer("rows", 16, n * self.tiles[0] * self.tiles[1], self.C)
        in_taps, in_signs = _WINOGRAD[self.dtype][0]
        K.winograd_input(xh, self.taps[2], self.taps[3], *self.tiles, in_taps, in_signs, self.padded_tiles(n), v)
        return v

    def padded_tiles(self, n):
        """Scratch for the chunk zero-padded to whole tiles, NHWC (n, 2·th + 2, 2·tw + 2, C)."""
        return self.buffer("xp", n, 2 * self.tiles[0] + 2, 2 * self.tiles[1] + 2, self.C)

    def grouped(self, a):
        """(G, m, cols/G) view of a pixel-major (m, cols) matrix: one GEMM operand per group."""
        return a.reshape(a.shape[0], self.groups, -1).transpose(1, 0, 2)


def _tap_rows(kh, sh, dh, pt, H, Ho):
    """The row taps and the wins row classes (see ``kernels.conv``), int64 arrays:
    taps (T, 4), per kernel row i that some output row reads inside the image,
    (i, first wins row, first output row, output rows), the one with the most output
    rows first (on a tie, the lower i); classes (R, 3), (rho, first wins row, rows) per
    residue rho of the input rows mod sh that a tap reads."""
    def class_rows(rho):                           # input rows rho, rho + sh, ... < H
        return -(-(H - rho) // sh)
    reads = []
    for i in range(kh):
        rho, q = (i * dh - pt) % sh, (i * dh - pt) // sh   # output row oh reads input row (oh + q)·sh + rho
        oh0, oh1 = max(0, -q), min(Ho, class_rows(rho) - q)
        if oh1 > oh0:
            reads.append((i, rho, oh0 + q, oh0, oh1 - oh0))
    classes, base = {}, 0
    for rho in sorted({r[1] for r in reads}):
        classes[rho] = (rho, base, class_rows(rho))
        base += classes[rho][2]
    taps = sorted(((i, classes[rho][1] + k, oh0, m) for i, rho, k, oh0, m in reads), key=lambda t: -t[3])
    return np.array(taps, np.int64).reshape(-1, 4), np.array(list(classes.values()), np.int64).reshape(-1, 3)


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
_WINOGRAD = {np.dtype(t): ((_IN_TAPS, _IN_SIGNS.astype(t)), (_OUT_TAPS, _OUT_SIGNS.astype(t)),
                           (_OUT_GRAD_TAPS, _OUT_GRAD_SIGNS.astype(t), _OUT_GRAD_COUNTS)) for t in _FLOATS}


def _winograd_weight(w):
    """w (O, C, 3, 3) -> U (16, C, O), U[4a + b, c, o] = (G w[o, c] Gᵀ)[a, b]."""
    O, C = w.shape[:2]
    g = _G.astype(w.dtype)
    gw = np.tensordot(g, w.reshape(O * C, 3, 3), axes=(1, 1))         # (4, OC, 3)
    return np.ascontiguousarray(np.tensordot(gw, g, axes=(2, 1)).reshape(4, O, C, 4)
                                .transpose(0, 3, 2, 1)).reshape(16, C, O)


def _winograd_weight_grad(du, w_shape):
    """The adjoint of _winograd_weight: dU (16, C, O) -> dw (O, C, 3, 3) = Gᵀ dU G."""
    O, C = w_shape[:2]
    g = _G.astype(du.dtype)
    gd = np.tensordot(g, du.reshape(4, 4 * C * O), axes=(0, 0))        # (3, 4CO): Gᵀ over a
    gdg = np.tensordot(gd.reshape(3, 4, C * O), g, axes=(1, 0))       # (3, CO, 3): · G over b
    return np.ascontiguousarray(gdg.reshape(3, C, O, 3).transpose(2, 1, 0, 3))


def _epilogue(plan, y, scale, shift, residual, activation):
    """The per-chunk inference epilogue of a channels-last Conv2d (``post``): run(part, pre)
    writes y[part] = act(pre·scale + shift + residual[part]), pre being the chunk's raw
    NHWC result.  (Not in place: LLVM's vectorized loop refuses aliased arrays.  The
    depthwise kernel applies the epilogue itself.)"""
    zero = np.zeros(plan.O)
    lo, hi = CLAMPS[activation]
    res = None if residual is None else np.ascontiguousarray(residual.transpose(0, 2, 3, 1))   # a view if channels-last

    def run(part, pre):
        cols = pre.reshape(-1, plan.O)
        r = EMPTY[y.dtype][2] if res is None else res[part].reshape(cols.shape)
        normalize_cols_serial(cols, zero, scale, shift, r, lo, hi, y[part].reshape(cols.shape))
    return run


def _tap_weight(wr_t, plan):
    """Wrᵀ (1, kh·kw·C, O) as Wt (kh, kw·C, O), contiguous: the row taps' weight by kernel rows."""
    return np.ascontiguousarray(wr_t[0]).reshape(-1, plan.wins_shape[1], plan.O)


def _rows_weight(w, groups):
    """w (O, C/G, kh, kw) as Wr (G, O/G, kh·kw·C/G): each output channel's window in row order."""
    O = w.shape[0]
    return np.ascontiguousarray(w.reshape(groups, O // groups, *w.shape[1:]).transpose(0, 1, 3, 4, 2)
                                ).reshape(groups, O // groups, -1)


class Conv2d(Function):
    """y = conv(x, w) + b (see the module docstring).  Options: ``stride`` (sh, sw),
    ``padding`` (pt, pl) top/left, ``dilation`` (dh, dw), ``groups``, ``out_hw`` (Ho, Wo);
    the bottom/right padding is implied by ``out_hw``.  Chunks of images run in
    parallel on the worker threads of ``minicnn._runtime``.

    ``post`` = (scale, shift, residual, activation), inference only (see ``conv2d``):
    each chunk of the output, while it is in cache, becomes act(y·scale + shift + residual)
    per output channel (scale, shift float64 (O,); residual y's shape or None;
    activation a key of ``ops.activation.CLAMPS``)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups, out_hw, post=None):
        w = np.ascontiguousarray(w)
        ctx.geometry = stride, padding, dilation, groups, out_hw
        ctx.has_bias, ctx.x_shape = b is not None, x.shape
        plan = _Plan(x.shape, w, ctx.geometry)
        xh_all = nhwc(x) if plan.via_nhwc else None      # channels-last input: no layout move
        if xh_all is None:
            x = np.ascontiguousarray(x)
        # The backward pass needs the input for dW only, in NHWC on these routes: the
        # channels-last input itself, or the NHWC copy that the chunks make anyway.
        keep = xh_all
        if plan.via_nhwc and ctx.needs_input_grad[1] and keep is None:
            keep = np.empty((plan.N, plan.H, plan.W, plan.C), x.dtype)
        ctx.save_for_backward(keep if plan.via_nhwc else x, w)
        N, O, L = plan.N, plan.O, plan.L
        # Output: channels-last (the NHWC routes' GEMMs write it in place; im2col's per-image
        # GEMMs write NCHW, moved in cache), except for depthwise convolutions.
        y = np.empty((N,) + out_hw + (O,) if plan.channels_last else (N, O) + out_hw, x.dtype)
        bias = EMPTY[x.dtype][1] if b is None else np.ascontiguousarray(b)
        wr_t = _rows_weight(w, groups).transpose(0, 2, 1)
        wt = _tap_weight(wr_t, plan) if plan.row_taps else None
        u = _winograd_weight(w) if plan.winograd else None
        w2 = w.reshape(O, -1)
        epilogue = None if post is None or plan.depthwise else _epilogue(plan, y, *post)
        if plan.depthwise:                # the kernel applies the bias, or the epilogue, itself
            d_scale, d_shift, d_res, act = post or (np.ones(O), np.zeros(O) if b is None else b.astype(np.float64),
                                                    None, None)
            d_res = EMPTY[x.dtype][4] if d_res is None else np.ascontiguousarray(d_res)

        def chunk(k):
            part = plan.images(k)
            if epilogue is None:
                compute(part, y[part])
            else:       # the convolution into a worker's scratch, then the epilogue from cache into y
                pre = plan.buffer("pre", part.stop - part.start, *y.shape[1:])
                compute(part, pre)
                epilogue(part, pre)

        def compute(part, out):           # out: y[part], or scratch of its shape
            if plan.depthwise:
                K.depthwise(x[part], w.reshape(O, *w.shape[2:]), d_scale, d_shift,
                            d_res[part] if d_res.size else d_res, *CLAMPS[act], *plan.taps, out)
                return
            if plan.im2col:               # y_nᵀ = cols_nᵀ · Wrᵀ: the GEMM writes channels-last
                yt = out.reshape(-1, L, O)
                np.matmul(plan.cols(x[part]).transpose(0, 2, 1), w2.T, out=yt)
                if b is not None:
                    K.add_bias(yt.reshape(-1, O), bias)
                return
            if xh_all is not None:
                xh = xh_all[part]
            else:
                xh = plan.nhwc(x[part], None if keep is None else keep[part])
            yt = out.reshape(-1, O)
            if plan.row_taps:             # the bias too
                K.rowtap_forward(GEMM[x.dtype], xh, wt, bias, *plan.rowtap_args, plan.wins("rows"),
                                 yt.reshape(xh.shape[0], L, O))
                return
            if plan.winograd:
                v = plan.winograd_input(xh)
                m = plan.buffer("yt", 16, v.shape[1], O)
                np.matmul(v, u, out=m)
                K.winograd_output(m, *plan.tiles, *_WINOGRAD[x.dtype][1], out)
            else:
                np.matmul(plan.grouped(plan.rows(xh)), wr_t, out=plan.grouped(yt))
            if b is not None:
                K.add_bias(yt, bias)

        parallel_for(plan.n_chunks, chunk)
        return y.transpose(0, 3, 1, 2) if plan.channels_last else y

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved   # x: the input (NCHW); on the NHWC routes its NHWC memory, None without dW
        groups = ctx.geometry[3]
        need_x, need_w = ctx.needs_input_grad[:2]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        plan = _Plan(ctx.x_shape, w, ctx.geometry)
        N, O, L = plan.N, plan.O, plan.L
        gh_all = nhwc(gy) if plan.channels_last else None     # channels-last gradient: no layout move
        if gh_all is None:
            gy = np.ascontiguousarray(gy)
        gy3 = gy.reshape(N, O, L) if gh_all is None else None

        def bias_grad(part, out):
            if gh_all is None:
                gy3[part].sum(axis=(0, 2), dtype=np.float64, out=out)
            else:
                column_sums(gh_all[part].reshape(1, -1, O), out.reshape(1, O))

        if not (need_x or need_w):
            gb = np.empty(O) if need_b else None
            if need_b:
                bias_grad(slice(None), gb)
            return None, None, gb.astype(w.dtype) if need_b else None
        # Input gradient: channels-last on the NHWC routes (written in place), else NCHW.
        gx = None
        if need_x:
            gx = np.empty((N, plan.H, plan.W, plan.C) if plan.via_nhwc else ctx.x_shape, w.dtype)
        wr = _rows_weight(w, groups)
        wt = _tap_weight(wr.transpose(0, 2, 1), plan) if plan.row_taps else None
        # One slot per chunk, summed in chunk order: the same bits whichever worker ran it.
        u = _winograd_weight(w) if plan.winograd else None
        w2 = w.reshape(O, -1)
        slot = ((O,) + w.shape[2:] if plan.depthwise else (16, plan.C, O) if plan.winograd
                else w2.shape if plan.im2col else wr.transpose(0, 2, 1).shape)
        gw_parts = np.empty((plan.n_chunks,) + slot, w.dtype) if need_w else None
        gb_parts = np.empty((plan.n_chunks, O), np.float64) if need_b else None

        def chunk(k):
            part = plan.images(k)
            n = part.stop - part.start
            if need_b:
                bias_grad(part, gb_parts[k])
            if plan.depthwise:
                K.depthwise_backward(x[part], w.reshape(O, *w.shape[2:]), gy[part], *plan.taps,
                                     gx[part] if need_x else EMPTY[w.dtype][4],
                                     gw_parts[k] if need_w else EMPTY[w.dtype][3])
                return
            if plan.im2col:               # dy_n (O, L) as it is, or a view of channels-last dy
                g_c = gy3[part] if gh_all is None else gh_all[part].reshape(n, L, O).transpose(0, 2, 1)
                if need_w:
                    gw_n = plan.buffer("gw", n, O, plan.K)
                    np.matmul(g_c, plan.cols(x[part]).transpose(0, 2, 1), out=gw_n)
                    gw_n.sum(axis=0, out=gw_parts[k])
                if need_x:
                    d_cols = plan.buffer("rows", n, plan.K, L)
                    np.matmul(w2.T, g_c, out=d_cols)
                    K.col2im(d_cols, *plan.kernel_args[1:], gx[part])
                return
            if gh_all is not None:
                gh = gh_all[part]
            else:
                gh = plan.buffer("gh" if plan.winograd else "yt", n, *ctx.geometry[4], O)   # Winograd's yt holds dm
                K.transpose(gy3[part], EMPTY[w.dtype][1], gh.reshape(n, L, O))
            if plan.winograd:
                dm = plan.buffer("yt", 16, n * plan.tiles[0] * plan.tiles[1], O)
                K.winograd_output_grad(gh, *plan.tiles, *_WINOGRAD[w.dtype][2], dm)
                if need_w:
                    np.matmul(plan.winograd_input(x[part]).transpose(0, 2, 1), dm, out=gw_parts[k])
                if need_x:
                    dv = plan.buffer("rows", 16, dm.shape[1], plan.C)
                    np.matmul(dm, u.transpose(0, 2, 1), out=dv)
                    K.winograd_input_grad(dv, plan.taps[2], plan.taps[3], *plan.tiles, *_WINOGRAD[w.dtype][0],
                                          plan.padded_tiles(n), gx[part])
                return
            if plan.row_taps:             # dWtᵀ has dWrᵀ's memory layout
                K.rowtap_backward(GEMM[w.dtype], x[part] if need_w else EMPTY[w.dtype][4], wt, gh.reshape(n, L, O),
                                  *plan.rowtap_args, plan.wins("rows"), plan.wins("drows"),
                                  gw_parts[k] if need_w else EMPTY[w.dtype][3],
                                  gx[part] if need_x else EMPTY[w.dtype][4])
                return
            gt_g = plan.grouped(gh.reshape(n * L, O))
            if need_w:                   # as dWrᵀ: the faster GEMM orientation here
                np.matmul(plan.grouped(plan.rows(x[part])).transpose(0, 2, 1), gt_g, out=gw_parts[k])
            if need_x:
                if plan.pointwise:        # the rows are the NHWC image itself
                    np.matmul(gt_g, wr, out=plan.grouped(gx[part].reshape(-1, plan.K)))
                else:
                    d_rows = plan.buffer("rows", n * L, plan.K)
                    np.matmul(gt_g, wr, out=plan.grouped(d_rows))
                    gx[part] = 0
                    K.row2im(d_rows, *plan.kernel_args, gx[part])

        parallel_for(plan.n_chunks, chunk)
        if need_x and plan.via_nhwc:
            gx = gx.transpose(0, 3, 1, 2)
        gw = None
        if need_w and (plan.depthwise or plan.im2col):
            gw = gw_parts.sum(axis=0).reshape(w.shape)
        elif need_w and plan.winograd:
            gw = _winograd_weight_grad(gw_parts.sum(axis=0), w.shape)
        elif need_w:
            Cg, kh, kw = w.shape[1:]
            gw = gw_parts.sum(axis=0).reshape(groups, kh, kw, Cg, O // groups)
            gw = np.ascontiguousarray(gw.transpose(0, 4, 3, 1, 2)).reshape(w.shape)
        gb = gb_parts.sum(axis=0).astype(w.dtype) if need_b else None
        return gx, gw, gb


# --------------------------------------------------------------------- arguments

def as_pair(v, what, layer, minimum):
    """``v`` (int or pair of ints, each >= ``minimum``) as a pair; errors name ``layer`` and ``what``."""
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
    ph, pw = as_pair(padding, "padding", layer, 0)
    return (ph, ph), (pw, pw)


def check_float_input(x, layer, ndim=4, layout="(N, C, H, W)"):
    """Raise unless ``x`` is a float32/float64 array of rank ``ndim``."""
    if x.ndim != ndim:
        raise ValueError(f"{layer}: expected a {ndim}-D input {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{layer}: expected a float32 or float64 input, got {x.dtype}")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, scale=None, residual=None,
           activation=None):
    """2-D convolution as ``torch.nn.functional.conv2d``.

    x (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) or None -> (N, O, Ho, Wo).
    ``stride`` and ``dilation``: int or pair.  ``padding``: int or pair (symmetric),
    'valid' (none) or 'same' (output ⌈H/stride⌉; for stride 1 PyTorch's 'same',
    for stride > 1 TensorFlow's rule; an odd total puts the extra pixel bottom/right).
    ``groups`` splits the channels into independent convolutions (groups == C:
    depthwise).  x, weight and bias share one dtype, float32 or float64.

    Inference epilogue (a minicnn extension, as oneDNN's post-ops): with ``scale``
    (O,), ``residual`` (the output's shape) or ``activation`` ('relu' or 'relu6'), the
    result is act(conv(x)·scale + bias + residual), each part optional, computed on each chunk
    of the output while it is in cache.  An eval-mode batch norm is such a scale and
    bias (``minicnn.nn.conv_bn``).  No gradients flow through it: it raises if one is
    needed.
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
    options = dict(stride=stride, padding=(pads[0][0], pads[1][0]), dilation=dilation, groups=int(groups),
                   out_hw=tuple(out))
    if activation not in CLAMPS:
        raise ValueError(f"{layer}: activation must be None, 'relu' or 'relu6', got {activation!r}")
    if scale is None and residual is None and activation is None:
        return Conv2d.apply(x, weight, bias, **options)
    if is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (x, weight, bias, scale, residual)):
        raise RuntimeError(f"{layer}: the scale/residual/activation epilogue is for inference and passes no "
                           "gradient; run it inside minicnn.no_grad() or on tensors that need none")
    _check_epilogue(layer, x, (N, O, *out), scale, residual)
    s = np.ones(O) if scale is None else np.asarray(raw(scale), np.float64)
    shift = np.zeros(O) if bias is None else np.asarray(raw(bias), np.float64)
    return Conv2d.apply(x, weight, None, post=(s, shift, None if residual is None else raw(residual), activation),
                        **options)


def _check_epilogue(layer, x, out_shape, scale, residual):
    """scale (O,) and residual (the output's shape, x's dtype) or None, with clear errors."""
    if scale is not None and tuple(scale.shape) != out_shape[1:2]:
        raise ValueError(f"{layer}: scale must have shape ({out_shape[1]},), got {tuple(scale.shape)}")
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"{layer}: residual must have the output's shape {out_shape}, got {tuple(residual.shape)}")
    if residual is not None and residual.dtype != x.dtype:
        raise TypeError(f"{layer}: residual dtype {residual.dtype} differs from input dtype {x.dtype}")
