"""What the convolution autotuning costs per model, and which routes it picks.

    python benchmarks/autotune_cost.py [--models fashion_cnn improved_cnn resnet20] [--threads 2]

Per model (built and fused as in train_throughput.py, same batches), three fresh
processes in turn, sharing one temporary ``MINICNN_CACHE_DIR``:

* cold:   empty cache: the routes of every new geometry are timed (timing cost
          reported for the first training step and for the inference step apart);
* warm:   the cache the cold process wrote: nothing should be timed;
* static: ``MINICNN_AUTOTUNE=0``: the static table of ``fast/conv/select.py``.

Each process imports minicnn, builds the model, runs one training step, one inference
step (batch 256), then ``--steps`` more training steps.  Reported per process: the
seconds spent timing routes (inside ``autotune.measure``; wall-clock, and the process's
CPU time, which a busy machine does not inflate) and the geometries timed,
start-up (from the first line of the worker to the end of the first training step),
and the median of the later training steps (indicative: a single process, not the
alternating pairs of train_throughput.py).  Then the routes chosen by the cold
process, with their timings, against the static table's.  Prints JSON lines and
tables; the CPU, BLAS core and thread count are printed with them.
"""
import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from harness import run_python, thread_env  # noqa: E402

MODELS = ("fashion_cnn", "improved_cnn", "resnet20")


def worker(name, steps):
    import minicnn  # noqa: F401  (first: its thread settings must precede numpy's start)
    from minicnn.fast.conv import ROUTES, autotune, choices
    from minicnn.fast.runtime import num_threads
    from train_throughput import EVAL_BATCH, MODELS as SHAPES, _steps
    import numpy as np

    spent, timed, cpu = [0.0], [0], [0.0]
    measure = autotune.measure

    def counted(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return measure(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0
            cpu[0] += time.process_time() - c0
            timed[0] += 1
    autotune.measure = counted
    shape, batch, _ = SHAPES[name]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    eval_images = rng.standard_normal((EVAL_BATCH, *shape), dtype=np.float32)
    train, infer = _steps("minicnn", name, images, labels, eval_images)
    train()
    startup, train_timing, train_timed = time.perf_counter() - T0, spent[0], timed[0]
    infer()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"timing_s": spent[0], "timing_cpu_s": cpu[0], "geometries_timed": timed[0],
                      "train_timing_s": train_timing,
                      "train_geometries_timed": train_timed, "startup_s": startup,
                      "train_step_s": statistics.median(times), "machine": autotune.machine(num_threads(), tuple(ROUTES)),
                      "choices": [row._asdict() for row in choices()]}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--worker")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps)
    for name in args.models:
        with tempfile.TemporaryDirectory() as cache:
            runs = {}
            for kind, autotune in (("cold", "1"), ("warm", "1"), ("static", "0")):
                environ = thread_env(args.threads, MINICNN_CACHE_DIR=cache, MINICNN_AUTOTUNE=autotune)
                runs[kind] = json.loads(run_python([__file__, "--worker", name, "--steps", str(args.steps)], environ))
        m = runs["cold"]["machine"]
        print(f"\n## {name}: {m['cpu']}, {m['blas']}, {m['threads']} threads, minicnn {m['minicnn']}")
        print("| process | timing s: training step (geometries) | + inference step (geometries) | timing CPU s, all | "
              "start-up s | train step s |\n|---|---|---|---|---|---|")
        for kind, r in runs.items():
            print(f"| {kind} | {r['train_timing_s']:.2f} ({r['train_geometries_timed']}) | "
                  f"{r['timing_s'] - r['train_timing_s']:.2f} ({r['geometries_timed'] - r['train_geometries_timed']}) | "
                  f"{r['timing_cpu_s']:.2f} | {r['startup_s']:.2f} | {r['train_step_s']:.3f} |")
        static = {row["geometry"]: row["route"] for row in runs["static"]["choices"]}
        print("\n| geometry | autotuned | static | images timed | CPU ms per batch (forward + backward) |\n"
              "|---|---|---|---|---|")
        for row in runs["cold"]["choices"]:
            times = ", ".join(f"{k} skipped" if t is None else f"{k} {t[0]:.2f}" + ("" if t[1] is None else f"+{t[1]:.2f}")
                              for k, t in row["timings_ms"].items())
            print(f"| {row['geometry']} | {row['route']} ({row['source']}) | {static.get(row['geometry'])} | "
                  f"{row['images']} | {times} |")
        print(json.dumps({"model": name, **{k: {x: v for x, v in r.items() if x != "choices"} for k, r in runs.items()}}))


if __name__ == "__main__":
    sys.exit(main())
