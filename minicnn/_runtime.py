"""Threads: the environment set before NumPy and Numba start, and the worker pool
that the convolutions and pooling layers use.  Memory: glibc's allocator told to keep
freed activation buffers for reuse (see ``MALLOC_SETTINGS`` below).

Two thread pools on a small CPU are the hazard measured here.  A convolution is
a pipeline of short steps per chunk of images (layout move, im2row, GEMM,
row2im); when every step is split across all cores, by Numba's pool and then by
OpenBLAS's, every step ends in a barrier where one core waits for the other.
When another process holds a core for a few milliseconds (this machine is
shared), *every* barrier waits for it.  Measured on this 2-core machine under
such load (1-min load average 5-6), for the conv and pool layers of the
Fashion-MNIST CNN / a ResNet-20 slice, forward+backward, median of 4 rounds:

    chunks on 2 worker threads, serial kernels, 1-thread BLAS (this module)   69 ms /  378 ms
    serial kernels, OpenBLAS on 2 threads, OPENBLAS_THREAD_TIMEOUT=4         614 ms /  445 ms
    the same with OpenBLAS's default spin-wait                              752 ms / 2012 ms
    everything on one thread                                                 71 ms /  333 ms

and with Numba-parallel kernels *and* 2-thread OpenBLAS (the previous design),
single conv layers ran 3-7x slower on two threads than on one.  PyTorch's
OpenMP pool degrades the same way (see benchmarks/results).  Hence:

* the convolution is parallel over chunks of images: :func:`parallel_for` runs
  the chunks on a few Python worker threads, each chunk entirely on one thread
  (serial Numba kernels compiled ``nogil``, a single-threaded GEMM; both release
  the GIL).  Threads pull chunks from a shared counter, so a thread that loses
  its core simply does fewer chunks: one join per layer instead of one barrier
  per step.  Pooling runs slices of planes the same way;
* ``OPENBLAS_NUM_THREADS=1``: GEMMs run on the calling worker (two concurrent
  callers of a multi-threaded OpenBLAS would queue on its one thread server).
  Other large matmuls, e.g. a linear layer, then run on one core;
* ``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``: the Numba kernels that still
  use ``prange`` (normalization) sleep between calls instead of spinning, so they
  never steal a core from the conv workers.  Numba's threading layer is left at
  its default (OpenMP here): OpenMP and workqueue measured the same on the batch
  norm kernels (18.8 vs 18.8 ms, 18.2 vs 19.3 ms); TBB is not installed and is no
  dependency.

The variables are only defaults: anything the user exported wins.  They take
effect only if this module runs before ``numpy`` is first imported, which is
why ``minicnn/__init__.py`` imports it first; if NumPy was imported earlier,
the first parallel call sets OpenBLAS to one thread through its C API instead.
``MINICNN_NUM_THREADS`` sets the number of workers (default: the CPUs this
process may run on).
"""
import ctypes
import itertools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

# If NumPy came first, its OpenBLAS has already read the environment below.
_NUMPY_FIRST = "numpy" in sys.modules
_BLAS_ENV_AT_START = os.environ.get("OPENBLAS_NUM_THREADS")

_DEFAULTS = {
    "OPENBLAS_NUM_THREADS": "1",
    "OPENBLAS_THREAD_TIMEOUT": "4",   # if a user asks for more BLAS threads: let idle ones sleep
    "OMP_WAIT_POLICY": "PASSIVE",
    "KMP_BLOCKTIME": "0",
}

for _k, _v in _DEFAULTS.items():
    os.environ.setdefault(_k, _v)

# glibc's malloc hands every block above its mmap threshold (128 KiB at first, raised
# dynamically up to 32 MiB) straight back to the kernel when freed, so each training
# step maps fresh pages for its activations and gradients and pays a page fault and a
# zeroing per 4 KiB.  Measured on this machine, one thread, CPU time per training step:
# Fashion-MNIST CNN (batch 64) 50 -> 40 ms (sys 8-10 -> 0.3 ms, 1,500-4,000 -> 1 page
# faults), ResNet-20 (batch 128) 960 -> 850 ms.  Keeping freed blocks in the heap for
# reuse removes that; the cost is that up to M_TRIM_THRESHOLD of free memory stays
# mapped.  MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or malloc GLIBC_TUNABLES that the
# user exported win.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 256 << 20}


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


MALLOC_TUNED = _keep_freed_memory()


def num_threads():
    """Worker threads for :func:`parallel_for`: 1 if BLAS could not be made single-threaded
    (see :func:`_serial_blas`), else ``MINICNN_NUM_THREADS``, else the usable CPUs.  BLAS is
    made single-threaded whatever the count, so that a GEMM always runs on its worker."""
    if not _serial_blas():
        return 1
    env = os.environ.get("MINICNN_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_blas_checked = None

# Names of OpenBLAS's thread setter in NumPy's and SciPy's wheels and in plain builds.
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")


def _serial_blas():
    """True once the loaded OpenBLAS runs single-threaded.

    When minicnn is imported before NumPy the environment default did it.  When
    NumPy came first (``import numpy as np; import minicnn`` is common), OpenBLAS
    already started its threads: its ``openblas_set_num_threads`` is called on the
    libraries mapped into this process (Linux).  If that is not possible the conv
    workers fall back to one (serial chunks, BLAS's own threads)."""
    global _blas_checked
    if _blas_checked is None:
        _blas_checked = not _NUMPY_FIRST or _BLAS_ENV_AT_START == "1" or _set_openblas_threads(1)
    return _blas_checked


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
    the same thread asks for ``name`` again."""
    import numpy as np
    buffers = _scratch.__dict__
    key = (name, np.dtype(dtype).str)
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype)
    return buf[:size]
