"""What the benchmarks share: running a framework in a fresh process and timing a step.

Each framework runs in its own process (two BLAS/OpenMP runtimes in one process
slow each other) with the same number of threads:

* torch: ``OMP_NUM_THREADS`` (and ``torch.set_num_threads`` in the worker);
* minicnn: ``MINICNN_NUM_THREADS`` conv/pool workers, each with a one-thread BLAS
  (``minicnn/fast/runtime.py``), and ``NUMBA_NUM_THREADS`` for its ``prange`` kernels.
"""
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra):
    """This environment, with the repository importable (no install needed) and ``extra``."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def thread_env(threads, **extra):
    """:func:`env` with both frameworks limited to ``threads`` threads."""
    n = str(threads)
    return env(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, NUMBA_NUM_THREADS=n, MINICNN_NUM_THREADS=n, **extra)


def run_python(args, environ):
    """Run ``python *args`` in a fresh process; its last stdout line (JSON text).  Raises
    with the child's stderr if it fails."""
    out = subprocess.run([sys.executable, *args], env=environ, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark worker {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def median_seconds(fn, reps, clock, warmup=2):
    """Median of ``reps`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def revision():
    """The checkout's commit (with '+changes' if the tree differs from it outside the
    benchmark results, which a previous run may have rewritten), or 'unknown'."""
    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
        return (head + ("+changes" if changed else "")) or "unknown"
    except OSError:
        return "unknown"


def revision_since(start):
    """``start`` (``revision()`` when a run began) if the checkout is the same now, else both:
    the run's later processes may have run the changed tree."""
    now = revision()
    return start if now == start else f"{start} at the start, {now} at the end"
