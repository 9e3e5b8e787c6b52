"""Autotuning: the convolution route for a geometry, measured on this machine (as cuDNN's
benchmark mode).

The first time a process meets a convolution geometry (shapes, dtype, stride, padding,
dilation, groups, bias, input layout) in a grad mode (training: forward and backward are
timed; ``no_grad``: the forward only) at a thread count, every route that applies runs on
synthetic arrays of that geometry, and the fastest runs that geometry from then on.  To
keep that cheap (a model's few geometries in about a second) and stable on a busy machine:

* each route is timed on a part of the batch that takes about :data:`RUN_SECONDS` (at
  least :data:`MIN_IMAGES` per worker thread, and at least one whole-batch chunk of
  images per worker thread), in the chunks of the whole batch, after one untimed run of
  that size (its first, which pays for its buffers), the times scaled to the whole
  batch: a route's cost per image hardly depends on the batch once every worker has
  chunks of the size the whole batch gets;
* the runs are timed in CPU time of the process (:func:`timer`), which other processes'
  load hardly changes, where wall-clock time varies severalfold on a busy machine;
* the routes take turns, one run each per round, for :data:`REPEATS` rounds, the best
  run counting; after each round the routes :data:`ABANDON` times slower than the best
  stop; once a geometry has spent :data:`BUDGET` seconds nothing new starts;
* the static choice (``select.choice``) runs first, and another route replaces it only
  if that route's slowest run beat the static choice's fastest: faster by more than the
  noise of the timing, which on a shared machine is large (a neighbour's burst of work).

Training is timed as it runs with every gradient wanted (input, weight, bias); a first
layer, whose input wants none, is timed with the input gradient all the same.

Choices are kept on disk, one JSON file per machine (CPU model, BLAS core, thread count,
minicnn version, route names: :func:`machine`) under ``MINICNN_CACHE_DIR`` or
``~/.cache/minicnn``, so that later processes on the machine time nothing.  A file that
cannot be read is ignored and rewritten; writes go to a temporary file renamed over the
old one, so a concurrent process reads the old file or the new one, never half of one
(the last writer wins).  ``MINICNN_AUTOTUNE=0`` uses the static table instead.

Timing calls the routes' ``forward``/``backward`` directly with a ``Context`` of its
own: never ``ops.conv2d`` (no recursion), no graph recorded, the caller's arrays never
read.  Every route computes the same convolution, so the choice changes results by
float rounding only.  :func:`choices` lists what was chosen and why.
"""
import ctypes
import functools
import hashlib
import json
import math
import os
import platform
import tempfile
import threading
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...tensor import Context, is_grad_enabled
from ..runtime import configure, loaded_libraries, num_threads
from .select import choice

BUDGET = 0.3        # seconds of timing per geometry; the candidates left after it are skipped
REPEATS = 3         # timed runs per candidate, after one warm-up; the fastest counts
RUN_SECONDS = 0.01  # a timed run takes about this long: the batch is cut to as many images,
MIN_IMAGES = 8      # but to no fewer than this many per worker thread (nor more than the batch)
ABANDON = 1.3       # after a round, the routes this many times slower than the best stop
FORMAT = 1          # the cache file's layout; files of another format are ignored


class Choice(NamedTuple):
    """One row of :func:`choices`: which route runs a geometry, and why.

    ``source``: 'measured' (timed in this process), 'cache' (timed by an earlier process
    on this machine), 'static' (the rules of ``select.py``: ``MINICNN_AUTOTUNE=0``, or an
    empty batch),
    'only' (the one route that applies), 'forced' (``route=`` given by the caller).
    ``timings_ms``: per candidate route, (forward, backward) in ms for the whole batch,
    CPU time of the process (see :func:`timer`; backward None when no gradient was
    wanted), or None if the budget ran out before it;
    ``images``: the batch that was timed (the times are scaled from it); empty and 0
    unless measured or cached."""
    geometry: str
    route: str
    source: str
    timings_ms: dict
    images: int
    threads: int


_chosen = {}                # (geometry, training, threads, how...) -> (route class, Choice), in order met
_files = {}                 # cache file path -> its choices as read or written by this process
_lock = threading.Lock()    # one timing at a time; guards _chosen and _files


def enabled():
    """True unless ``MINICNN_AUTOTUNE`` is 0 (or false, no, off): then the static table runs."""
    return os.environ.get("MINICNN_AUTOTUNE", "").strip().lower() not in ("0", "false", "no", "off")


