"""A hyper-parameter sweep on Fashion-MNIST, spread over MPI ranks: one configuration per rank at a time.

    mpiexec -n 2 python examples/sweep.py --quick                       # 8 configurations, 2 at a time
    mpiexec -n 8 python examples/sweep.py --lr 3e-4,1e-3,3e-3 --batch-size 32,64,128 --epochs 5
    mpiexec -n 16 -f hosts python examples/sweep.py ...                   # over the machines in ``hosts``

The grid is every combination of ``--model``, ``--lr`` and ``--batch-size``.  Rank r
trains configurations r, r + N, r + 2N, ... one after the other, each on its own
(a sweep needs no gradient exchange, so it scales with the number of ranks as long
as there are configurations left), with ``MINICNN_NUM_THREADS`` set to the cores
per rank (``minicnn.distributed.init``).  Each run holds out the same stratified 20%
of the training images and reports its best validation accuracy; the test set is not
touched (choosing on it would be fitting to it).  Rank 0 gathers the results, prints
them as a table, best first, and saves ``sweep.csv`` and ``sweep.png`` (validation
accuracy of every configuration) in ``--out``.

Every configuration starts from the same seed, so a row of the table is reproduced
by ``python examples/fashion_mnist.py --model M --lr LR --batch-size B --epochs E``
on the same data.  Data options are those of examples/fashion_mnist.py.
"""
import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

import minicnn
from minicnn.models import FASHION_MODELS
from minicnn.optim import Adam
from minicnn.train import Trainer

from fashion_mnist import load_data   # the same data options and messages as the example


def _list(kind):
    return lambda s: [kind(v) for v in s.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=_list(str), default=["basic", "bn"],
                   help=f"comma-separated models from {sorted(FASHION_MODELS)} (default basic,bn)")
    p.add_argument("--lr", type=_list(float), default=[3e-4, 1e-3], help="comma-separated Adam learning rates")
    p.add_argument("--batch-size", type=_list(int), default=[32, 128], help="comma-separated batch sizes")
    p.add_argument("--epochs", type=int, default=None, help="epochs per configuration (default 5; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"), help="folder for sweep.csv and sweep.png")
    p.add_argument("--quick", action="store_true", help="1 epoch each on a subset (as fashion_mnist.py --quick)")
    p.add_argument("--data-dir", type=Path, default=None, help="read the four idx files from this folder")
    args = p.parse_args(argv)
    unknown = sorted(set(args.model) - set(FASHION_MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {sorted(FASHION_MODELS)}")
    if args.epochs is None:
        args.epochs = 1 if args.quick else 5
    if args.epochs < 1 or min(args.batch_size) < 1 or min(args.lr) <= 0:
        p.error("--epochs, --batch-size and --lr must be positive")
    return args


def run_one(config, train, args):
    """Train one configuration in this process; its row of the results table."""
    minicnn.manual_seed(args.seed)
    model = FASHION_MODELS[config["model"]]()
    trainer = Trainer(model, train, Adam(model.parameters(), lr=config["lr"]), validation_split=0.2,
                      batch_size=config["batch_size"], seed=args.seed, verbose=0)
    start = time.perf_counter()
    history = trainer.fit(args.epochs)
    seconds = time.perf_counter() - start
    best = max(range(len(history)), key=lambda e: history["val_accuracy"][e])
    return {**config, "best_val_accuracy": history["val_accuracy"][best], "best_epoch": best + 1,
            "val_loss": history["val_loss"][best], "train_img_per_s": len(trainer.train_loader.labels)
            * args.epochs / sum(history["time"]), "seconds": seconds}


def plot(rows, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 0.6 + 0.35 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [f"{r['model']}  lr {r['lr']:g}  batch {r['batch_size']}" for r in rows]
    ax.barh(range(len(rows)), [100 * r["best_val_accuracy"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    low = min(100 * r["best_val_accuracy"] for r in rows)
    ax.set_xlim(max(0, low - 5), 100)
    ax.set_xlabel("best validation accuracy (%)")
    ax.set_title("Fashion-MNIST sweep")
    ax.grid(axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def main(argv=None):
    args = parse_args(argv)
    try:
        import minicnn.distributed as dist
        comm = dist.init()
    except ImportError as e:
        sys.exit(str(e))
    rank, size = comm.Get_rank(), comm.Get_size()
    grid = [{"model": m, "lr": lr, "batch_size": b}
            for m, lr, b in itertools.product(args.model, args.lr, args.batch_size)]
    train, _ = load_data(args)
    if rank == 0:
        print(f"{len(grid)} configurations on {size} rank{'s' * (size > 1)}, {args.epochs} epoch"
              f"{'s' * (args.epochs > 1)} each, {len(train):,} training images (20% held out)", flush=True)
    mine = []
    for i in range(rank, len(grid), size):
        mine.append((i, run_one(grid[i], train, args)))
        print(f"rank {rank}: configuration {i + 1}/{len(grid)} done", flush=True)
    gathered = comm.gather(mine, root=0)
    if rank != 0:
        return None
    rows = sorted((row for part in gathered for _, row in part), key=lambda r: -r["best_val_accuracy"])
    head = f"{'model':8s}{'lr':>9s}{'batch':>7s}{'val acc':>9s}{'epoch':>7s}{'val loss':>10s}{'img/s':>8s}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['model']:8s}{r['lr']:>9.2g}{r['batch_size']:>7d}{100 * r['best_val_accuracy']:>8.2f}%"
              f"{r['best_epoch']:>7d}{r['val_loss']:>10.4f}{r['train_img_per_s']:>8.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nSaved: {args.out / 'sweep.csv'}, {plot(rows, args.out / 'sweep.png')}")
    return rows


if __name__ == "__main__":
    main()
