"""What every GEMM convolution route shares: the chunks of images, the workers'
scratch buffers, and the weight in the layouts the GEMMs read.

A convolution's batch is split into chunks of ``nb`` images, each chunk worked on by
one worker thread (``minicnn.fast.runtime.parallel_for``) while its unrolled windows
stay in cache.  The chunking depends only on the shapes (never on the thread count),
so the gradients' rounding is the same on every machine.
"""
import math

import numpy as np

from ..runtime import scratch
from ..kernels import conv as K
from ..layout import EMPTY

# Bytes of one chunk's unrolled windows: big enough for efficient GEMMs, small enough
# that a worker's windows stay in cache between their unrolling and the GEMMs.  At
# least MIN_CHUNKS chunks, so that a few workers share the batch.
CHUNK_BYTES = 2 << 20
MIN_CHUNKS = 4


def chunk_images(n, bytes_per_image):
    """Images per chunk: at most CHUNK_BYTES of unrolled windows, and at least MIN_CHUNKS chunks."""
    chunks = max(MIN_CHUNKS, -(-n * bytes_per_image // CHUNK_BYTES))
    return max(1, -(-n // chunks))


class Plan:
    """The geometry of one convolution call and its split into chunks of images.

    ``x_shape`` (N, C, H, W); ``w`` the weight (O, C/G, kh, kw) in the conv's dtype;
    ``options`` the Function's (stride, padding, dilation, groups, out_hw);
    ``per_image`` the elements a route unrolls per image (sets the chunk size)."""

    def __init__(self, x_shape, w, options, per_image=None):
        (sh, sw), (pt, pl), (dh, dw), self.groups, (Ho, Wo) = options
        self.N, self.C, self.H, self.W = x_shape
        self.O, self.kh, self.kw = w.shape[0], w.shape[2], w.shape[3]
        self.Ho, self.Wo, self.L = Ho, Wo, Ho * Wo
        self.K = self.C * self.kh * self.kw
        self.taps = (sh, sw, pt, pl, dh, dw)
        self.kernel_args = (self.groups, self.kh, self.kw, sh, sw, pt, pl, dh, dw, Ho, Wo)
        self.dtype = w.dtype
        self.nb = chunk_images(self.N, (self.K * self.L if per_image is None else per_image) * w.itemsize)

    @property
    def n_chunks(self):
        return -(-self.N // self.nb)

    def images(self, k):
        return slice(k * self.nb, min((k + 1) * self.nb, self.N))

    def buffer(self, name, n_images, *shape):
        """A worker's scratch array (n_images, *shape), in the conv's dtype."""
        return scratch(name, n_images * math.prod(shape), self.dtype).reshape(n_images, *shape)

    def nhwc(self, x_c, out=None):
        """The chunk as NHWC (nb, H, W, C), in ``out`` or else the worker's ``xh`` buffer."""
        xh = self.buffer("xh", x_c.shape[0], self.H, self.W, self.C) if out is None else out
        K.transpose(x_c.reshape(x_c.shape[0], self.C, -1), EMPTY[self.dtype][1], xh.reshape(x_c.shape[0], -1, self.C))
        return xh

    def grouped(self, a):
        """(G, m, cols/G) view of a pixel-major (m, cols) matrix: one GEMM operand per group."""
        return a.reshape(a.shape[0], self.groups, -1).transpose(1, 0, 2)


def rows_weight(w, groups):
    """w (O, C/G, kh, kw) as Wr (G, O/G, kh·kw·C/G): each output channel's window in row order."""
    O = w.shape[0]
    return np.ascontiguousarray(w.reshape(groups, O // groups, *w.shape[1:]).transpose(0, 1, 3, 4, 2)
                                ).reshape(groups, O // groups, -1)


def rows_weight_grad(gw_rows_t, w_shape, groups):
    """The adjoint layout move: dWrᵀ (G, kh·kw·C/G, O/G) back to dw (O, C/G, kh, kw)."""
    O, Cg, kh, kw = w_shape
    gw = gw_rows_t.reshape(groups, kh, kw, Cg, O // groups)
    return np.ascontiguousarray(gw.transpose(0, 4, 3, 1, 2)).reshape(w_shape)
