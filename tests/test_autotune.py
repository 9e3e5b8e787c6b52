"""Autotuning of the convolution routes (minicnn/fast/conv/autotune.py).

The suite runs on the static table (conftest sets MINICNN_AUTOTUNE=0); these tests turn
autotuning on with a temporary cache directory, on small geometries.  Whether the timing
itself is right is a question for benchmarks/autotune_cost.py, not for tests: here, that
the choice is made once, kept, read back, and never changes what is computed beyond the
route's own rounding.
"""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import minicnn
from minicnn import ops, tensor
from minicnn.fast import runtime
from minicnn.fast.conv import ROUTES, autotune, choices, choose, format_choices
from minicnn.ops.conv import conv_geometry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X_SHAPE, W_SHAPE = (2, 8, 8, 8), (8, 8, 3, 3)     # Winograd, im2col, row taps and im2row all apply


@pytest.fixture
def tuned(monkeypatch, tmp_path):
    """Autotuning on, caching under tmp_path, at 2 threads, with no choice remembered; the
    timings counted in the returned list."""
    monkeypatch.setenv("MINICNN_AUTOTUNE", "1")
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MINICNN_NUM_THREADS", "2")
    timed = []
    measure = autotune.measure

    def counted(g, training, candidates, **kw):
        timed.append((g, training, [r.name for r in candidates]))
        return measure(g, training, candidates, **kw)
    monkeypatch.setattr(autotune, "measure", counted)
    autotune.clear()
    yield timed
    autotune.clear()


def arrays(rng, x_shape=X_SHAPE, w_shape=W_SHAPE):
    return rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)


def train_step(x, w, **kw):
    xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
    y = ops.conv2d(xt, wt, padding=1, **kw)
    y.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape))
    return y, xt.grad, wt.grad


def no_timing(*args, **kwargs):
    raise AssertionError("autotune.measure ran")


def test_timed_once_per_geometry_and_used(tuned, rng, tmp_path):
    x, w = arrays(rng)
    x_before, w_before = x.copy(), w.copy()
    first = train_step(x, w)
    second = train_step(x, w)
    assert len(tuned) == 1
    g, training, candidates = tuned[0]
    assert training and g == conv_geometry(x, w, None, 1, 1, 1, 1)
    assert set(candidates) == {"winograd", "winograd4", "im2col", "rowtaps", "im2row", "direct"}
    assert candidates[0] == "rowtaps"                  # the static choice is timed first
    np.testing.assert_array_equal(x, x_before)         # timing never reads or writes the caller's arrays
    np.testing.assert_array_equal(w, w_before)
    [row] = choices()
    assert row.source == "measured" and row.threads == 2 and row.geometry.endswith("no bias, training")
    assert row.images == 2                             # the batch, smaller than MIN_IMAGES per thread
    assert set(row.timings_ms) == set(candidates)
    total = {k: t[0] + t[1] for k, t in row.timings_ms.items() if t is not None}
    assert row.timings_ms["rowtaps"] is not None and all(t >= 0 for t in total.values())
    assert row.route == "rowtaps" or total[row.route] == min(total.values())
    # The route chosen is the one that ran: the same bits as forcing it.
    forced = train_step(x, w, route=row.route)
    for a, b, c in zip(first, second, forced):
        a = getattr(a, "data", a)
        np.testing.assert_array_equal(a, getattr(b, "data", b))
        np.testing.assert_array_equal(a, getattr(c, "data", c))
    [path] = (tmp_path / "autotune").iterdir()
    saved = json.loads(path.read_text())
    assert saved["machine"]["threads"] == 2 and saved["machine"]["routes"] == list(ROUTES)
    assert saved["choices"][row.geometry]["route"] == row.route


def test_inference_is_timed_apart_forward_only(tuned, rng):
    x, w = arrays(rng)
    train_step(x, w)
    with minicnn.no_grad():
        ops.conv2d(tensor(x), tensor(w), padding=1)
    assert [t[1] for t in tuned] == [True, False]
    rows = choices()
    assert rows[1].geometry.endswith("inference")
    assert all(t is None or t[1] is None for t in rows[1].timings_ms.values())


