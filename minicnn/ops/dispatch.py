"""Which implementation runs an op: its reference here in ``ops/``, or a fast route.

The Functions in ``minicnn.ops`` are the reference: the textbook code, and the
specification every faster implementation is tested against.  ``minicnn.fast``
registers, per op, a *chooser* that picks one of its routes for a call's geometry;
the op asks :func:`implementation` which Function to run:

* with ``route="reference"`` the reference, with ``route=NAME`` that route (an error
  if it does not exist or cannot run the geometry): an explicit route wins;
* otherwise, inside ``with minicnn.reference_mode():`` (per thread), or with the
  environment variable ``MINICNN_REFERENCE=1``, the reference;
* otherwise the chooser's pick, or the reference when no chooser is registered.

All routes compute the same function; results differ only by float rounding.
"""
import contextlib
import os
import threading

__all__ = ["implementation", "reference_enabled", "reference_mode", "register", "routes"]

_choosers = {}
_local = threading.local()


def register(op, chooser, names):
    """Register ``chooser(key, route) -> Function`` for ``op``, whose routes are ``names``."""
    _choosers[op] = (chooser, tuple(names))


def routes(op):
    """The route names that ``implementation`` accepts for ``op``, the reference first."""
    return ("reference",) + (_choosers[op][1] if op in _choosers else ())


def reference_enabled():
    """True if ops run their reference implementation on this thread (see :func:`reference_mode`)."""
    mode = getattr(_local, "reference", None)
    return os.environ.get("MINICNN_REFERENCE", "0") not in ("", "0") if mode is None else mode


@contextlib.contextmanager
def reference_mode(enabled=True):
    """Run every op on its reference implementation (plain NumPy) inside the block, on
    this thread: the code a learner reads, steps through in a debugger, and gets the
    same results from, to float rounding.

    >>> with minicnn.reference_mode():
    ...     loss = F.cross_entropy(model(x), y)     # ops/conv.py, ops/norm.py, ... run
    """
    previous = getattr(_local, "reference", None)
    _local.reference = bool(enabled)
    try:
        yield
    finally:
        _local.reference = previous


def implementation(op, reference, key, route=None):
    """The Function that runs ``op`` for ``key`` (the call's geometry): see the module docstring."""
    if route is None and reference_enabled() or route == "reference":
        return reference
    chooser, names = _choosers.get(op, (None, ()))
    if route is not None and route not in names:
        raise ValueError(f"{op}: unknown route {route!r}; available: {', '.join(routes(op))}")
    return chooser(key, route) or reference if chooser else reference
