"""Speed of two revisions of minicnn against each other, in alternating processes.

    python benchmarks/revisions.py OLD_REV [--new NEW_REV] [--pairs 5] [--models ...]

Each revision is exported with ``git archive`` into a temporary folder and runs its own
``benchmarks/train_throughput.py`` worker (its own models and its own notion of
fusion), so the comparison is what a user of each revision gets.  Workers alternate
old, new, new, old, ... (this machine's neighbours can halve 2-thread speed for tens of
seconds); the ratios are medians over back-to-back pairs of new / old training and
inference img/s.  Without ``--new`` the working tree is the new side.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile

from harness import ROOT, run_python, thread_env


def export(rev, into):
    """The tree of ``rev`` extracted into the folder ``into``; returns it."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into


def measure(tree, model, args):
    script = os.path.join(tree, "benchmarks", "train_throughput.py")
    environ = thread_env(args.threads, OPENBLAS_NUM_THREADS="1")
    environ["PYTHONPATH"] = tree
    return json.loads(run_python([script, "--worker", "minicnn", "--model", model, "--threads", str(args.threads),
                                  "--warmup", "3", "--steps", str(args.steps)], environ))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="the revision to compare against (e.g. a commit hash)")
    p.add_argument("--new", help="the new revision (default: the working tree)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["fashion_cnn", "improved_cnn", "resnet20"])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old = export(args.old, os.path.join(tmp, "old"))
        new = export(args.new, os.path.join(tmp, "new")) if args.new else ROOT
        for model in args.models:
            runs = {"old": [], "new": []}
            for k in range(args.pairs):
                order = ("old", "new") if k % 2 == 0 else ("new", "old")
                for side in order:
                    runs[side].append(measure(old if side == "old" else new, model, args))
            line = [f"{model:13s}"]
            for key in ("train", "infer"):
                o, n = [r[key] for r in runs["old"]], [r[key] for r in runs["new"]]
                ratio = statistics.median(b / a for a, b in zip(o, n))
                line.append(f"{key} {statistics.median(o):,.0f} -> {statistics.median(n):,.0f} img/s "
                            f"(new/old {ratio:.3f}, pairs {min(b / a for a, b in zip(o, n)):.2f}-"
                            f"{max(b / a for a, b in zip(o, n)):.2f})")
            print("  ".join(line), flush=True)
    print(f"{args.threads} threads, {args.pairs} alternating pairs x {args.steps} steps, medians; "
          f"1-min load average {os.getloadavg()[0]:.1f} at the end", file=sys.stderr)


if __name__ == "__main__":
    main()