def test_no_graph_recorded_while_timing(tuned, rng):
    """The output's graph is the one convolution: timing called the routes directly."""
    x, w = arrays(rng)
    xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
    y = ops.conv2d(xt, wt, padding=1)
    assert len(tuned) == 1 and y._parents == (xt, wt, None)
    assert xt.grad is None and wt.grad is None


def test_a_second_process_reads_the_cache(tuned, rng, tmp_path):
    x, w = arrays(rng)
    train_step(x, w)
    [row] = choices()
    script = f"""
import json, numpy as np, minicnn
from minicnn import ops, tensor
from minicnn.fast.conv import autotune, choices
def no_timing(*a, **k):
    raise AssertionError("timed again")
autotune.measure = no_timing
x = tensor(np.ones({X_SHAPE}, np.float32), requires_grad=True)
ops.conv2d(x, tensor(np.ones({W_SHAPE}, np.float32), requires_grad=True), padding=1).sum().backward()
print(json.dumps([r._asdict() for r in choices()]))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    [other] = json.loads(out.stdout.splitlines()[-1])
    assert other["source"] == "cache" and other["route"] == row.route and other["geometry"] == row.geometry
    assert {k: None if t is None else tuple(t) for k, t in other["timings_ms"].items()} == row.timings_ms


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"format": 99, "choices": {}}', "",
                                     '{"format": 1, "choices": {"GEOMETRY": {"route": "no-such-route"}}}',
                                     '{"format": 1, "choices": {"GEOMETRY": {"route": "depthwise"}}}',
                                     '{"format": 1, "choices": [1]}'])
def test_a_bad_cache_file_is_ignored_and_rewritten(tuned, rng, content):
    x, w = arrays(rng)
    g = conv_geometry(x, w, None, 1, 1, 1, 1)
    path = autotune.cache_path(2, tuple(ROUTES))
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("GEOMETRY", autotune.describe(g, True)))
    train_step(x, w)
    [row] = choices()
    assert row.source == "measured" and len(tuned) == 1
    assert json.loads(path.read_text())["choices"][row.geometry]["route"] == row.route


def test_cached_timings_that_make_no_sense_are_dropped(tuned, rng):
    x, w = arrays(rng)
    g = conv_geometry(x, w, None, 1, 1, 1, 1)
    path = autotune.cache_path(2, tuple(ROUTES))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": 1, "choices": {autotune.describe(g, True): {
        "route": "im2row", "timings_ms": {"im2row": "fast"}}}}))
    train_step(x, w)
    [row] = choices()
    assert (row.route, row.source, row.timings_ms, tuned) == ("im2row", "cache", {}, [])
    assert format_choices().splitlines()[1].split()[:3] == ["im2row", "cache", "2"]


def test_other_entries_of_the_cache_file_are_kept(tuned, rng):
    """A process adds its choices to the file other processes wrote meanwhile."""
    x, w = arrays(rng)
    path = autotune.cache_path(2, tuple(ROUTES))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": 1, "choices": {"another geometry": {"route": "im2row"}}}))
    train_step(x, w)
    assert set(json.loads(path.read_text())["choices"]) == {"another geometry", choices()[0].geometry}


def test_unwritable_cache_warns_and_still_chooses(tuned, rng, monkeypatch, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("MINICNN_CACHE_DIR", str(blocker))
    x, w = arrays(rng)
    with pytest.warns(RuntimeWarning, match="cannot write the autotuning cache"):
        train_step(x, w)
    assert choices()[0].source == "measured"


def test_autotune_0_is_the_static_table(tuned, monkeypatch, rng):
    monkeypatch.setenv("MINICNN_AUTOTUNE", "0")
    monkeypatch.setattr(autotune, "measure", no_timing)
    x, w = arrays(rng)
    train_step(x, w)
    grouped = conv_geometry(np.empty((2, 8, 8, 8), np.float32), np.empty((8, 4, 3, 3), np.float32), None, 1, 1, 1, 2)
    assert choose(grouped).name == "im2row"
    assert [(r.route, r.source, r.timings_ms) for r in choices()] == [("rowtaps", "static", {}),
                                                                      ("im2row", "only", {})]


def test_a_forced_route_is_not_timed(tuned, monkeypatch, rng):
    monkeypatch.setattr(autotune, "measure", no_timing)
    x, w = arrays(rng)
    train_step(x, w, route="im2col")
    with minicnn.reference_mode():
        train_step(x, w)
    assert [(r.route, r.source) for r in choices()] == [("im2col", "forced")]


def test_the_one_route_that_applies_is_not_timed(tuned, monkeypatch, rng):
    monkeypatch.setattr(autotune, "measure", no_timing)
    x, w = arrays(rng, w_shape=(8, 4, 3, 3))     # grouped, not depthwise: im2row alone applies
    y = ops.conv2d(tensor(x), tensor(w), padding=1, groups=2)
    assert y.shape == X_SHAPE and [(r.route, r.source) for r in choices()] == [("im2row", "only")]


def test_thread_counts_and_layouts_are_separate_entries(tuned, monkeypatch, rng, tmp_path):
    x, w = arrays(rng)
    train_step(x, w)
    monkeypatch.setenv("MINICNN_NUM_THREADS", "1")
    train_step(x, w)
    train_step(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), w)
    rows = choices()
    assert [(r.threads, r.source) for r in rows] == [(2, "measured"), (1, "measured"), (1, "measured")]
    assert "channels-last" in rows[2].geometry and "channels-last" not in rows[1].geometry
    assert tuned[2][0].channels_last and len(list((tmp_path / "autotune").iterdir())) == 2


def test_threads_racing_for_a_geometry_time_it_once(tuned, rng):
    x, w = arrays(rng)
    g = conv_geometry(x, w, None, 1, 1, 1, 1)
    barrier, picked = threading.Barrier(4), []

    def worker():
        barrier.wait()
        picked.append(choose(g))        # this thread's grad mode: enabled
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tuned) == 1 and len(set(picked)) == 1 and len(choices()) == 1


def test_the_budget_skips_later_candidates(rng):
    x, w = arrays(rng)
    g = conv_geometry(x, w, None, 1, 1, 1, 1)
    order = [ROUTES[n] for n in ("im2row", "winograd", "rowtaps")]
    timings, slowest, images = autotune.measure(g, True, order, budget=0.0)
    assert list(timings) == ["im2row", "winograd", "rowtaps"] and images == 2
    assert timings["winograd"] is timings["rowtaps"] is None
    assert all(t > 0 for t in timings["im2row"])


def test_a_big_batch_is_timed_in_part(monkeypatch, rng):
    """Times are per whole batch, measured on a part of it that takes about RUN_SECONDS
    (here: none), but at least MIN_IMAGES per worker thread (more than the 2 chunks of 6
    images of 24 that the chunk rule asks for)."""
    monkeypatch.setenv("MINICNN_NUM_THREADS", "2")
    monkeypatch.setattr(autotune, "RUN_SECONDS", 0.0)
    g = conv_geometry(np.empty((24, 4, 6, 6), np.float32), np.empty((4, 4, 3, 3), np.float32), None, 1, 1, 1, 1)
    timings, slowest, images = autotune.measure(g, False, [ROUTES["im2row"], ROUTES["rowtaps"]])
    assert images == 2 * autotune.MIN_IMAGES
    assert all(t is None or t[0] > 0 and t[1] is None for t in timings.values())
    assert all(slowest[k] >= t[0] for k, t in timings.items() if t is not None)


def test_every_worker_times_a_whole_batch_chunk(monkeypatch, rng):
    """The timed part of the batch holds one whole-batch chunk per worker thread and runs in
    chunks of that size: 128 images of 8x8 make winograd4 chunks of 32 (the minimum chunk
    count, 4), so 2 workers time 64 images, not 2 x MIN_IMAGES, in 2 chunks of 32, not 4
    of 16 as 64 images on their own would be cut."""
    monkeypatch.setenv("MINICNN_NUM_THREADS", "2")
    monkeypatch.setattr(autotune, "RUN_SECONDS", 0.0)
    x, w = np.empty((128, 8, 8, 8), np.float32), np.empty((8, 8, 3, 3), np.float32)
    g = conv_geometry(x, w, None, 1, 1, 1, 1)
    nb = ROUTES["winograd4"].plan(x.shape, w, tuple(g.options.values())).nb
    assert nb == 32
    sized = []
    plan = ROUTES["winograd4"].sized_plan.__func__

    def recording(cls, ctx, *args):
        p = plan(cls, ctx, *args)
        sized.append((p.N, p.nb))
        return p
    monkeypatch.setattr(ROUTES["winograd4"], "sized_plan", classmethod(recording))
    _, _, images = autotune.measure(g, False, [ROUTES["im2row"], ROUTES["winograd4"]])
    assert images == 2 * nb
    assert (64, 32) in sized and all(n < 64 or b == 32 for n, b in sized)   # timed in whole-batch chunks


@pytest.mark.parametrize("winograd_slowest, chosen", [(11.0, "rowtaps"), (10.0, "rowtaps"), (9.5, "winograd")])
def test_another_route_must_beat_the_static_choice_beyond_noise(tuned, monkeypatch, rng, winograd_slowest, chosen):
    """The fastest route replaces the static choice (rowtaps here) only if its slowest run
    beat the static choice's fastest."""
    def timed(g, training, candidates, **kw):
        return ({"rowtaps": (4.0, 6.0), "winograd": (3.0, 5.0), "im2col": None, "im2row": (5.0, 7.0)},
                {"rowtaps": 12.0, "winograd": winograd_slowest, "im2row": 12.0}, 2)
    monkeypatch.setattr(autotune, "measure", timed)
    x, w = arrays(rng)
    train_step(x, w)
    assert [(r.route, r.source) for r in choices()] == [(chosen, "measured")]


