"""Numba kernels of the direct convolution route (``minicnn.fast.conv.direct``):
register-blocked loops on NHWC images, no unrolled windows, no BLAS.

The work is done by :func:`fma_block`, a micro-kernel that keeps a block of
``PIXELS x LANES`` accumulators in SIMD registers (as oneDNN's direct AVX-512
kernels): each of the PIXELS rows is one vector of LANES output channels, and each
step broadcasts one input value per row and multiplies it with one LANES-wide weight
vector, ``PIXELS`` fused multiply-adds per weight load::

    acc[p, :] += Σ_k  x[x0 + p·xs + k·xk] · w[w0 + k·wk : w0 + k·wk + LANES]      p < PIXELS

The convolution loops call it with (pixel, output channels) blocks for the forward
pass and the input gradient, and with (input channel, output channels) blocks for the
weight gradient.  It is written as LLVM IR (a Numba ``intrinsic``), because LLVM does
not keep such a block in registers when it is written as Python loops: the loop
vectorizer vectorized the reduction over the taps instead (gathers, 3-6 GFLOP/s) and
64-128 scalar accumulators were spilled to the stack (Numba 0.68, on the AVX-512 Xeon
of the route's docstring); the IR loop compiles to vfmadd231ps on zmm registers with
the input value as a {1to16} broadcast operand, no spills.  The vectors are LANES wide whatever the dtype: 16 float32 (one
AVX-512 register) or 16 float64 (two); LLVM splits them for narrower SIMD units.

The convolutions read a zero-padded copy of one image at a time (:func:`pad_image`),
wide enough for whole blocks of PIXELS output pixels, so the loops never test a
border.  Kernels are serial and release the GIL; the route's chunks of images run on
the worker threads.
"""
import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

PIXELS = 8      # accumulator rows of a block: enough independent FMA chains to hide their latency
LANES = 16      # accumulator columns: one AVX-512 register of float32

_u = np.uint64  # never-negative indices skip the wraparound check


def python_block(vectors):
    """The micro-kernel with ``vectors`` LANES-wide accumulators per row, as plain Python
    (what the IR of :func:`block_ir` computes; it runs under ``NUMBA_DISABLE_JIT=1``):

        acc[a0 + p·astride + v·av + l] += Σ_{k<n} x[x0 + p·xs + k·xk] · w[w0 + k·wk + v·wv + l]

    for p < PIXELS, v < vectors, l < LANES."""
    def fma_block(x, x0, xs, xk, w, w0, wk, wv, n, acc, a0, astride, av):
        for p in range(PIXELS):
            for k in range(n):
                value = x[x0 + p * xs + k * xk]
                for v in range(vectors):
                    for lane in range(LANES):
                        acc[a0 + p * astride + v * av + lane] += value * w[w0 + k * wk + v * wv + lane]
    return fma_block


