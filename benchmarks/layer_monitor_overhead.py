"""What LayerMonitor costs: training time with and without it, alternating runs.

    nice python benchmarks/layer_monitor_overhead.py                  # Fashion CNN, every=20, 5 pairs
    nice python benchmarks/layer_monitor_overhead.py --every 5 --pairs 3

Each run is a fresh process that trains ``minicnn.models.fashion_cnn`` (or
``--model resnet20`` on 32x32 inputs) with ``fit`` for ``--steps`` steps of 64
random images after a short untimed warm-up (JIT compilation, buffer
allocation).  Runs alternate without / with the monitor (A B A B ...), since this
machine's speed drifts for tens of seconds at a time; the figure is the median
of the per-pair ratios.  Prints one line per run and a summary naming the CPU,
the BLAS and the thread count.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import env, run_python  # noqa: E402


def worker(args):
    import numpy as np

    import minicnn
    from minicnn.models import fashion_cnn, resnet20
    from minicnn.optim import SGD
    from minicnn.train import fit
    from minicnn.train.callbacks import LayerMonitor

    rng = np.random.default_rng(0)
    shape = (1, 28, 28) if args.model == "fashion_cnn" else (3, 32, 32)
    x = rng.standard_normal((args.steps * 64, *shape)).astype(np.float32)
    y = rng.integers(0, 10, len(x))

    def run(images, monitored):
        minicnn.manual_seed(0)
        model = fashion_cnn() if args.model == "fashion_cnn" else resnet20()
        callbacks = [LayerMonitor(every=args.every)] if monitored else []
        start = time.perf_counter()
        fit(model, (x[:images], y[:images]), epochs=1, optimizer=SGD(model.parameters(), lr=0.01, momentum=0.9),
            batch_size=64, seed=0, verbose=0, callbacks=callbacks)
        return time.perf_counter() - start

    run(64 * 5, args.worker == "with")
    print(json.dumps({"seconds": run(len(x), args.worker == "with")}))


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def blas():
    import numpy as np
    info = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return f"{info.get('name', '?')} {info.get('version', '')}".strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("fashion_cnn", "resnet20"), default="fashion_cnn")
    p.add_argument("--every", type=int, default=20, help="LayerMonitor interval (default: its default, 20)")
    p.add_argument("--steps", type=int, default=150, help="timed training steps per run (150)")
    p.add_argument("--pairs", type=int, default=5, help="without/with pairs (5)")
    p.add_argument("--worker", choices=("with", "without"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    common = [os.path.abspath(__file__), "--model", args.model, "--every", str(args.every),
              "--steps", str(args.steps)]
    ratios = []
    for i in range(args.pairs):
        times = {}
        for mode in ("without", "with"):
            times[mode] = json.loads(run_python([*common, "--worker", mode], env()))["seconds"]
            print(f"pair {i + 1} {mode:>7}: {times[mode]:.2f} s", flush=True)
        ratios.append(times["with"] / times["without"])
    threads = os.environ.get("MINICNN_NUM_THREADS", f"default ({os.cpu_count()} CPUs)")
    print(f"\n{args.model}, {args.steps} steps of 64, LayerMonitor(every={args.every}): with/without = "
          f"{statistics.median(ratios):.3f} (median of {args.pairs} pair ratios: "
          f"{', '.join(f'{r:.3f}' for r in ratios)})\n"
          f"CPU {cpu_model()}, BLAS {blas()}, threads {threads}, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