def test_format_choices_lists_every_row(tuned, rng):
    x, w = arrays(rng)
    train_step(x, w)
    train_step(x, w, route="im2row")
    text = format_choices()
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].startswith("route")
    assert "measured" in lines[1] and "winograd" in lines[1] and " + " in lines[1]
    assert lines[2].split()[:3] == ["im2row", "forced", "2"]


def test_machine_names_cpu_blas_threads_and_version():
    m = autotune.machine(3, ("a", "b"))
    assert m["threads"] == 3 and m["routes"] == ["a", "b"] and m["minicnn"] == minicnn.__version__
    assert m["cpu"] and m["blas"] and m["cpu"] != "unknown"
    if runtime.loaded_libraries("openblas"):
        assert m["blas"].startswith("OpenBLAS")


def test_an_empty_batch_is_not_timed(tuned, rng):
    x, w = arrays(rng, x_shape=(0, 8, 8, 8))
    y, gx, gw = train_step(x, w)
    assert y.shape == (0, 8, 8, 8) and gx.shape == x.shape and not np.any(gw)
    assert tuned == [] and [(r.route, r.source) for r in choices()] == [("rowtaps", "static")]


def test_a_route_that_fails_is_left_out_with_a_warning(tuned, monkeypatch, rng):
    def broken(cls, ctx, *args, **kwargs):
        raise FloatingPointError("broken on purpose")
    monkeypatch.setattr(ROUTES["im2col"], "forward", classmethod(broken))
    x, w = arrays(rng)
    with pytest.warns(RuntimeWarning, match="left out conv route 'im2col'.*broken on purpose"):
        train_step(x, w)
    [row] = choices()
    assert row.route != "im2col" and row.timings_ms["im2col"] is None