def pick(g, routes, forced=None):
    """The route class of ``routes`` (name -> class) that runs geometry ``g`` in this
    thread's grad mode: ``routes[forced]`` if given, else autotuned (once per geometry,
    grad mode and thread count) or, with ``MINICNN_AUTOTUNE=0``, the static choice."""
    training, threads = is_grad_enabled(), num_threads()
    if forced is None and enabled():
        key = (g, training, threads, "auto")
        hit = _chosen.get(key)
        if hit is None:
            with _lock:
                hit = _chosen.get(key)
                if hit is None:
                    hit = _chosen[key] = _tune(g, training, threads, routes)
        return hit[0]
    # Forced and static choices cost nothing to make: made on every call (whether a route
    # applies can change, e.g. the row taps need a CBLAS gemm), recorded once for choices().
    route, source = (routes[forced], "forced") if forced else _static(g, routes)
    key = (g, training, threads, source, route.name)
    if key not in _chosen:
        with _lock:
            _chosen.setdefault(key, (route, Choice(describe(g, training), route.name, source, {}, 0, threads)))
    return route


def choices():
    """What this process chose, one :class:`Choice` per geometry, grad mode, thread count
    and source (and route, where forced or static), in the order they were met."""
    return [row for _, row in list(_chosen.values())]


def format_choices(rows=None):
    """:func:`choices` (or ``rows``) as a table of text, one line per row."""
    rows = choices() if rows is None else rows
    lines = [f"{'route':<10} {'source':<9} {'threads':>7}  geometry; timings: CPU ms per batch (forward + backward)"]
    for row in rows:
        times = ", ".join(f"{name} skipped" if t is None else
                          f"{name} {t[0]:.3g}" + ("" if t[1] is None else f" + {t[1]:.3g}")
                          for name, t in row.timings_ms.items())
        timed = f"; timed on {row.images} images: {times}" if times else ""
        lines.append(f"{row.route:<10} {row.source:<9} {row.threads:>7}  {row.geometry}{timed}")
    return "\n".join(lines)


def clear():
    """Forget this process's choices (the disk cache stays): the next calls decide anew."""
    with _lock:
        _chosen.clear()
        _files.clear()


def describe(g, training):
    """The text of a geometry and grad mode: :class:`Choice`'s ``geometry``, the cache's key."""
    return f"{g.describe()}, {'bias' if g.has_bias else 'no bias'}, {'training' if training else 'inference'}"


def _static(g, routes):
    """The static choice for ``g`` and why: 'only' if it is the one route that applies."""
    candidates = [r for r in routes.values() if r.applies(g)]
    return choice(g, candidates), "only" if len(candidates) == 1 else "static"


def _tune(g, training, threads, routes):
    """(route, Choice) for ``g``: from the cache file, else measured (and then cached)."""
    text = describe(g, training)
    row = functools.partial(Choice, text, threads=threads)
    static, source = _static(g, routes)
    if source == "only" or not g.x_shape[0]:      # one route, or an empty batch: nothing to time
        return static, row(static.name, source, {}, 0)
    candidates = [static] + [r for r in routes.values() if r is not static and r.applies(g)]
    path = cache_path(threads, tuple(routes))
    entry = _read(path).get(text)
    if entry is not None and entry.get("route") in [r.name for r in candidates]:
        images = entry.get("images")
        return routes[entry["route"]], row(entry["route"], "cache", _timings(entry.get("timings_ms")),
                                           images if isinstance(images, int) else 0)
    timings, slowest, images = measure(g, training, candidates)
    total = {name: sum(filter(None, t)) for name, t in timings.items() if t is not None}
    if not total:
        raise RuntimeError(f"conv2d: every route failed on {describe(g, training)}: {', '.join(timings)}")
    best = min(total, key=total.get)
    if static.name in total and slowest[best] >= total[static.name]:     # not faster beyond the timing's noise
        best = static.name
    _write(path, threads, tuple(routes), text, {"route": best, "timings_ms": timings, "images": images})
    return routes[best], row(best, "measured", timings, images)


def _timings(saved):
    """A cache entry's timings as :func:`measure` returns them; {} if malformed."""
    def pair(t):
        if t is None:
            return None
        f, b = t
        return float(f), None if b is None else float(b)
    try:
        return {str(name): pair(t) for name, t in saved.items()}
    except (AttributeError, TypeError, ValueError):
        return {}


