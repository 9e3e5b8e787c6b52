"""Elementwise arithmetic and math: + - * / ** neg, matmul, exp, log, sqrt, abs, clip, where, astype.

Binary ops broadcast as NumPy does; their backward sums the gradient over the
broadcast axes (:func:`unbroadcast`).  A Python scalar operand takes the
tensor's dtype, so float32 stays float32 and float64 stays float64.
"""
import numpy as np

from ..tensor import Function, Tensor
from .util import unbroadcast


def _operands(a, b):
    """Turn a Python/NumPy scalar operand into a 0-d array of the tensor operand's dtype."""
    if not isinstance(a, Tensor):
        a = np.asarray(a, dtype=b.dtype) if np.ndim(a) == 0 else np.asarray(a)
    if not isinstance(b, Tensor):
        b = np.asarray(b, dtype=a.dtype) if np.ndim(b) == 0 else np.asarray(b)
    return a, b


class Add(Function):
    """z = a + b.   dz/da = 1, dz/db = 1 (summed over broadcast axes)."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(g, ctx.shapes[1])


class Sub(Function):
    """z = a - b.   dz/da = 1, dz/db = -1."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(-g, ctx.shapes[1])


class Mul(Function):
    """z = a * b.   dz/da = b, dz/db = a."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    """z = a / b.   dz/da = 1/b, dz/db = -a/b² = -z/b."""
    @staticmethod
    def forward(ctx, a, b):
        z = a / b
        ctx.save_for_backward(a, b, z)
        return z

    @staticmethod
    def backward(ctx, g):
        a, b, z = ctx.saved
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * z / b, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    """z = a ** b.   dz/da = b·a^(b-1), dz/db = z·ln(a) (taken as 0 where a <= 0 and z == 0)."""
    @staticmethod
    def forward(ctx, a, b):
        z = a ** b
        ctx.save_for_backward(a, b, z)
        return z

    @staticmethod
    def backward(ctx, g):
        a, b, z = ctx.saved
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g * b * a ** (b - 1), a.shape)
        if ctx.needs_input_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = unbroadcast(np.where(z == 0, 0, g * z * np.log(a)), b.shape)
        return ga, gb


class Neg(Function):
    """z = -a."""
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class MatMul(Function):
    """z = a @ b (batched, broadcasting batch dims; 1-D operands as in NumPy).

    dz/da = g @ bᵀ,  dz/db = aᵀ @ g  (transposes over the last two axes).
    """
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a       # (k,) -> (1, k)
        b2 = b[:, None] if b.ndim == 1 else b       # (k,) -> (k, 1)
        if b.ndim == 1:  # restore the axes NumPy dropped, last one first
            g = np.expand_dims(g, -1)
        if a.ndim == 1:
            g = np.expand_dims(g, -2)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g, b2.shape).reshape(b.shape)
        return ga, gb


class Exp(Function):
    """z = eˣ.   dz/dx = z."""
    @staticmethod
    def forward(ctx, x):
        z = np.exp(x)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class Log(Function):
    """z = ln x.   dz/dx = 1/x."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.log(x)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.saved[0]


class Sqrt(Function):
    """z = √x.   dz/dx = 1/(2z)."""
    @staticmethod
    def forward(ctx, x):
        z = np.sqrt(x)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx, g):
        return g / (2 * ctx.saved[0])


class Abs(Function):
    """z = |x|.   dz/dx = sign(x) (0 at 0, as PyTorch)."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.abs(x)

    @staticmethod
    def backward(ctx, g):
        return g * np.sign(ctx.saved[0])


class Clip(Function):
    """z = min(max(x, lo), hi).   dz/dx = 1 where lo <= x <= hi, else 0 (PyTorch's clamp)."""
    @staticmethod
    def forward(ctx, x, lo=None, hi=None):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return np.clip(x, lo, hi)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved
        mask = np.ones(x.shape, dtype=bool)
        if ctx.lo is not None:
            mask &= x >= ctx.lo
        if ctx.hi is not None:
            mask &= x <= ctx.hi
        return g * mask


class Where(Function):
    """z = a where cond else b.   dz/da = cond, dz/db = not cond."""
    @staticmethod
    def forward(ctx, a, b, cond=None):
        ctx.cond, ctx.shapes = cond, (a.shape, b.shape)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        zero = np.zeros((), g.dtype)
        return (unbroadcast(np.where(ctx.cond, g, zero), ctx.shapes[0]),
                unbroadcast(np.where(ctx.cond, zero, g), ctx.shapes[1]))


class AsType(Function):
    """z = x converted to ``dtype``; the gradient is converted back."""
    @staticmethod
    def forward(ctx, x, dtype=None):
        ctx.dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype)


def add(a, b): return Add.apply(*_operands(a, b))
def sub(a, b): return Sub.apply(*_operands(a, b))
def mul(a, b): return Mul.apply(*_operands(a, b))
def div(a, b): return Div.apply(*_operands(a, b))
def pow(a, b): return Pow.apply(*_operands(a, b))  # noqa: A001 (mirrors the ** operator)
def neg(x): return Neg.apply(x)
def matmul(a, b): return MatMul.apply(a, b)
def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def abs(x): return Abs.apply(x)  # noqa: A001
def clip(x, min=None, max=None): return Clip.apply(x, lo=min, hi=max)  # noqa: A002
def astype(x, dtype): return AsType.apply(x, dtype=np.dtype(dtype))


def where(cond, a, b):
    """Elementwise ``a if cond else b``; ``cond`` is a bool array or tensor (no gradient)."""
    cond = cond.data if isinstance(cond, Tensor) else np.asarray(cond)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        return Tensor(np.where(cond, a, b))
    a, b = _operands(a, b)
    return Where.apply(a, b, cond=cond)
