"""Train a CNN on Fashion-MNIST with minicnn, then report and plot the result.

    python examples/fashion_mnist.py                    # the classic CNN, 15 epochs
    python examples/fashion_mnist.py --model strong     # batch norm, dropout, augmentation
    python examples/fashion_mnist.py --quick            # about a minute: 1 epoch on a subset
    mpiexec -n 2 python examples/fashion_mnist.py --distributed   # the same run on 2 processes

What it does:

1. loads Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grey,
   10 classes) from ~/.cache/minicnn/fashion-mnist, the Debian package's copy
   (/usr/share/datasets/fashion-mnist) or the internet, in that order;
2. holds out 20% of the training images (stratified) for validation;
3. prints the model's summary and trains it with Adam, printing one progress
   line per epoch, with EarlyStopping (keeping the best epoch's weights),
   ReduceLROnPlateau (or a one-cycle schedule for ``strong``) and
   ModelCheckpoint;
4. prints the test accuracy and the per-class precision/recall/F1 report;
5. saves to ``--out``: learning curves, confusion matrix, misclassified test
   images (PNG), the best checkpoint (best.npz), the epoch log (history.csv).

The models (see minicnn/models/fashion.py):

    basic    Conv 32 - Pool - Conv 64 - Pool - Dense 128 - Dense 10 (421,642 params)
    bn       the same with batch norm and dropout
    strong   two VGG blocks (32-32, 64-64) with batch norm and dropout, trained with
             train-only augmentation (flips, 2-pixel shifts) and a one-cycle schedule

``--data-dir DIR`` reads the four idx files from DIR as they are (gzipped or
not, without checksums): for your own copy, or a generated sample as the smoke
test uses.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn.data import ArrayDataset, DownloadError, FashionMNIST, data_root, transforms
from minicnn.data.fashion_mnist import CLASSES, DEBIAN_DIR, MD5
from minicnn.data.idx import parse_idx, read_idx_bytes
from minicnn.models import FASHION_MODELS
from minicnn.optim import Adam, OneCycleLR
from minicnn.train import (CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, Trainer,
                           classification_report, confusion_matrix, predict, summary)

QUICK_TRAIN, QUICK_TEST = 5000, 1000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(FASHION_MODELS), default="basic",
                   help="which network (default basic)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 15; 1 with --quick)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-3; peak rate 4e-3 for strong)")
    p.add_argument("--augment", action="store_true",
                   help="train-only augmentation: flips and 2-pixel shifts (always on for strong)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, split, shuffling (default 0)")
    p.add_argument("--out", type=Path, default=Path("runs/fashion_mnist"),
                   help="folder for plots, checkpoint and log (default runs/fashion_mnist)")
    p.add_argument("--quick", action="store_true",
                   help=f"1 epoch on {QUICK_TRAIN} training and {QUICK_TEST} test images")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="read the four idx files from this folder, unchecked")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    p.add_argument("--distributed", action="store_true",
                   help="run under mpiexec -n N: each rank trains on batch-size/N images of every batch "
                        "(batch norms synchronized), so the run is the single-process one, spread out")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 15
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be positive")
    return args


def _read_idx_dir(folder, prefix):
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{prefix}-{kind}"
        path = next((folder / n for n in (f"{name}.gz", name) if (folder / n).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{folder} has no {name}.gz (or {name})")
        arrays.append(parse_idx(read_idx_bytes(path), str(path)))
    return ArrayDataset(arrays[0], arrays[1], CLASSES)


def load_data(args):
    """(train, test) datasets, or exit with instructions when there is no copy at all."""
    if args.data_dir is not None:
        train, test = _read_idx_dir(args.data_dir, "train"), _read_idx_dir(args.data_dir, "t10k")
    else:
        try:
            train, test = FashionMNIST(train=True), FashionMNIST(train=False)
        except (DownloadError, FileNotFoundError, ValueError) as e:  # absent, or no valid copy
            files = ", ".join(f"{n}.gz" for n in MD5)
            sys.exit("No valid copy of Fashion-MNIST is on this machine, and none could be downloaded.\n"
                     "Get it one of these ways, then run this again:\n"
                     "  apt-get install dataset-fashion-mnist     (installs it in "
                     f"{DEBIAN_DIR})\n"
                     f"  or put {files}\n"
                     f"  into {data_root() / 'fashion-mnist'}\n"
                     f"(what happened: {e})")
    if args.quick:
        train, test = train[:QUICK_TRAIN], test[:QUICK_TEST]
    return train, test


def training_setup(args, model, steps_per_epoch):
    """(optimizer, scheduler, transform, callbacks) for the chosen model."""
    augment = args.augment or args.model == "strong"
    transform = transforms.Compose([transforms.RandomHorizontalFlip(),
                                    transforms.RandomCrop(28, padding=2)]) if augment else None
    callbacks = [ModelCheckpoint(args.out / "best.npz", monitor="val_accuracy", save_best_only=True,
                                 metadata={"model": args.model, "classes": CLASSES}),
                 CSVLogger(args.out / "history.csv")]
    if args.model == "strong":  # one cycle over the whole run; keep the best epoch's weights
        lr = args.lr or 4e-3
        optimizer = Adam(model.parameters(), lr=lr)
        scheduler = OneCycleLR(optimizer, max_lr=lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
        callbacks.append(EarlyStopping("val_accuracy", patience=args.epochs, restore_best_weights=True))
    else:
        optimizer = Adam(model.parameters(), lr=args.lr or 1e-3)
        scheduler = None
        callbacks += [EarlyStopping("val_accuracy", patience=4, restore_best_weights=True),
                      ReduceLROnPlateau("val_loss", factor=0.3, patience=2, min_lr=1e-5)]
    return optimizer, scheduler, transform, callbacks


def main(argv=None):
    args = parse_args(argv)
    import minicnn.viz  # noqa: F401  (matplotlib: fail now rather than after training)

    train, test = load_data(args)
    minicnn.manual_seed(args.seed)
    model = FASHION_MODELS[args.model]()
    strategy, ranks = None, 1
    if args.distributed:
        import minicnn.distributed as dist   # the optional extra: pip install "minicnn[distributed]"
        strategy, model = dist.MPIStrategy(), dist.convert_sync_batchnorm(model)
        ranks = strategy.size
        if args.batch_size % ranks:
            sys.exit(f"--batch-size {args.batch_size} must be a multiple of the {ranks} MPI ranks")
    model = minicnn.nn.fuse(model)      # adjacent layers run fused where exact (see minicnn.nn.fusion)
    is_main = strategy is None or strategy.is_main     # rank 0 alone reports
    if is_main:
        print(summary(model, (1, 28, 28)))
    per_rank = -(-round(0.8 * len(train)) // ranks)             # images per rank and epoch
    steps = -(-per_rank // (args.batch_size // ranks))
    optimizer, scheduler, transform, callbacks = training_setup(args, model, steps)
    trainer = Trainer(model, train, optimizer, validation_split=0.2, batch_size=args.batch_size // ranks,
                      callbacks=callbacks, scheduler=scheduler, transform=transform, seed=args.seed,
                      verbose=0 if args.quiet else 1, strategy=strategy)
    if is_main:
        print(f"\nTraining {args.model} on {len(trainer.train_loader.labels):,} images, validating on "
              f"{len(trainer.val_loader.labels):,}, for {args.epochs} epoch{'s' * (args.epochs > 1)} "
              f"of batch {args.batch_size}" + (f" ({ranks} ranks)" if strategy else "")
              + (" with augmentation" if transform is not None else ""))
    start = time.perf_counter()
    history = trainer.fit(args.epochs)
    seconds = time.perf_counter() - start
    if not is_main:
        return None

    pred = predict(model, test).argmax(axis=1)
    return report(history, seconds, test, pred, args.out, f"{args.model} CNN", args.out / "best.npz")


def report(history, seconds, test, pred, out, title, checkpoint):
    """Print the training time, the test accuracy and the per-class report; save the learning
    curves, confusion matrix and misclassified images to ``out``.  Returns the test accuracy.
    (benchmarks/fashion_mnist_torch.py ends its run with this too, so that both do the same.)"""
    from minicnn.viz import plot_confusion_matrix, plot_history, plot_misclassified  # matplotlib
    acc = float(np.mean(pred == test.labels))
    took = f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"   # not "0.0 min"
    print(f"\nTraining took {took} for {len(history)} "
          f"epoch{'s' * (len(history) != 1)}, validation included")
    print(f"Test accuracy: {acc:.4f} ({int(np.sum(pred == test.labels))}/{len(test)})\n")
    print(classification_report(test.labels, pred, test.classes))

    cm = confusion_matrix(test.labels, pred, len(test.classes))
    saved = [plot_history(history, out / "curves.png", title=f"Fashion-MNIST, {title}"),
             plot_confusion_matrix(cm, test.classes, out / "confusion_matrix.png"),
             plot_misclassified(test.images, test.labels, pred, test.classes, out / "misclassified.png"),
             checkpoint, out / "history.csv"]
    print("\nSaved: " + ", ".join(str(p) for p in saved))
    return acc


if __name__ == "__main__":
    main()