def measure(g, training, candidates, budget=BUDGET, repeats=REPEATS):
    """Time each route of ``candidates`` on synthetic arrays of geometry ``g``: (timings,
    slowest, images).  ``timings``: {name: (forward ms, backward ms or None)}, the best
    runs by :func:`timer`'s clock, for the whole batch, None for the routes that the
    ``budget`` (wall-clock seconds) left no time for, or that raised (with a warning:
    left out rather than run on the caller's data); ``slowest``: {name: ms of the
    slowest run, forward + backward} of those timed; ``images``: the size of the batch
    that was timed (see :data:`RUN_SECONDS`).

    The routes take turns, one run each per round (a burst of load on a shared machine
    then slows them alike), for ``repeats`` rounds; after each round the routes
    :data:`ABANDON` times slower than the best leave (they lost).  Once the budget is
    spent no new route starts and no new round begins; the first route is always timed."""
    N = g.x_shape[0]
    needs = (True, True, g.has_bias) if training else (False, False, False)
    small = _inputs(g, min(N, 2 * num_threads()))
    # The warm-up, on a few images, pays what a route's first call in a process pays
    # (loading compiled kernels, starting the workers); the next run sizes the batch.
    _run(candidates[0], g, Context(needs), *small, None, time.perf_counter)
    f, bw, _ = _run(candidates[0], g, Context(needs), *small, None, time.perf_counter)
    chunks = {r.name: _chunk_images(r, g, small[1]) for r in candidates}
    n = min(N, max(MIN_IMAGES * num_threads(), math.ceil(RUN_SECONDS * small[0].shape[0] / max(f + bw, 1e-9)),
                   num_threads() * max(c or 1 for c in chunks.values())))
    data = _inputs(g, n)
    start, clock = time.perf_counter(), timer()
    best = {r.name: (np.inf, np.inf) for r in candidates}
    slowest = {}
    grads = {r.name: None for r in candidates}   # each route's output gradient, in its output's layout
    alive, skipped = list(candidates), []
    for round_ in range(repeats):
        for route in list(alive):
            if time.perf_counter() - start > budget and (round_ or route is not candidates[0]):
                if not round_:
                    alive.remove(route)
                    skipped.append(route.name)
                continue
            try:
                if not round_:      # untimed: a route's first run at this size pays its buffers' first touch
                    _, _, grads[route.name] = _run(route, g, _sized(Context(needs), chunks[route.name]), *data,
                                                   None, clock)
                f, bw, grads[route.name] = _run(route, g, _sized(Context(needs), chunks[route.name]), *data,
                                                grads[route.name], clock)
            except Exception as e:      # noqa: BLE001 - a route that fails is left out, loudly, not run
                warnings.warn(f"minicnn: autotuning left out conv route {route.name!r}, which failed on "
                              f"{describe(g, training)}: {e!r}", RuntimeWarning, stacklevel=4)
                alive.remove(route)
                skipped.append(route.name)
                continue
            best[route.name] = (min(best[route.name][0], f), min(best[route.name][1], bw))
            slowest[route.name] = max(slowest.get(route.name, 0.0), f + bw)
        if alive:
            fastest = min(sum(best[r.name]) for r in alive)
            alive = [r for r in alive if sum(best[r.name]) <= ABANDON * fastest]
    ms = 1e3 * N / n
    return ({name: None if name in skipped else (round(f * ms, 4), round(b * ms, 4) if training else None)
             for name, (f, b) in best.items()}, {name: round(t * ms, 4) for name, t in slowest.items()}, n)


def _chunk_images(route, g, w):
    """The images per chunk that ``route`` works on in the whole batch of ``g`` (None for a
    route that does not work in chunks).  The timed part of the batch runs in chunks of
    that size (``ChunkedConv.sized_plan``), at least one per worker thread: cut into the
    usual chunks (at least 4), a part of 20 images made F(4x4, 3x3)'s 36 GEMMs per chunk so
    small that it timed 1.8x slower per image than on the whole batch, and a part of 32
    of a batch of 64 made F(2x2, 3x3) look as fast as F(4x4, 3x3), which is 1.4x faster."""
    plan = getattr(route, "plan", None)
    if plan is None:
        return None
    o = g.options
    return plan(g.x_shape, w, (o["stride"], o["padding"], o["dilation"], o["groups"], o["out_hw"])).nb


def _sized(ctx, chunk):
    """``ctx`` asking the route to work in chunks of ``chunk`` images (see _chunk_images)."""
    ctx.chunk_images = chunk
    return ctx


