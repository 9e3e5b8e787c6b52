"""Where a benchmark ran: the CPU, the BLAS NumPy calls and its kernels, the frameworks'
versions, the thread count, and the machine's measured float32 GEMM rate.

    python benchmarks/machine.py [--threads 2]      # prints describe() as JSON and the header

A speed figure means little without the machine: two AVX-512 Xeons of the same kind
have given 1.03x and 0.77x PyTorch for the same code.  :func:`describe` collects

* the CPU from ``lscpu`` (falling back to ``/proc/cpuinfo``): model name, family and
  model numbers, the SIMD extensions that matter to GEMM kernels, the hypervisor, CPUs;
* NumPy's BLAS (name and version from ``numpy.show_config``; for OpenBLAS the kernel
  set it picked at run time, ``openblas_get_corename``, and its build configuration,
  read through ctypes from the library mapped into the process);
* NumPy, Numba and torch versions (torch probed in its own process, so that its
  OpenMP runtime never enters a process that runs minicnn; absent torch is reported
  as None) and torch's CPU capability (the ISA its kernels were dispatched to);
* the sgemm rate: a float32 ``n x n @ n x n`` GEMM in a fresh process with
  ``OPENBLAS_NUM_THREADS`` (and ``OMP_NUM_THREADS``) set to the thread count, median
  of several repetitions after warm-up (and the fastest, which tells a neighbour's
  load from the machine's speed), and the same with one thread.  This is the peak
  that a convolution engine built on GEMMs can hope for on this machine.

What cannot be found is reported as "unknown", never an error.  :func:`slug` names
the machine for results files; :func:`markdown_header` states it in a paragraph.
"""
import argparse
import json
import os
import re
import subprocess
import sys
from importlib import metadata

from harness import run_python, thread_env

# Extensions named in the description, widest last within each family.
SIMD_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
# The widest vector ISA decides which GEMM kernels run: the slug names the first present.
ISA_ORDER = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sve2", "sve2"), ("sve", "sve"),
             ("asimd", "neon"), ("sse4_2", "sse4"))
SGEMM_SIZE, SGEMM_REPS = 2048, 7
UNKNOWN = "unknown"


def describe(threads, sgemm_size=SGEMM_SIZE, sgemm_reps=SGEMM_REPS):
    """The machine as a JSON-ready dict (see the module docstring); ``threads`` is the
    thread count the benchmark gives each framework.  Takes a few seconds: the GEMM
    probes run one after the other so that they never share the cores."""
    probe = _blas_probe(threads, sgemm_size, sgemm_reps)
    single = probe if threads == 1 else _blas_probe(1, sgemm_size, sgemm_reps)
    return {"cpu": cpu_info(), "threads": threads, "numpy": probe["numpy"], "blas": probe["blas"],
            "numba": _version("numba"), "torch": _torch_probe(),
            "sgemm": {"n": sgemm_size, "reps": sgemm_reps, "gflops": probe["gflops"],
                      "gflops_best": probe["gflops_best"], "gflops_1_thread": single["gflops"]}}


def cpu_info():
    """Model name, family/model numbers, SIMD extensions, hypervisor and CPU count."""
    fields = _lscpu() or _cpuinfo()
    flags = set(fields.get("flags", "").split())
    hypervisor = fields.get("hypervisor vendor") or ("unknown hypervisor" if "hypervisor" in flags else None)
    return {"model_name": fields.get("model name", UNKNOWN), "family": fields.get("cpu family", UNKNOWN),
            "model": fields.get("model", UNKNOWN), "simd": [f for f in SIMD_FLAGS if f in flags],
            "hypervisor": hypervisor, "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def _lscpu():
    """``lscpu``'s fields with lower-case keys ("model name", "cpu family", "model",
    "flags", "hypervisor vendor"); empty where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C")).stdout
    except OSError:
        return {}
    return _fields(out)


def _cpuinfo():
    """The first processor's fields of /proc/cpuinfo (ARM names its ISA "Features")."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = _fields(f.read().split("\n\n")[0])
    except OSError:
        return {}
    if "features" in fields:
        fields.setdefault("flags", fields["features"])
    return fields


def _fields(text):
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip().lower(): v.strip() for k, v in pairs}


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------ probes in fresh processes

def _blas_probe(threads, n, reps):
    environ = thread_env(threads, OPENBLAS_NUM_THREADS=str(threads))
    return json.loads(run_python([os.path.abspath(__file__), "--probe-blas", "--n", str(n), "--reps", str(reps)],
                                 environ))


