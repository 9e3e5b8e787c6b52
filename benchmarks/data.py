"""CIFAR-10 augmentation throughput: flip + pad-4 random crop + normalize, batches of 128.

    python benchmarks/data.py [--reps 7] [--batches 100] [--out benchmarks/results/data.json]

Three figures, each the median img/s over ``--reps`` repetitions of ``--batches`` batches:
  transform   the Compose alone on ready uint8 batches (N, 3, 32, 32);
  loader      a shuffling DataLoader end to end (gather by index + transform + float32 cast);
  prefetch    the same loader with its background thread, consumed as fast as it produces.
The target is >= 5,000 img/s on 2 cores, so that data never holds training back.  Uses the
real CIFAR-10 training set when it is in the cache dir (see minicnn.data.CIFAR10), else
random images of the same shape (the work is the same; the JSON says which).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from minicnn.data import CIFAR10, ArrayDataset, DataLoader  # noqa: E402
from minicnn.data.transforms import (  # noqa: E402
    Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToFloat)

BATCH = 128
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cifar_or_random():
    try:
        return CIFAR10(train=True, download=False), "CIFAR-10 train"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8)
        return ArrayDataset(images, rng.integers(0, 10, 50000)), "random uint8 (CIFAR-10 not found)"


def median_rate(run, images, reps):
    """Median img/s of ``run()`` (which processes ``images`` images) over ``reps`` runs, after one warm-up."""
    run()
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - t))
    return statistics.median(rates), rates


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = p.parse_args()

    ds, source = cifar_or_random()
    tf = Compose([RandomHorizontalFlip(), RandomCrop(32, padding=4), ToFloat(), Normalize(MEAN, STD)])
    n = args.batches * BATCH
    batches = [ds.images[i * BATCH:(i + 1) * BATCH] for i in range(args.batches)]
    rng = np.random.default_rng(0)

    def transform_only():
        for b in batches:
            tf(b, rng)

    def loader_run(prefetch):
        sub = ArrayDataset(ds.images[:n], ds.labels[:n], ds.classes)
        loader = DataLoader(sub, BATCH, shuffle=True, transform=tf, seed=0, prefetch=prefetch)
        return lambda: sum(len(y) for _, y in loader)

    results = {}
    for name, run in (("transform", transform_only), ("loader", loader_run(False)),
                      ("prefetch", loader_run(True))):
        med, rates = median_rate(run, n, args.reps)
        results[name] = {"img_per_s": round(med), "reps": [round(r) for r in rates]}
        print(f"{name:10s} {med:10,.0f} img/s  (median of {args.reps}, {n:,} images each)")

    report = {
        "benchmark": "flip + pad-4 random crop + ToFloat + Normalize, CIFAR batches of 128",
        "data": source,
        "batch_size": BATCH,
        "images_per_rep": n,
        "target_img_per_s": 5000,
        "results": results,
        "meets_target": min(r["img_per_s"] for r in results.values()) >= 5000,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
