"""``assert_close``: are two arrays equal to a tolerance, and if not, which elements differ and by how much."""
import numpy as np

from ..tensor import Tensor

# torch.testing.assert_close's defaults: a few ulps of each float type.
DEFAULT_TOLERANCES = {np.dtype(np.float16): (1e-3, 1e-5), np.dtype(np.float32): (1.3e-6, 1e-5),
                      np.dtype(np.float64): (1e-7, 1e-7)}


def assert_close(actual, expected, rtol=None, atol=None, equal_nan=False, name="values"):
    """Raise AssertionError unless ``|actual - expected| <= atol + rtol·|expected|`` everywhere.

    Tensors, arrays and numbers are accepted; the shapes must be equal (no broadcasting).
    ``rtol``/``atol`` default to a few ulps of the less precise dtype (float32: 1.3e-6 and
    1e-5, float64: 1e-7 and 1e-7, integers: exact), as in ``torch.testing.assert_close``.
    The report says how many elements differ, and where the largest absolute and relative
    differences are:

    >>> assert_close(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-12]))
    >>> assert_close(np.array([1.0, 2.0]), np.array([1.0, 2.5]), name="y")
    Traceback (most recent call last):
    AssertionError: y are not close: 1 of 2 elements (50.0%) differ by more than atol=1e-07 + rtol=1e-07·|expected| ...
    """
    a, e = (np.asarray(v.data if isinstance(v, Tensor) else v) for v in (actual, expected))
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} differs from the expected shape {e.shape}")
    floats = [d for d in (a.dtype, e.dtype) if d.kind == "f"]
    least = min(floats, key=lambda d: d.itemsize) if floats else None
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(least, (0.0, 0.0))
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - e64)
        bad = ~(diff <= atol + rtol * np.abs(e64))
    both_nan = np.isnan(a64) & np.isnan(e64)
    if equal_nan:
        bad &= ~both_nan
    same_inf = np.isinf(a64) & (a64 == e64)
    bad &= ~same_inf
    if not bad.any():
        return
    n = int(bad.sum())
    diff = np.where(bad, np.nan_to_num(diff, nan=np.inf, posinf=np.inf), -1.0)
    worst = np.unravel_index(int(np.argmax(diff)), a.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(bad, np.nan_to_num(diff / np.abs(e64), nan=np.inf, posinf=np.inf), -1.0)
    worst_rel = np.unravel_index(int(np.argmax(rel)), a.shape)
    raise AssertionError(
        f"{name} are not close: {n} of {a.size} elements ({100 * n / a.size:.1f}%) differ by more than "
        f"atol={atol:g} + rtol={rtol:g}·|expected| (dtypes {a.dtype} and {e.dtype}, shape {a.shape}).\n"
        f"  largest absolute difference {diff[worst]:.6g} at index {_where(worst)}: "
        f"actual {a64[worst]:.10g}, expected {e64[worst]:.10g}\n"
        f"  largest relative difference {rel[worst_rel]:.6g} at index {_where(worst_rel)}: "
        f"actual {a64[worst_rel]:.10g}, expected {e64[worst_rel]:.10g}")


def _where(index):
    return tuple(int(i) for i in index)
