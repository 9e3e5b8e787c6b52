"""The interface of a convolution route, and the chunked driver the GEMM routes share.

A route is a ``Function`` with the reference ``minicnn.ops.conv.Conv2d``'s signature,

    forward(ctx, x, w, b, stride, padding, dilation, groups, out_hw)  -> y
    backward(ctx, gy)                                                 -> gx, gw, gb

plus ``applies(g)``: can it run the geometry ``g`` (a ``minicnn.ops.conv.ConvGeometry``)?
Every route computes the same convolution; they differ in how (and so in speed and
rounding).  The routes' tests check each against the reference.

:class:`ChunkedConv` is the driver of the routes that work chunk by chunk: it splits
the batch, runs a route's ``forward_chunk``/``backward_chunk`` on the worker threads,
sums the weight gradient chunk by chunk in a fixed order, and owns the memory layouts:
with ``nhwc_input`` the route reads each chunk's NHWC memory (a channels-last input as it
is, or a copy made per chunk), with ``channels_last_output`` the output and the input
gradient come back with NHWC memory behind their NCHW shapes (``minicnn.fast.layout``).

``post`` (``minicnn.fast.conv.conv2d_fused``): each chunk of the output, while in cache,
becomes act(y·scale + shift + residual) per output channel, and with ``pool`` that, 2x2
max-pooled: only the pooled quarter of the output is ever written.  Gradients flow
through the pooled form only, and only with scale 1, shift 0 and no residual (what
``conv2d_fused`` allows): the epilogue then records each window's winner, and the
backward pass rebuilds each chunk's output gradient from the pooled one in a worker's
scratch (``kernels.pool.max_pool_2x2_nhwc_backward``) just before the route reads it.
"""
import numpy as np

from ...tensor import Function
from ..kernels import conv as K
from ..kernels.norm import CLAMPS, normalize_tiles_serial, tile
from ..kernels.pool import max_pool_2x2_epilogue, max_pool_2x2_nhwc_backward
from ..kernels.reduce import column_sums
from ..layout import EMPTY, nhwc
from ..runtime import parallel_for
from .plan import Plan