def _inputs(g, n):
    """Synthetic (x, w, b) of geometry ``g`` with ``n`` images, x in g's memory layout."""
    rng = np.random.default_rng(0)
    _, C, H, W = g.x_shape
    if g.channels_last:
        x = rng.standard_normal((n, H, W, C), dtype=g.dtype).transpose(0, 3, 1, 2)
    else:
        x = rng.standard_normal((n, C, H, W), dtype=g.dtype)
    w = rng.standard_normal(g.w_shape, dtype=g.dtype)
    return x, w, np.zeros(g.w_shape[0], g.dtype) if g.has_bias else None


def _run(route, g, ctx, x, w, b, gy, clock):
    """``clock`` seconds of ``route``'s forward and (if ``ctx`` wants gradients) backward on
    (x, w, b), and the output gradient used: ``gy``, or one made from the output, in its
    memory layout."""
    t0 = clock()
    y = route.forward(ctx, x, w, b, **g.options)
    fwd = clock() - t0
    if not any(ctx.needs_input_grad):
        return fwd, 0.0, gy
    if gy is None:
        gy = np.empty_like(y)
        np.copyto(gy, y)
    t0 = clock()
    route.backward(ctx, gy)
    return fwd, clock() - t0, gy


def timer():
    """The clock the routes are timed by: this process's CPU time (all its threads), which
    other processes' load hardly changes (on a shared 2-core machine at load 6-7, runs of
    one route varied 2-3x in wall-clock time, mostly 5-20% in CPU time); wall-clock time
    where BLAS could not be made single-threaded (idle BLAS threads spin, burning CPU)."""
    return time.process_time if configure()["serial_blas"] else time.perf_counter


# ------------------------------------------------------------------ the disk cache

@functools.lru_cache(maxsize=None)
def cpu_model():
    """The CPU's model name with its family and model numbers (/proc/cpuinfo; Linux), else
    what ``platform`` knows: one name can cover several generations in a virtual machine."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "model name" in fields:
            return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# OpenBLAS's core name (the kernels it dispatched to at run time) in NumPy's and SciPy's wheels and plain builds.
_CORENAMES = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
              "openblas_get_corename")
_CONFIGS = tuple(n.replace("corename", "config") for n in _CORENAMES)


@functools.lru_cache(maxsize=None)
def blas_core():
    """The BLAS running NumPy's products: OpenBLAS's version and core name (e.g. 'OpenBLAS
    0.3.31.188.0 SkylakeX') asked through its C API, else the BLAS NumPy was built with."""
    for path in loaded_libraries("openblas"):
        lib = ctypes.CDLL(path)
        for corename, config in zip(_CORENAMES, _CONFIGS):
            core, conf = getattr(lib, corename, None), getattr(lib, config, None)
            if core is not None:
                core.restype = ctypes.c_char_p
                version = ""
                if conf is not None:
                    conf.restype = ctypes.c_char_p
                    version = " ".join(conf().decode(errors="replace").split()[:2]) + " "
                return version + core().decode(errors="replace")
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def machine(threads, routes):
    """What a cached choice holds for: CPU model, BLAS core, thread count, minicnn version
    and the route names (a new route makes the old choices stale)."""
    try:
        version = metadata.version("minicnn")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"cpu": cpu_model(), "blas": blas_core(), "threads": threads, "minicnn": version,
            "routes": list(routes)}


def cache_dir():
    """``MINICNN_CACHE_DIR``, else ``~/.cache/minicnn``."""
    return Path(os.environ.get("MINICNN_CACHE_DIR") or Path.home() / ".cache" / "minicnn")


def cache_path(threads, routes):
    """The cache file of this machine (see :func:`machine`): autotune/conv-<digest>.json."""
    digest = hashlib.sha256(json.dumps(machine(threads, routes), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "autotune" / f"conv-{digest}.json"


def _load(path):
    """The choices in the cache file at ``path``; {} if absent, unreadable or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        choices = data["choices"] if data.get("format") == FORMAT else {}
        return {k: v for k, v in choices.items() if isinstance(k, str) and isinstance(v, dict)}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _read(path):
    if path not in _files:
        _files[path] = _load(path)
    return _files[path]


def _write(path, threads, routes, text, entry):
    """Add ``entry`` under ``text`` to the cache file, merged with what other processes
    wrote meanwhile; written to a temporary file renamed over the old one."""
    merged = {**_load(path), **_read(path), text: entry}
    _files[path] = merged
    data = {"format": FORMAT, "machine": machine(threads, routes), "choices": merged}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=path.name,
                                         suffix=".tmp", delete=False) as f:
            tmp = f.name
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(f"minicnn: cannot write the autotuning cache {path}: {e}; the choices stay in this "
                      "process only (set MINICNN_CACHE_DIR to a writable directory)", RuntimeWarning, stacklevel=2)
