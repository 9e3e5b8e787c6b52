"""ResNet-20 on CIFAR-sized input: minicnn vs torch (CPU), training and inference img/s.

    python benchmarks/resnet20.py [--pairs 5] [--threads 2] [--out benchmarks/results/resnet20.json]

Training step: forward + cross-entropy + backward + SGD (momentum 0.9, weight decay
5e-4) on a batch of 128 random 3x32x32 images.  Inference: forward in eval mode
without a graph, batch 256.  Each measurement runs in a fresh process (two BLAS /
OpenMP runtimes in one process slow each other) with the same thread count
(torch: ``set_num_threads``; minicnn: ``MINICNN_NUM_THREADS`` conv workers, each
with a one-thread BLAS), after warm-up steps; a process reports the median of its
timed steps.  The frameworks
alternate (minicnn, torch, torch, minicnn, ...) because a neighbour on this
machine can halve 2-thread speed for tens of seconds; the reported ratio is the
median over pairs of minicnn/torch, each pair measured back to back.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_BATCH, EVAL_BATCH = 128, 256


def _timed(step, warmup, steps):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _minicnn_steps(rng_images, labels, eval_images):
    import minicnn
    from minicnn import ops
    from minicnn.models import resnet20
    from minicnn.optim import SGD

    minicnn.manual_seed(0)
    model = resnet20()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = minicnn.tensor(rng_images)

    def train():
        loss = ops.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    xe = minicnn.tensor(eval_images)

    def infer():
        model.eval()
        with minicnn.no_grad():
            model(xe)
        model.train()

    return train, infer


def _torch_steps(images, labels, eval_images):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.pad = (cout - cin) // 2 if stride != 1 else 0

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
            return F.relu(out + sc)

    class ResNet20(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            blocks, cin = [], 16
            for cout in (16, 32, 64):
                for j in range(3):
                    blocks.append(Block(cin, cout, 2 if cout != 16 and j == 0 else 1))
                    cin = cout
            self.blocks = tnn.Sequential(*blocks)
            self.linear = tnn.Linear(64, 10)

        def forward(self, x):
            out = self.blocks(F.relu(self.bn1(self.conv1(x))))
            return self.linear(out.mean((2, 3)))

    torch.manual_seed(0)
    model = ResNet20()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y, xe = torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(eval_images)

    def train():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(xe)
        model.train()

    return train, infer


def worker(framework, threads, warmup, steps):
    """Measure one framework in this process; print {'train': img/s, 'infer': img/s} as JSON."""
    if framework == "minicnn":
        import minicnn  # noqa: F401  (first: its thread settings must precede numpy's start)
    else:
        import torch
        torch.set_num_threads(threads)
    import numpy as np
    rng = np.random.default_rng(0)
    images = rng.standard_normal((TRAIN_BATCH, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, TRAIN_BATCH)
    eval_images = rng.standard_normal((EVAL_BATCH, 3, 32, 32), dtype=np.float32)
    make = _minicnn_steps if framework == "minicnn" else _torch_steps
    train, infer = make(images, labels, eval_images)
    result = {"train": TRAIN_BATCH / _timed(train, warmup, steps),
              "infer": EVAL_BATCH / _timed(infer, max(1, warmup // 2), steps)}
    print(json.dumps(result))


def _run(framework, args):
    n = str(args.threads)
    # minicnn's conv workers (MINICNN_NUM_THREADS) each run a 1-thread BLAS; torch reads the rest.
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, NUMBA_NUM_THREADS=n, MINICNN_NUM_THREADS=n,
               OPENBLAS_NUM_THREADS="1" if framework == "minicnn" else n,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--worker", framework, "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{framework} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5, help="alternating minicnn/torch pairs (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    p.add_argument("--steps", type=int, default=10, help="timed steps per process")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "resnet20.json"))
    p.add_argument("--worker", choices=("minicnn", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.threads, args.warmup, args.steps)

    runs = {"minicnn": [], "torch": []}
    load_before = os.getloadavg()[0]
    for i in range(args.pairs):
        order = ("minicnn", "torch") if i % 2 == 0 else ("torch", "minicnn")
        for fw in order:
            runs[fw].append(_run(fw, args))
            r = runs[fw][-1]
            print(f"pair {i + 1}/{args.pairs} {fw:8s} train {r['train']:7.1f} img/s   "
                  f"infer {r['infer']:7.1f} img/s", flush=True)
    summary = {}
    for kind in ("train", "infer"):
        ratios = [m[kind] / t[kind] for m, t in zip(runs["minicnn"], runs["torch"])]
        summary[kind] = {
            "minicnn_img_per_s": statistics.median(r[kind] for r in runs["minicnn"]),
            "torch_img_per_s": statistics.median(r[kind] for r in runs["torch"]),
            "ratio_minicnn_over_torch": statistics.median(ratios),
            "pair_ratios": ratios,
        }
    result = {"model": "resnet20", "train_batch": TRAIN_BATCH, "eval_batch": EVAL_BATCH,
              "threads": args.threads, "pairs": args.pairs, "steps_per_run": args.steps,
              "load_average_1min": [load_before, os.getloadavg()[0]],
              "summary": summary, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for kind, s in summary.items():
        print(f"{kind:5s}: minicnn {s['minicnn_img_per_s']:7.1f} img/s, torch {s['torch_img_per_s']:7.1f} "
              f"img/s, ratio {s['ratio_minicnn_over_torch']:.2f} (median of pairs)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