def probe_blas(n, reps):
    """Run in the probe process: NumPy's BLAS and the median sgemm rate (GFLOP/s)."""
    import time

    import numpy as np
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    times = []
    for k in range(reps + 2):  # two warm-up calls: thread start-up, page faults of ``out``
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    return {"numpy": np.__version__, "blas": blas_info(np), "gflops": 2 * n ** 3 / seconds / 1e9,
            "gflops_best": 2 * n ** 3 / min(times) / 1e9}


def blas_info(np):
    """Name, version, run-time core and build configuration of ``np``'s BLAS."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError):  # NumPy < 1.26 prints its configuration only
        blas = {}
    info = {"name": blas.get("name", UNKNOWN), "version": blas.get("version", UNKNOWN),
            "core": UNKNOWN, "config": blas.get("openblas configuration", UNKNOWN)}
    from minicnn.fast.runtime import loaded_libraries
    for path in loaded_libraries("openblas"):
        core, config = _openblas_string(path, "get_corename"), _openblas_string(path, "get_config")
        if core:
            info.update(core=core, config=config or info["config"])
            break
    return info


def _openblas_string(path, what):
    """``openblas_<what>()`` of the library at ``path`` under any of its symbol spellings
    (NumPy's and SciPy's wheels prefix and suffix them), or None."""
    import ctypes
    lib = ctypes.CDLL(path)
    for name in (f"scipy_openblas_{what}64_", f"scipy_openblas_{what}", f"openblas_{what}64_", f"openblas_{what}"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            return fn().decode(errors="replace").strip()
    return None


def _torch_probe():
    """torch's version and CPU capability from a fresh process, or None without torch."""
    code = ("import json, torch; print(json.dumps({'version': torch.__version__, "
            "'cpu_capability': torch.backends.cpu.get_cpu_capability()}))")
    try:
        return json.loads(run_python(["-c", code], thread_env(1)))
    except RuntimeError:  # not installed, or fails to import: either way not measured
        return None


# ------------------------------------------------------------------ names and text

def slug(info):
    """A file-system-safe name for the machine and thread count, stable across runs:
    CPU name, family/model, widest vector ISA, BLAS and its core, threads,
    e.g. ``xeon-f6m207-avx512-openblas-skylakex-t2``."""
    cpu, blas = info["cpu"], info["blas"]
    noise = {"intel", "amd", "r", "tm", "cpu", "processor", "core", "with", "radeon", "graphics", "gen"}
    words = [w for w in re.split(r"[^a-z0-9]+", cpu["model_name"].lower().split("@")[0]) if w and w not in noise]
    flags = set(cpu["simd"])
    isa = next((name for flag, name in ISA_ORDER if flag in flags), "generic")
    blas_name = re.sub(r"^scipy-", "", blas["name"].lower())
    known = UNKNOWN not in (cpu["family"], cpu["model"])
    parts = ["-".join(words[:3]) or "cpu", f"f{cpu['family']}m{cpu['model']}" if known else "", isa, blas_name,
             blas["core"] if blas["core"] != UNKNOWN else "", f"t{info['threads']}"]
    return "-".join(p for p in (re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in parts) if p)


def markdown_header(info):
    """One paragraph naming the machine, the software and the measured sgemm rate."""
    cpu, blas, sgemm, torch = info["cpu"], info["blas"], info["sgemm"], info["torch"]
    where = f"{cpu['hypervisor']} guest, " if cpu["hypervisor"] else ""
    torch_text = (f"torch {torch['version']} (CPU capability {torch['cpu_capability']})" if torch
                  else "torch not installed")
    return (f"Machine: {cpu['model_name']} (family {cpu['family']}, model {cpu['model']}; {where}"
            f"{cpu['usable_cpus']} of {cpu['cpus']} CPUs usable; {', '.join(cpu['simd']) or 'no SIMD flags read'}). "
            f"NumPy {info['numpy']} with {blas['name']} {blas['version']} (core {blas['core']}), "
            f"Numba {info['numba']}, {torch_text}; {info['threads']} threads. "
            f"Measured sgemm (float32 {sgemm['n']}³, median of {sgemm['reps']} after warm-up, fresh process): "
            f"**{sgemm['gflops']:.0f} GFLOP/s** with {info['threads']} threads (fastest {sgemm['gflops_best']:.0f}), "
            f"{sgemm['gflops_1_thread']:.0f} GFLOP/s with 1.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=SGEMM_SIZE, help="GEMM size (default 2048)")
    p.add_argument("--reps", type=int, default=SGEMM_REPS, help="timed GEMMs (default 7)")
    p.add_argument("--probe-blas", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe_blas:
        print(json.dumps(probe_blas(args.n, args.reps)))
        return
    info = describe(args.threads, args.n, args.reps)
    print(json.dumps(info, indent=1))
    print(slug(info))
    print(markdown_header(info))


if __name__ == "__main__":
    sys.exit(main())
