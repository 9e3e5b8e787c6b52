"""Threads and memory for the fast routes: the worker pool that the convolutions and
pooling layers use, and the process settings they need, applied when a fast route
first runs (:func:`configure`), never at import.

Two thread pools on a small CPU are the hazard.  A convolution is a pipeline of short
steps per chunk of images (layout move, im2row, GEMM, row2im); when every step is
split across all cores, by Numba's pool and then by OpenBLAS's, every step ends in a
barrier where one core waits for the other, and when another process holds a core for
a few milliseconds, *every* barrier waits for it (measurements: docs/performance.md,
"Threads").  Hence:

* the convolution is parallel over chunks of images: :func:`parallel_for` runs the
  chunks on a few Python worker threads, each chunk entirely on one thread (serial
  Numba kernels compiled ``nogil``, a single-threaded GEMM; both release the GIL).
  Threads pull chunks from a shared counter, so a thread that loses its core simply
  does fewer chunks: one join per layer instead of one barrier per step;
* OpenBLAS runs single-threaded: GEMMs run on the calling worker.  :func:`configure`
  sets it through OpenBLAS's C API (``openblas_set_num_threads``, found among the
  libraries mapped into this process) unless ``OPENBLAS_NUM_THREADS`` was exported;
  where that is impossible, the workers fall back to one;
* ``OMP_WAIT_POLICY=PASSIVE`` and ``KMP_BLOCKTIME=0`` (unless exported) before Numba's
  OpenMP threads start: the normalization kernels that still use ``prange`` sleep
  between calls instead of spinning, so they never steal a core from the workers;
* glibc's allocator keeps freed blocks up to 32 MiB for reuse instead of returning
  them to the kernel, so that each training step does not pay page faults and zeroing
  for fresh activation memory (``MALLOC_SETTINGS``; skipped where the user exported
  malloc tunables, or on other C libraries).

``MINICNN_NUM_THREADS`` sets the number of workers (default: the CPUs this process may
run on).  :func:`settings` reports what was applied.  ``MINICNN_SCRATCH_FILL=nan`` fills
the reused work buffers with NaN whenever they are handed out (:func:`scratch`), so that
tests catch a kernel that forgets to zero what it accumulates into.
"""
import ctypes
import itertools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}

# glibc mallopt parameters: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 256 << 20}

_configured = None
_configure_lock = threading.Lock()


def _keep_freed_memory():
    """Apply :data:`MALLOC_SETTINGS` with glibc's ``mallopt``; True if applied."""
    user_set = ("MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ
                or "malloc." in os.environ.get("GLIBC_TUNABLES", ""))
    if not sys.platform.startswith("linux") or user_set:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): leave its allocator alone
        return False
    return all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in MALLOC_SETTINGS.items())


def configure():
    """Apply the process settings of the module docstring, once; returns what was applied.

    Called by the fast routes before they run; call it yourself to apply them earlier."""
    global _configured
    if _configured is None:
        with _configure_lock:
            if _configured is None:
                for k, v in _ENV_DEFAULTS.items():
                    os.environ.setdefault(k, v)
                serial = os.environ.get("OPENBLAS_NUM_THREADS") == "1" or _set_openblas_threads(1)
                _configured = {"serial_blas": serial, "malloc_tuned": _keep_freed_memory(),
                               **{k: os.environ[k] for k in _ENV_DEFAULTS}}
    return _configured


def settings():
    """What :func:`configure` applied (None before the first fast route ran), and the worker count."""
    return None if _configured is None else dict(_configured, workers=num_threads())


def num_threads():
    """Worker threads for :func:`parallel_for`: 1 if BLAS could not be made single-threaded,
    else ``MINICNN_NUM_THREADS``, else the usable CPUs."""
    if not configure()["serial_blas"]:
        return 1
    env = os.environ.get("MINICNN_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Names of OpenBLAS's thread setter in NumPy's and SciPy's wheels and in plain builds.
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")


def loaded_libraries(name):
    """Paths of the shared libraries mapped into this process whose file name contains
    ``name`` (case-insensitive), sorted; empty where /proc/self/maps is unavailable (not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f}
    except OSError:
        return []
    return sorted(p for p in paths if name in os.path.basename(p).lower() and ".so" in p)


def _set_openblas_threads(n):
    done = False
    for path in loaded_libraries("openblas"):
        lib = ctypes.CDLL(path)
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                done = True
                break
    return done


_pool = None
_pool_lock = threading.Lock()


def _executor():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(num_threads(), thread_name_prefix="minicnn")
        return _pool


def parallel_for(n_tasks, work):
    """Call ``work(k)`` for k in 0..n_tasks-1, spread over the worker threads.

    Each worker pulls the next k from a shared counter (dynamic scheduling), so a
    worker that loses its core does fewer tasks.  ``work`` must release the GIL for
    its heavy parts (NumPy GEMMs and ``nogil`` Numba kernels do) and must write
    disjoint outputs for different k; to stay deterministic it should not
    accumulate across tasks.  Runs inline when there is one task or one thread.
    Not reentrant: ``work`` must not call ``parallel_for``."""
    workers = min(n_tasks, num_threads())
    if workers <= 1:
        for k in range(n_tasks):
            work(k)
        return
    counter = itertools.count()

    def loop():
        for k in iter(counter.__next__, None):
            if k >= n_tasks:
                break
            work(k)

    for future in [_executor().submit(loop) for _ in range(workers)]:
        future.result()


def parallel_slices(n, work, min_length=1):
    """Call ``work(s)`` for slices ``s`` covering ``range(n)``, spread over the worker
    threads: about four per worker (so a worker that loses its core does fewer), each
    at least ``min_length`` long (short jobs run inline).  ``work`` obeys the rules of
    :func:`parallel_for`."""
    tasks = max(1, min(4 * num_threads(), n // max(1, min_length)))
    step = -(-n // tasks) if n else 1
    parallel_for(-(-n // step), lambda k: work(slice(k * step, min(n, (k + 1) * step))))


_scratch = threading.local()


def scratch(name, size, dtype):
    """A 1-D work buffer of ``size`` elements owned by the calling thread.

    Grows as needed and is reused across calls, so the hot loops do not pay for
    fresh pages (large ``np.empty`` calls map new memory every time).  Valid until
    the same thread asks for ``name`` again.  Its contents are undefined: with
    ``MINICNN_SCRATCH_FILL=nan`` (read at every call; the test suite sets it) a
    floating buffer is filled with NaN each time it is handed out, so a kernel that
    reads an element it did not write fails every time instead of only when the
    previous call's leftovers happen to be wrong."""
    import numpy as np
    buffers = _scratch.__dict__
    key = (name, np.dtype(dtype).str)
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype)
    buf = buf[:size]
    if buf.dtype.kind == "f" and os.environ.get("MINICNN_SCRATCH_FILL") == "nan":
        buf.fill(np.nan)
    return buf
