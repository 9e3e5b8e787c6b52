"""Data-parallel training on one machine: 1 rank x 2 threads against 2 ranks x 1 thread.

    python benchmarks/distributed.py [--pairs 3] [--steps 12] [--models fashion_cnn resnet20]

Per model, the same global batch (Fashion-MNIST CNN: 64, Adam; ResNet-20: 128, SGD
with momentum), plain (unfused) models, float32, synthetic images:

    1x2   one process, no MPI, MINICNN_NUM_THREADS=2
    2x1   mpiexec -n 2, MINICNN_NUM_THREADS=1 per rank, batch/2 per rank,
          DistributedOptimizer (one Allreduce of all the gradients per step);
          batch norms per rank, as PyTorch DDP without SyncBatchNorm

Per configuration, in fresh processes: the step time (forward, loss, backward,
Allreduce, update) on rank 0, median of ``--steps`` after ``--warmup`` (a step ends
on every rank together: Allreduce waits for both), img/s = batch / step; the time
rank 0 spends inside Allreduce per step (median; it includes waiting for the slower
rank); and, after training, an Allreduce of the gradients' size alone (median of
20: the cost of the exchange itself on this machine's shared memory) and of 8 bytes
(the latency).  The configurations alternate (1x2, 2x1, 2x1, 1x2, ...) because a
neighbour on this shared machine can halve 2-thread speed for tens of seconds; the
ratio reported is the median of the pairs' ratios.  Writes distributed.json and
distributed.md to ``--out`` and prints the Markdown table.  docs/scaling.md builds
its cost model on these figures.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from harness import ROOT, env, run_python, thread_env

MODELS = {"fashion_cnn": ((1, 28, 28), 64, "adam"), "resnet20": ((3, 32, 32), 128, "sgd")}
TITLES = {"fashion_cnn": "Fashion-MNIST CNN", "resnet20": "ResNet-20"}


def worker(name, batch, steps, warmup, distributed):
    """Train ``name`` on synthetic data; print a JSON line (rank 0) with the timings."""
    import minicnn   # before NumPy, as a user's script would: its thread settings come first
    import numpy as np
    from minicnn import Tensor
    from minicnn.models import fashion_cnn, resnet20
    from minicnn.ops import cross_entropy
    from minicnn.optim import SGD, Adam

    shape, _, opt_name = MODELS[name]
    minicnn.manual_seed(0)
    model = {"fashion_cnn": fashion_cnn, "resnet20": resnet20}[name]()
    params = list(model.parameters())
    optimizer = Adam(params, lr=1e-3) if opt_name == "adam" else SGD(params, lr=0.05, momentum=0.9)
    rank = 0
    if distributed:
        import minicnn.distributed as dist
        comm = dist.init()
        rank = comm.Get_rank()
        optimizer = dist.DistributedOptimizer(optimizer)
        dist.broadcast_parameters(model)
    rng = np.random.default_rng(rank)
    x = rng.random((batch,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)
    steps_s, reduce_s = [], []
    for i in range(warmup + steps):
        before = optimizer.allreduce_seconds if distributed else 0.0
        t0 = time.perf_counter()
        optimizer.zero_grad()
        cross_entropy(model(Tensor(x)), y).backward()
        optimizer.step()
        if i >= warmup:
            steps_s.append(time.perf_counter() - t0)
            reduce_s.append((optimizer.allreduce_seconds if distributed else 0.0) - before)
    result = {"step_s": statistics.median(steps_s), "allreduce_in_step_s": statistics.median(reduce_s),
              "grad_bytes": int(sum(p.data.nbytes for p in params)),
              "threads": os.environ.get("MINICNN_NUM_THREADS")}
    if distributed:
        from mpi4py import MPI
        result["ranks"] = comm.Get_size()
        for key, size in (("allreduce_grad_s", result["grad_bytes"] // 4), ("allreduce_8B_s", 2)):
            buf = np.ones(size, np.float32)
            times = []
            for _ in range(20):
                comm.Barrier()
                t0 = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, buf)
                times.append(time.perf_counter() - t0)
            result[key] = statistics.median(times)
    if rank == 0:
        print(json.dumps(result), flush=True)


def measure(name, config, args):
    shape, batch, _ = MODELS[name]
    common = ["--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if config == "1x2":
        return json.loads(run_python([__file__, *common, "--batch", str(batch)], thread_env(2)))
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    out = subprocess.run([mpiexec, "-n", "2", sys.executable, __file__, *common, "--batch", str(batch // 2),
                          "--distributed"], env=thread_env(1), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"mpiexec worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model():
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")


def blas():
    code = ("import numpy as np; b = np.show_config(mode='dicts')['Build Dependencies']['blas']; "
            "print(b['name'], b.get('version', ''))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env()).stdout.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--worker")
    p.add_argument("--batch", type=int)
    p.add_argument("--distributed", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.batch, args.steps, args.warmup, args.distributed)
    import mpi4py
    results = {"cpu": cpu_model(), "blas": blas(), "cores": len(os.sched_getaffinity(0)),
               "python": platform.python_version(), "mpi4py": mpi4py.__version__,
               "command": "python benchmarks/distributed.py " + " ".join(sys.argv[1:]), "models": {}}
    for name in args.models:
        runs = {"1x2": [], "2x1": []}
        for i in range(args.pairs):
            for config in (("1x2", "2x1") if i % 2 == 0 else ("2x1", "1x2")):
                runs[config].append(measure(name, config, args))
                print(f"{name} {config}: {runs[config][-1]}", file=sys.stderr, flush=True)
        batch = MODELS[name][1]
        med = {c: statistics.median(r["step_s"] for r in rs) for c, rs in runs.items()}
        two = runs["2x1"]
        results["models"][name] = {
            "batch": batch, "grad_bytes": two[0]["grad_bytes"], "runs": runs,
            "img_s_1x2": batch / med["1x2"], "img_s_2x1": batch / med["2x1"],
            "speedup_2x1": statistics.median(a["step_s"] / b["step_s"] for a, b in zip(runs["1x2"], two)),
            "allreduce_in_step_ms": 1e3 * statistics.median(r["allreduce_in_step_s"] for r in two),
            "allreduce_grad_ms": 1e3 * statistics.median(r["allreduce_grad_s"] for r in two),
            "allreduce_8B_us": 1e6 * statistics.median(r["allreduce_8B_s"] for r in two)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "distributed.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = [f"CPU {results['cpu']} ({results['cores']} cores), BLAS {results['blas']}, Python {results['python']}, "
             f"mpi4py {results['mpi4py']} (MPICH); `{results['command']}`", "",
             "| model | batch | gradients | 1 rank x 2 threads img/s | 2 ranks x 1 thread img/s | 2x1 / 1x2 "
             "| in Allreduce per step | Allreduce of the gradients alone | 8-byte Allreduce |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        lines.append(f"| {TITLES[name]} | {r['batch']} | {r['grad_bytes'] / 1e6:.2f} MB | {r['img_s_1x2']:,.0f} | "
                     f"{r['img_s_2x1']:,.0f} | {r['speedup_2x1']:.2f}x | {r['allreduce_in_step_ms']:.2f} ms | "
                     f"{r['allreduce_grad_ms']:.2f} ms | {r['allreduce_8B_us']:.0f} us |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "distributed.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