class ChunkedConv(Function):
    """A convolution route run chunk by chunk on the worker threads (see the module docstring).

    Subclasses set ``name``, ``nhwc_input``, ``channels_last_output`` and define
    ``applies``, ``prepare`` (per call: the weight in the route's layouts),
    ``forward_chunk``, ``backward_chunk``, ``grad_slot`` (the shape of a chunk's weight
    gradient) and ``weight_grad`` (the chunks' summed weight gradient back to w's layout).
    A route with ``own_epilogue`` applies ``post`` itself (``prepare`` gets it)."""
    name = None
    nhwc_input = True
    channels_last_output = True
    own_epilogue = False

    @staticmethod
    def applies(g):
        raise NotImplementedError

    @classmethod
    def plan(cls, x_shape, w, options):
        return Plan(x_shape, w, options)

    @classmethod
    def sized_plan(cls, ctx, x_shape, w, options):
        """``plan``, in chunks of ``ctx.chunk_images`` images where the caller set that: the
        autotuner (``autotune.measure``) times a part of a batch in the chunks of the whole
        batch, which a part cut into the usual chunks would not have."""
        plan = cls.plan(x_shape, w, options)
        chunk = getattr(ctx, "chunk_images", None)
        if chunk:
            plan.nb = min(chunk, max(plan.N, 1))
        return plan

    @classmethod
    def forward(cls, ctx, x, w, b, stride, padding, dilation, groups, out_hw, post=None):
        w = np.ascontiguousarray(w)
        options = stride, padding, dilation, groups, out_hw
        ctx.options, ctx.has_bias, ctx.x_shape = options, b is not None, x.shape
        plan = cls.sized_plan(ctx, x.shape, w, options)
        xh_all = nhwc(x) if cls.nhwc_input else None      # channels-last input: no layout move
        if xh_all is None:
            x = np.ascontiguousarray(x)
        # The backward pass needs the input for dW only, in NHWC on these routes: the
        # channels-last input itself, or the NHWC copy that the chunks make anyway.
        keep = xh_all
        if cls.nhwc_input and ctx.needs_input_grad[1] and keep is None:
            keep = np.empty((plan.N, plan.H, plan.W, plan.C), x.dtype)
        ctx.save_for_backward(keep if cls.nhwc_input else x, w)
        N, O = plan.N, plan.O
        y_hw = out_hw if post is None or not post[4] else (out_hw[0] // 2, out_hw[1] // 2)   # pooled in the epilogue
        y = np.empty((N,) + y_hw + (O,) if cls.channels_last_output else (N, O) + y_hw, x.dtype)
        bias = EMPTY[x.dtype][1] if b is None else np.ascontiguousarray(b)
        weights = cls.prepare(plan, w, b, post)
        # The pooled windows' winners: the backward pass routes the pooled gradient through them.
        ctx.pool_argmax = None
        if post is not None and post[4] and any(ctx.needs_input_grad):
            ctx.pool_argmax = np.empty(y.shape, np.int32)
        epilogue = None if post is None or cls.own_epilogue else _epilogue(plan, y, *post, ctx.pool_argmax)

        def chunk(k):
            part = plan.images(k)
            if cls.nhwc_input:
                src = xh_all[part] if xh_all is not None else plan.nhwc(x[part], None if keep is None else keep[part])
            else:
                src = x[part]
            if epilogue is None:
                cls.forward_chunk(plan, weights, part, src, bias, y[part])
            else:       # the convolution into a worker's scratch, then the epilogue from cache into y
                pre = plan.buffer("pre", part.stop - part.start, *out_hw, O)
                cls.forward_chunk(plan, weights, part, src, bias, pre)
                epilogue(part, pre)

        parallel_for(plan.n_chunks, chunk)
        return y.transpose(0, 3, 1, 2) if cls.channels_last_output else y

    @classmethod
    def backward(cls, ctx, gy):
        x, w = ctx.saved   # x: the input (NCHW); NHWC memory on nhwc_input routes; None without dW
        need_x, need_w = ctx.needs_input_grad[:2]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        plan = cls.sized_plan(ctx, ctx.x_shape, w, ctx.options)
        N, O = plan.N, plan.O
        output_grad = _output_grad(plan, gy, ctx.pool_argmax, cls.channels_last_output)
        gx = None
        if need_x:
            gx = np.empty((N, plan.H, plan.W, plan.C) if cls.nhwc_input else ctx.x_shape, w.dtype)
        weights = cls.prepare(plan, w, None) if need_x or need_w else None
        # One slot per chunk, summed in chunk order: the same bits whichever worker ran it.
        gw_parts = np.empty((plan.n_chunks,) + cls.grad_slot(plan, weights), w.dtype) if need_w else None
        gb_parts = np.empty((plan.n_chunks, O), np.float64) if need_b else None

        def chunk(k):
            part = plan.images(k)
            g, g_is_nhwc = output_grad(part)
            if need_b:
                if g_is_nhwc:
                    column_sums(g.reshape(1, -1, O), gb_parts[k].reshape(1, O))
                else:
                    g.reshape(g.shape[0], O, -1).sum(axis=(0, 2), dtype=np.float64, out=gb_parts[k])
            if need_x or need_w:
                cls.backward_chunk(plan, weights, part, None if x is None else x[part], g, g_is_nhwc,
                                   gw_parts[k] if need_w else None, gx[part] if need_x else None)

        parallel_for(plan.n_chunks, chunk)
        if need_x and cls.nhwc_input:
            gx = gx.transpose(0, 3, 1, 2)
        gw = cls.weight_grad(gw_parts.sum(axis=0), w.shape, plan) if need_w else None
        gb = gb_parts.sum(axis=0).astype(w.dtype) if need_b else None
        return gx, gw, gb


def _output_grad(plan, gy, pool_argmax, channels_last_output):
    """part -> (the output gradient of the images ``part``, True if it is NHWC): a slice of
    gy, channels-last as it is where it is; or, after a pooled epilogue (``pool_argmax``
    given, gy the pooled output's gradient), the chunk's full gradient rebuilt in the
    worker's ``unpooled`` buffer."""
    if pool_argmax is not None:
        gp = nhwc(gy)
        gp = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)) if gp is None else gp

        def unpooled(part):
            g = plan.buffer("unpooled", part.stop - part.start, plan.Ho, plan.Wo, plan.O)
            max_pool_2x2_nhwc_backward(gp[part], pool_argmax[part], g)
            return g, True
        return unpooled
    gh = nhwc(gy) if channels_last_output else None     # channels-last gradient: no layout move
    if gh is not None:
        return lambda part: (gh[part], True)
    gy = np.ascontiguousarray(gy)
    return lambda part: (gy[part], False)


def nhwc_grad(plan, g, is_nhwc, name="yt"):
    """A chunk's output gradient as NHWC (n, Ho, Wo, O): as it is if channels-last, else
    moved into the worker's ``name`` buffer."""
    if is_nhwc:
        return g
    n = g.shape[0]
    gh = plan.buffer(name, n, plan.Ho, plan.Wo, plan.O)
    K.transpose(g.reshape(n, plan.O, plan.L), EMPTY[plan.dtype][1], gh.reshape(n, plan.L, plan.O))
    return gh


def _epilogue(plan, y, scale, shift, residual, activation, pool, pool_argmax):
    """The per-chunk epilogue of a channels-last output (``post``): run(part, pre) writes
    y[part] = act(pre·scale + shift + residual[part]), 2x2 max-pooled if ``pool`` (and the
    windows' winners into ``pool_argmax``, unless None), pre being the chunk's raw NHWC
    result.  (Not in place: LLVM's vectorized loop refuses aliased arrays.)"""
    lo, hi = CLAMPS[activation]
    res = None if residual is None else np.ascontiguousarray(residual.transpose(0, 2, 3, 1))   # a view if channels-last
    if pool:
        def run(part, pre):
            argmax = EMPTY[np.dtype(np.int32)][4] if pool_argmax is None else pool_argmax[part]
            max_pool_2x2_epilogue(pre, scale, shift, EMPTY[y.dtype][4] if res is None else res[part], lo, hi, y[part],
                                  argmax, activation is not None)
        return run
    zero, scale, shift = tile(np.zeros(plan.O), plan.O), tile(scale, plan.O), tile(shift, plan.O)

    def run(part, pre):
        r = EMPTY[y.dtype][1] if res is None else res[part].reshape(-1)
        normalize_tiles_serial(pre.reshape(-1), zero, scale, shift, r, lo, hi, y[part].reshape(-1))
    return run