def block_ir(vectors):
    """The Numba intrinsic of ``python_block(vectors)``: PIXELS x ``vectors`` accumulators
    as LLVM vectors, which stay in registers through the loop over k.  x, w, acc: 1-D
    contiguous arrays of one float dtype; offsets and steps in elements, never out of
    bounds (nothing is checked)."""
    def fma_block(typingctx, x, x0, xs, xk, w, w0, wk, wv, n, acc, a0, astride, av):
        if not all(isinstance(a, types.Array) and a.dtype in (types.float32, types.float64) for a in (x, w, acc)) \
                or len({x.dtype, w.dtype, acc.dtype}) != 1:
            return None
        i = types.int64
        return types.none(x, i, i, i, w, i, i, i, i, acc, i, i, i), codegen

    def codegen(context, builder, sig, args):
        xa, x0, xs, xk, wa, w0, wk, wv_, n, acca, a0, astride, av = args
        scalar = context.get_value_type(sig.args[0].dtype)
        vec = ir.VectorType(scalar, LANES)
        i64 = ir.IntType(64)

        def const(v):
            return ir.Constant(i64, v)

        def data(value, ty):
            return cgutils.create_struct_proxy(ty)(context, builder, value=value).data

        xp, wp, ap = data(xa, sig.args[0]), data(wa, sig.args[4]), data(acca, sig.args[9])

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

        slots = [builder.add(a0, builder.add(builder.mul(astride, const(p)), builder.mul(av, const(v))))
                 for p in range(PIXELS) for v in range(vectors)]
        start = [builder.load(vector_at(ap, s), align=1) for s in slots]
        x_rows = [builder.add(x0, builder.mul(xs, const(p))) for p in range(PIXELS)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{LANES}{'f32' if scalar == ir.FloatType() else 'f64'}")
        splat = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        entry = builder.block
        head = builder.append_basic_block("fma_block.head")
        body = builder.append_basic_block("fma_block.body")
        done = builder.append_basic_block("fma_block.done")
        builder.branch(head)
        builder.position_at_end(head)
        k = builder.phi(i64)
        k.add_incoming(const(0), entry)
        accs = []
        for value in start:
            phi = builder.phi(vec)
            phi.add_incoming(value, entry)
            accs.append(phi)
        builder.cbranch(builder.icmp_signed("<", k, n), body, done)
        builder.position_at_end(body)
        w_k = builder.add(w0, builder.mul(k, wk))
        wv = [builder.load(vector_at(wp, builder.add(w_k, builder.mul(wv_, const(v)))), align=1)
              for v in range(vectors)]
        step = builder.mul(k, xk)
        new = []
        for p in range(PIXELS):
            xv = builder.load(builder.gep(xp, [builder.add(x_rows[p], step)]))
            xb = builder.insert_element(ir.Constant(vec, ir.Undefined), xv, ir.Constant(ir.IntType(32), 0))
            xb = builder.shuffle_vector(xb, ir.Constant(vec, ir.Undefined), splat)
            new += [builder.call(fma, [xb, wv[v], accs[p * vectors + v]]) for v in range(vectors)]
        k.add_incoming(builder.add(k, const(1)), body)
        for phi, value in zip(accs, new):
            phi.add_incoming(value, body)
        builder.branch(head)
        builder.position_at_end(done)
        for s, phi in zip(slots, accs):
            builder.store(phi, vector_at(ap, s), align=1)
        return context.get_dummy_value()
    return fma_block


def _block(wide, x, x0, xs, xk, w, w0, wk, wv, n, acc, a0, astride, av):
    """The micro-kernel with two vectors per row if ``wide`` (each broadcast value feeds two
    FMAs: 32 -> 32 channels 107 -> 130 GFLOP/s), else one (``wv``, ``av`` unused)."""
    if wide:
        fma_block_wide(x, x0, xs, xk, w, w0, wk, wv, n, acc, a0, astride, av)
    else:
        fma_block(x, x0, xs, xk, w, w0, wk, 0, n, acc, a0, astride, 0)


def _padded_shape(Ho, Wo, kh, kw, sh, sw, dh, dw):
    """(Hp, Wp): the padded image that output rows < Ho and output columns < Wo rounded
    up to whole blocks of PIXELS read."""
    Wb = -(-Wo // PIXELS) * PIXELS
    return (Ho - 1) * sh + (kh - 1) * dh + 1, (Wb - 1) * sw + (kw - 1) * dw + 1


def _pad_image(src, top, left, Hp, Wp, xp):
    """xp[(r·Wp + q)·C + c] = src[r - top, q - left, c], zero outside src (H, W, C); a
    negative top/left crops.  xp is flat, at least Hp·Wp·C long."""
    H, W, C = src.shape
    sf = src.reshape(-1)
    qa, qb = min(Wp, max(0, left)), max(min(Wp, max(0, left)), min(Wp, W + left))
    for r in range(Hp):
        row = r * Wp * C
        sr = r - top
        if sr < 0 or sr >= H:
            for q in range(Wp * C):
                xp[_u(row + q)] = 0
            continue
        for q in range(qa * C):
            xp[_u(row + q)] = 0
        s0 = (sr * W + qa - left) * C - qa * C
        for q in range(qa * C, qb * C):
            xp[_u(row + q)] = sf[_u(s0 + q)]
        for q in range(qb * C, Wp * C):
            xp[_u(row + q)] = 0


def _direct_conv(src, wd, bias, sh, sw, top, left, dh, dw, xp, acc, y):
    """y (n, Ho, Wo, O) = bias + the convolution of src (n, H, W, C) with wd (kh, kw, C, Op),
    all NHWC / channels last, y contiguous; Op = O rounded up to LANES (zero weights past
    O).  ``top``, ``left``: the padding (negative: cropped); bias (O,) or empty.  Scratch:
    xp flat, at least Hp·Wp·C (``padded_shape``), acc (2·PIXELS·LANES,).

    Each block of 2·LANES accumulators per pixel is either 2·LANES output channels, or
    (with LANES-wide blocks, stride and dilation 1) LANES channels of two output rows: an
    input row between them is read once for both, through kernel rows i and i - 1."""
    n, H, W, C = src.shape
    kh, kw, _, Op = wd.shape
    Ho, Wo, O = y.shape[1], y.shape[2], y.shape[3]
    Hp, Wp = padded_shape(Ho, Wo, kh, kw, sh, sw, dh, dw)
    wf, yf = wd.reshape(-1), y.reshape(-1)
    has_bias = bias.shape[0] > 0
    # Without dilation a kernel row's taps (j, c) are kw·C consecutive values: one block call.
    span, calls = (kw * C, 1) if dw == 1 else (C, kw)
    wide = Op % (2 * LANES) == 0
    width = 2 * LANES if wide else LANES
    rows = 2 if not wide and sh == 1 and dh == 1 else 1
    krow = kw * C * Op                     # one kernel row of wd
    for b in range(n):
        pad_image(src[b], top, left, Hp, Wp, xp)
        for oh in range(0, Ho, rows):
            two = rows == 2 and oh + 1 < Ho
            for ow0 in range(0, Wo, PIXELS):
                for ob in range(0, Op, width):
                    for q in range(2 * PIXELS * LANES):
                        acc[_u(q)] = 0
                    if two:         # input rows oh .. oh + kh: kernel row r for oh, r - 1 for oh + 1
                        for r in range(kh + 1):
                            row = ((oh + r) * Wp + ow0 * sw) * C
                            for j in range(calls):
                                x0, w0 = row + j * dw * C, (r * kw + j) * C * Op + ob
                                if r == 0:
                                    block(False, xp, x0, sw * C, 1, wf, w0, Op, 0, span, acc, 0, 2 * LANES, 0)
                                elif r == kh:
                                    block(False, xp, x0, sw * C, 1, wf, w0 - krow, Op, 0, span, acc, LANES,
                                          2 * LANES, 0)
                                else:
                                    block(True, xp, x0, sw * C, 1, wf, w0, Op, -krow, span, acc, 0, 2 * LANES, LANES)
                    else:
                        for i in range(kh):
                            row = ((oh * sh + i * dh) * Wp + ow0 * sw) * C
                            for j in range(calls):
                                block(wide, xp, row + j * dw * C, sw * C, 1, wf, ((i * kw + j) * C) * Op + ob, Op,
                                      LANES, span, acc, 0, 2 * LANES, LANES)
                    # Flat contiguous runs with the bias test outside them, so that LLVM vectorizes
                    # the copy: thin layers spend much of their time here (docs/performance.md, "Direct").
                    no = min(width, O - ob)
                    for t in range(2 if two else 1):
                        for p in range(min(PIXELS, Wo - ow0)):
                            y0 = ((b * Ho + oh + t) * Wo + ow0 + p) * O + ob
                            a0 = p * 2 * LANES + t * LANES
                            if has_bias:
                                for o in range(no):
                                    yf[_u(y0 + o)] = acc[_u(a0 + o)] + bias[_u(ob + o)]
                            else:
                                for o in range(no):
                                    yf[_u(y0 + o)] = acc[_u(a0 + o)]


def _direct_weight_grad(xh, gh, kw, sh, sw, top, left, dh, dw, xp, gp, gw):
    """gw (kh, calls, Sb, Op) += Σ_pixels x-window ⊗ dy over the images of xh (n, H, W, C)
    and their output gradient gh (n, Ho, Wo, O), both NHWC, kw taps per kernel row, in
    the order of the padded image's memory: without dilation one run (calls = 1) of
    kw·C taps (j, c), else kw runs (calls = kw) of C; Sb is a run rounded up to PIXELS,
    Op = O rounded up to LANES.  The extra rows and columns get junk (the junk rows read
    the next pixel's values); the caller keeps gw[:, :, :run, :O].  Scratch: xp flat, at
    least Hp·Wp·C + PIXELS; gp (Ho·Wo·Op,), used when O < Op.  With LANES-wide blocks at
    stride and dilation 1 each input value feeds two kernel rows at once."""
    n, H, W, C = xh.shape
    Ho, Wo, O = gh.shape[1], gh.shape[2], gh.shape[3]
    kh, calls, Sb, Op = gw.shape
    Hp, Wp = padded_shape(Ho, Wo, kh, kw, sh, sw, dh, dw)
    gwf = gw.reshape(-1)
    wide = Op % (2 * LANES) == 0
    width = 2 * LANES if wide else LANES
    pairs = not wide and sh == 1 and dh == 1      # as direct_conv's pairs of output rows
    for b in range(n):
        pad_image(xh[b], top, left, Hp, Wp, xp)
        g = gh[b].reshape(-1)
        if O < Op:
            for r in range(Ho * Wo):
                for o in range(Op):
                    gp[_u(r * Op + o)] = g[_u(r * O + o)] if o < O else 0
            g = gp
        if pairs:       # input row r through kernel rows i and i + 1, for output rows r - i and r - i - 1
            for r in range(Hp):
                i1 = min(kh, r + 1)
                for i in range(max(0, r - Ho + 1), i1, 2):
                    for j in range(calls):
                        for kb in range(0, Sb, PIXELS):
                            for ob in range(0, Op, LANES):
                                block(i + 1 < i1, xp, r * Wp * C + j * dw * C + kb, 1, sw * C, g,
                                      (r - i) * Wo * Op + ob, Op, -Wo * Op, Wo,
                                      gwf, ((i * calls + j) * Sb + kb) * Op + ob, Op, calls * Sb * Op)
            continue
        for oh in range(Ho):
            for i in range(kh):
                row = (oh * sh + i * dh) * Wp * C
                for j in range(calls):
                    for kb in range(0, Sb, PIXELS):
                        for ob in range(0, Op, width):
                            block(wide, xp, row + j * dw * C + kb, 1, sw * C, g, oh * Wo * Op + ob, Op, LANES, Wo,
                                  gwf, ((i * calls + j) * Sb + kb) * Op + ob, Op, LANES)


# The IR needs the compiler; without it (NUMBA_DISABLE_JIT=1) the Python loops run.
fma_block, fma_block_wide = ((python_block(1), python_block(2)) if config.DISABLE_JIT
                             else (intrinsic(block_ir(1)), intrinsic(block_ir(2))))
block = njit(cache=True, inline="always")(_block)
padded_shape = njit(cache=True, inline="always")(_padded_shape)
pad_image = njit(cache=True, nogil=True)(_pad_image)
direct_conv = njit(cache=True, nogil=True)(_direct_conv)
direct_weight_grad = njit(cache=True, nogil=True)(_direct_weight_grad)
