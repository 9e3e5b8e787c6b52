"""CIFAR-10 with minicnn: the seeds' DNN-vs-CNN comparison, then a strong recipe in under an hour.

    python examples/cifar10.py --part compare    # part 1: DNN vs CNN, trained the same way
    python examples/cifar10.py --part strong     # part 2: AirNet, >= 90% test in <= 60 min of training
    python examples/cifar10.py --quick           # smoke test: both parts on a small subset, < 1 min
    mpiexec -n 2 python examples/cifar10.py --distributed   # the same runs, spread over 2 processes

Part 1 reproduces the seeds' table.  Both networks get the same training: inputs
scaled to [0, 1], no augmentation, Adam (lr 1e-3), batch 64, 10 epochs, Keras's
initialization.  It prints parameters, training time, train and test accuracy and
their gap beside the seeds' figures, reads the gap, and plots each model's curves.
``--improved`` adds the seeds' improved CNN (conv-BN blocks, dropout, Adam lr 2e-4).

Part 2 is a strong recipe sized for this 2-core machine (see ``STRONG`` below and
minicnn/models/cifar.py): an airbench-style net (PCA-whitening 2x2 stem, three
conv-pool-BN-ReLU groups, Dirac init, shift-only BatchNorm), alternating flip +
2-pixel reflect-padded translation, label smoothing 0.2, Nesterov SGD with a triangular
(warm-up then linear decay) schedule, 64x learning rate on the BatchNorm shifts,
Lookahead, batch 256, and test-time flip averaging.  It prints the test accuracy
and the per-class report, and saves the curves, the confusion matrix, the
time-accuracy curve (test accuracy after each epoch against cumulative training
time) and the trained weights (strong_model.npz).

The test set is evaluated after every epoch to draw the curves; nothing is chosen
on it (no early stopping, no checkpoint selection).  Times are training only
(forward, backward, update, data augmentation), without those evaluations.

Data: CIFAR-10's binary version under ``--data-root`` (default ``$MINICNN_DATA`` or
~/.cache/minicnn), downloaded when absent and the internet answers.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn import ops
from minicnn.data import CIFAR10, ArrayDataset, DownloadError, data_root, transforms
from minicnn.io import save_model
from minicnn.models.cifar import airnet_cifar, improved_cnn_cifar, mlp_cifar, seed_cnn_cifar
from minicnn.optim import SGD, Adam, OneCycleLR
from minicnn.tensor import Tensor
from minicnn.train import Callback, Trainer, classification_report, confusion_matrix

QUICK_TRAIN, QUICK_TEST = 4000, 1000

# The seeds' figures (Keras): train accuracy, test accuracy.
SEEDS = {"DNN": (0.4883, 0.4678), "CNN": (0.8862, 0.6237)}

# Part 2.  Hyper-parameters in airbench's decoupled form: "lr" and "weight_decay" per
# 1,024 examples, so that changing the batch size or the momentum keeps the step sizes.
# Sized by measurement: AirNet (64, 256, 256) trains at ~180-190 img/s on the 2 cores
# (~0.7 GFLOP per image for forward + backward), ~4.6 min per epoch, so 10 epochs take
# ~47 min and leave room for a busy neighbour within the hour.  8 epochs (37.5 min)
# reached 88.74% plain, 89.75% with flip-translate TTA: just short.  At equal epochs the
# full widths beat (48, 192, 192) and (32, 128, 128) by 1.6 and 3.2 points after one
# epoch; batch 256 beat 512 by 2.7 points after one epoch (twice the steps).
STRONG = {
    "widths": (64, 256, 256),
    "epochs": 10,
    "batch_size": 256,
    "lr": 11.5,             # per 1,024 examples, summed loss
    "momentum": 0.85,
    "weight_decay": 0.0153,  # per 1,024 examples, decoupled from the lr
    "bias_scaler": 64.0,    # lr multiplier for the BatchNorm shifts
    "label_smoothing": 0.2,
    "warmup": 0.23,         # fraction of steps rising from 0.2x to the peak
    "final_lr": 0.07,       # end of the linear decay, as a fraction of the peak
    "translate": 2,
}
QUICK_WIDTHS = (16, 32, 32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("compare", "strong", "all"), default="all",
                   help="which part to run (default all)")
    p.add_argument("--epochs", type=int, default=None,
                   help="part 1 epochs (default 10; 1 with --quick)")
    p.add_argument("--improved", action="store_true", help="part 1: add the seeds' improved CNN")
    p.add_argument("--strong-epochs", type=int, default=None,
                   help=f"part 2 epochs (default {STRONG['epochs']}; 1 with --quick)")
    p.add_argument("--strong-batch-size", type=int, default=STRONG["batch_size"],
                   help=f"part 2 batch size (default {STRONG['batch_size']})")
    p.add_argument("--widths", type=lambda s: tuple(int(v) for v in s.split(",")), default=None,
                   help=f"part 2 channel widths, e.g. 64,256,256 (default {STRONG['widths']})")
    p.add_argument("--tta", choices=("none", "flip", "flip-translate"), default="flip-translate",
                   help="part 2 test-time augmentation (default flip-translate)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, shuffling, augmentation (default 0)")
    p.add_argument("--out", type=Path, default=Path("runs/cifar10"),
                   help="folder for plots and results.json (default runs/cifar10)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding cifar-10-batches-bin/ (default $MINICNN_DATA or ~/.cache/minicnn)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: 1 epoch on {QUICK_TRAIN} training and {QUICK_TEST} test images")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    p.add_argument("--distributed", action="store_true",
                   help="run under mpiexec -n N: each rank trains on 1/N of every batch (batch norms "
                        "synchronized), so each run is the single-process one, spread out")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 10
    if args.strong_epochs is None:
        args.strong_epochs = 1 if args.quick else STRONG["epochs"]
    if args.widths is None:
        args.widths = QUICK_WIDTHS if args.quick else STRONG["widths"]
    if min(args.epochs, args.strong_epochs, args.strong_batch_size) < 1:
        p.error("--epochs, --strong-epochs and --strong-batch-size must be positive")
    if len(args.widths) != 3 or min(args.widths) < 1:
        p.error("--widths needs three positive channel counts, e.g. 64,256,256")
    return args


def load_data(args):
    """(train, test) datasets, or exit with instructions when there is no copy at all."""
    try:
        train, test = CIFAR10(args.data_root, train=True), CIFAR10(args.data_root, train=False)
    except (DownloadError, FileNotFoundError) as e:
        root = data_root(args.data_root)
        sys.exit("CIFAR-10 is not on this machine and could not be downloaded.\n"
                 f"Put cifar-10-binary.tar.gz, or its extracted cifar-10-batches-bin/ folder, into {root}\n"
                 "(on the project's machines: python ../shared/datasets/make_cifar10_bin.py "
                 f"{root}), then run this again.\n(what happened: {e})")
    if args.quick:  # a random subset: the files may be sorted by class
        rng = np.random.default_rng(args.seed)
        train = train[np.sort(rng.permutation(len(train))[:QUICK_TRAIN])]
        test = test[np.sort(rng.permutation(len(test))[:QUICK_TEST])]
    return train, test


def _pct(v):
    return f"{100 * v:.2f}%"


def distributed(args):
    """(strategy, ranks, is_main) for --distributed (rank 0 alone prints and writes files),
    else (None, 1, True)."""
    if not args.distributed:
        return None, 1, True
    import minicnn.distributed as dist   # the optional extra: pip install "minicnn[distributed]"
    strategy = dist.MPIStrategy()
    for batch in (64, args.strong_batch_size):
        if batch % strategy.size:
            sys.exit(f"batch {batch} must be a multiple of the {strategy.size} MPI ranks")
    if not strategy.is_main:
        sys.stdout = open(os.devnull, "w")
    return strategy, strategy.size, strategy.is_main


def spread(model, args):
    """``model`` with its batch norms synchronized over the ranks under --distributed."""
    if args.strategy is None:
        return model
    import minicnn.distributed as dist
    return dist.convert_sync_batchnorm(model)


# ----------------------------------------------------------------------------- part 1

def train_seed_model(name, model, optimizer, train, test, args):
    """Train the way the seeds did; returns the row of the comparison table."""
    trainer = Trainer(spread(model, args), train, optimizer, validation_data=test, batch_size=64 // args.ranks,
                      seed=args.seed, verbose=0 if args.quiet else 1, strategy=args.strategy)
    print(f"\n{name}: {sum(p.size for p in model.parameters()):,} parameters, "
          f"{args.epochs} epoch{'s' * (args.epochs > 1)} of batch 64")
    history = trainer.fit(args.epochs)
    return {"params": sum(p.size for p in model.parameters()),
            "train_seconds": float(sum(history["time"])),
            # Keras reports the running mean over the last epoch; so does History.
            "train_acc": history["accuracy"][-1], "test_acc": history["val_accuracy"][-1],
            "best_test_epoch": int(np.argmax(history["val_accuracy"])) + 1,
            "best_test_acc": float(max(history["val_accuracy"])),
            "history": history.history}


def read_the_gap(rows):
    """A few sentences on what the numbers say, each one following from them."""
    dnn, cnn = rows["DNN"], rows["CNN"]
    gap = {k: r["train_acc"] - r["test_acc"] for k, r in rows.items()}
    diff = 100 * (cnn["test_acc"] - dnn["test_acc"])
    lines = [f"On test the CNN {'beats' if diff > 0 else 'trails'} the DNN by {abs(diff):.1f} points"
             + (": its 3x3 filters are shared across positions, so it learns a local pattern once "
                "instead of once per pixel location." if diff > 0 else ".")]
    if gap["CNN"] > max(gap["DNN"], 0) + 0.05:
        lines.append(
            f"But its train-test gap is {100 * gap['CNN']:.1f} points against the DNN's "
            f"{100 * gap['DNN']:.1f}: it overfits.  98% of its 1.63M parameters sit in one dense layer "
            "(12,544 x 128) that can memorize the training images, and nothing (augmentation, dropout, "
            "weight decay) holds it back.")
    else:
        lines.append(f"Its train-test gap ({100 * gap['CNN']:.1f} points) is no larger than the DNN's "
                     f"({100 * gap['DNN']:.1f}): too little training yet to overfit.")
    epochs = len(cnn["history"]["val_accuracy"])
    if cnn["best_test_epoch"] < epochs:
        lines.append(f"Its test accuracy peaked at epoch {cnn['best_test_epoch']} ({_pct(cnn['best_test_acc'])}) "
                     f"and ended at {_pct(cnn['test_acc'])}, while its training accuracy kept climbing "
                     f"to {_pct(cnn['train_acc'])}.")
    if dnn["train_acc"] < 0.6:
        lines.append(f"The DNN underfits: {_pct(dnn['train_acc'])} on the very images it trains on, "
                     "because flattening throws away which pixels are neighbours.")
    if "improved CNN" in rows:
        imp = rows["improved CNN"]
        lines.append(f"The improved CNN (batch norm, pooling after every block, dropout 0.5, half the "
                     f"parameters) has a gap of {100 * gap['improved CNN']:.1f} points and reaches "
                     f"{_pct(imp['test_acc'])} on test.")
    return "\n".join(lines)


def print_table(rows):
    head = (f"{'':14s}{'params':>11s}{'train time':>12s}{'train acc':>11s}{'test acc':>10s}{'gap':>7s}"
            f"   | seeds: {'train acc':>9s}{'test acc':>10s}{'gap':>7s}")
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in rows.items():
        line = (f"{name:14s}{r['params']:>11,}{r['train_seconds'] / 60:>8.1f} min{_pct(r['train_acc']):>11s}"
                f"{_pct(r['test_acc']):>10s}{100 * (r['train_acc'] - r['test_acc']):>7.2f}")
        if name in SEEDS:
            tr, te = SEEDS[name]
            line += f"   |        {_pct(tr):>9s}{_pct(te):>10s}{100 * (tr - te):>7.2f}"
        print(line)


def part_compare(train, test, args):
    from minicnn.viz import plot_history
    rows = {}
    models = [("DNN", mlp_cifar, 1e-3), ("CNN", seed_cnn_cifar, 1e-3)]
    if args.improved:
        models.append(("improved CNN", improved_cnn_cifar, 2e-4))
    for name, build, lr in models:
        minicnn.manual_seed(args.seed)
        model = minicnn.nn.fuse(build())
        rows[name] = train_seed_model(name, model, Adam(model.parameters(), lr=lr), train, test, args)
        slug = name.lower().replace(" ", "_")
        if args.is_main:
            plot_history(rows[name]["history"], args.out / f"compare_{slug}_curves.png",
                         title=f"CIFAR-10, {name} (validation = test set)")
    print_table(rows)
    print("\n" + read_the_gap(rows))
    return rows


# ----------------------------------------------------------------------------- part 2

def channel_stats(images):
    """Per-channel mean and std of uint8 images (N, 3, H, W), on the [0, 1] scale."""
    x = images.astype(np.float64) / 255
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def strong_optimizer(model, steps, batch_size):
    """Nesterov SGD in two groups (BatchNorm shifts at bias_scaler x the lr) and the
    triangular schedule.  The decoupled hyper-parameters of ``STRONG`` become torch-style
    ones for a mean loss: lr = lr_1024·B / (1024·(1 + 1/(1 - momentum))) (the momentum
    factor keeps the average step fixed as momentum changes), and weight_decay = wd / lr
    with wd = weight_decay_1024·B / (same), so each step shrinks the weights by
    wd·(schedule factor) whatever the group's lr."""
    h = STRONG
    kilostep = 1024 * (1 + 1 / (1 - h["momentum"]))
    lr = h["lr"] * batch_size / kilostep
    wd = h["weight_decay"] * batch_size / kilostep
    lr_bias = lr * h["bias_scaler"]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    shifts = [p for n, p in trainable if ".norm" in n]
    others = [p for n, p in trainable if ".norm" not in n]
    optimizer = SGD([{"params": others, "lr": lr, "weight_decay": wd / lr},
                     {"params": shifts, "lr": lr_bias, "weight_decay": wd / lr_bias}],
                    momentum=h["momentum"], nesterov=True)
    start = 0.2
    scheduler = OneCycleLR(optimizer, max_lr=[lr, lr_bias], total_steps=steps, pct_start=h["warmup"],
                           anneal_strategy="linear", cycle_momentum=False, div_factor=1 / start,
                           final_div_factor=start / h["final_lr"])
    return optimizer, scheduler


class AlternatingFlip(Callback):
    """Mirror every image on odd epochs, given training images mirrored at random once
    beforehand (:meth:`premirror`): each image then shows its two sides in alternate
    epochs instead of a coin toss every epoch, so consecutive epochs never repeat a
    view (airbench's alternating flip).  It is a batch transform (``t(x, rng)``) that
    must also be passed as a callback, to learn the epoch."""

    augmentation = True

    def __init__(self):
        self.epoch = 0

    @staticmethod
    def premirror(dataset, rng):
        """A copy of ``dataset`` with a random half of its images mirrored left-right."""
        flip = rng.random(len(dataset)) < 0.5
        images = dataset.images.copy()
        images[flip] = images[flip, ..., ::-1]
        return ArrayDataset(images, dataset.labels, dataset.classes)

    def on_epoch_begin(self, trainer, epoch):
        self.epoch = epoch

    def __call__(self, x, rng=None):
        return np.ascontiguousarray(x[..., ::-1]) if self.epoch % 2 else x


class Lookahead(Callback):
    """Every ``every`` steps, move a slow copy of the weights (and BatchNorm statistics)
    toward the fast ones and restart the fast ones from it:

        slow <- slow + (1 - d)·(fast - slow);  fast <- slow,   d = decay·(step / total)³

    d grows from 0 (plain SGD early on) to ``decay``, so late in training the weights
    average over the last few hundred steps; at the last step d = 1 and the model ends
    on the slow weights.  Lookahead (Zhang et al. 2019) with airbench's schedule."""

    def __init__(self, total_steps, every=5, decay=0.95 ** 5):
        self.total, self.every, self.decay = total_steps, every, decay

    def _arrays(self, model):
        arrays = [p.data for p in model.parameters()]
        return arrays + [b for _, b in model.named_buffers() if np.issubdtype(b.dtype, np.floating)]

    def on_train_begin(self, trainer):
        self.step = 0
        self.slow = [a.copy() for a in self._arrays(trainer.model)]

    def on_batch_end(self, trainer, batch, logs):
        self.step += 1
        if self.step % self.every and self.step < self.total:
            return
        d = 1.0 if self.step >= self.total else self.decay * (self.step / self.total) ** 3
        for slow, fast in zip(self.slow, self._arrays(trainer.model)):
            slow += (1 - d) * (fast - slow)
            fast[...] = slow


def _shift(x, dy, dx):
    """x (N, C, H, W) moved by (dy, dx) pixels, the uncovered border reflected."""
    p = max(abs(dy), abs(dx))
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    H, W = x.shape[2:]
    return np.ascontiguousarray(padded[:, :, p - dy:p - dy + H, p - dx:p - dx + W])


# Test-time views: (weight, shift) pairs, each view also taken mirrored.
TTA_VIEWS = {"none": [(1.0, None)], "flip": [(1.0, (0, 0))],
             "flip-translate": [(0.5, (0, 0)), (0.25, (1, 1)), (0.25, (-1, -1))]}


def tta_logits(model, images, normalize, mode, batch_size=500):
    """Logits (N, 10) of uint8 ``images`` averaged over test-time views: 'none' the image
    alone; 'flip' the image and its mirror; 'flip-translate' adds both shifted one pixel
    diagonally each way (weights 1/2 unshifted, 1/4 per shift), each also mirrored.
    Eval mode, no graph."""
    outs = []
    model.eval()
    with minicnn.no_grad():
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size].astype(np.float32) / 255)
            logits = 0
            for weight, shift in TTA_VIEWS[mode]:
                if shift is None:
                    logits = logits + weight * model(Tensor(x)).data
                    continue
                v = _shift(x, *shift) if shift != (0, 0) else x
                both = model(Tensor(v)).data + model(Tensor(np.ascontiguousarray(v[..., ::-1]))).data
                logits = logits + 0.5 * weight * both
            outs.append(logits)
    return np.concatenate(outs)


def plot_time_accuracy(minutes, acc, final, path, title):
    """Test accuracy after each epoch against cumulative training minutes, the final
    (test-time-augmented) point marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(minutes, 100 * np.asarray(acc), "o-", label="test, after each epoch")
    ax.plot([minutes[-1]], [100 * final], "r*", ms=12, label="final, test-time augmented")
    ax.axhline(90, color="grey", ls="--", lw=1, label="90% target")
    ax.axvline(60, color="grey", ls=":", lw=1, label="60-minute budget")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def part_strong(train, test, args):
    from minicnn.viz import plot_confusion_matrix, plot_history
    h = STRONG
    mean, std = channel_stats(train.images)
    normalize = transforms.Normalize(mean, std)
    flip = AlternatingFlip()
    augment = transforms.Compose([
        flip, transforms.RandomCrop(32, padding=h["translate"], padding_mode="reflect"),
        transforms.ToFloat(), normalize])
    minicnn.manual_seed(args.seed)
    rng = minicnn.random.new_rng()
    model = minicnn.nn.fuse(airnet_cifar(args.widths))
    t0 = time.perf_counter()
    sample = train.images[rng.permutation(len(train))[:5000]]
    model.whiten_(normalize(sample.astype(np.float32) / 255))
    train = AlternatingFlip.premirror(train, rng)
    whiten_seconds = time.perf_counter() - t0
    batch = min(args.strong_batch_size, len(train))
    per_rank = -(-len(train) // args.ranks)                    # images per rank and epoch
    steps = args.strong_epochs * -(-per_rank // (batch // args.ranks))
    optimizer, scheduler = strong_optimizer(model, steps, batch)

    def loss(logits, y):
        return ops.cross_entropy(logits, y, label_smoothing=h["label_smoothing"])

    trainer = Trainer(spread(model, args), train, optimizer, loss=loss, validation_data=test,
                      batch_size=batch // args.ranks, scheduler=scheduler, transform=augment,
                      callbacks=[flip, Lookahead(steps)], seed=args.seed, verbose=0 if args.quiet else 1,
                      strategy=args.strategy)
    print(f"\nStrong recipe: AirNet widths {args.widths}, {sum(p.size for p in model.parameters()):,} "
          f"parameters, {args.strong_epochs} epoch{'s' * (args.strong_epochs > 1)} of batch {batch} "
          f"({steps} steps)")
    history = trainer.fit(args.strong_epochs)
    if not args.is_main:
        return None
    train_seconds = whiten_seconds + float(sum(history["time"]))
    logits = tta_logits(model, test.images, normalize, args.tta)
    pred = logits.argmax(1)
    acc = float(np.mean(pred == test.labels))
    minutes = (whiten_seconds + np.cumsum(history["time"])) / 60
    print(f"\nTraining took {train_seconds / 60:.1f} min ({len(train) * args.strong_epochs / train_seconds:.0f} "
          f"img/s), evaluations excluded")
    print(f"Test accuracy: {_pct(history['val_accuracy'][-1])} plain, {_pct(acc)} with "
          f"{args.tta} test-time augmentation\n")
    print(classification_report(test.labels, pred, test.classes))

    out = args.out
    cm = confusion_matrix(test.labels, pred, len(test.classes))
    saved = [plot_history(history, out / "strong_curves.png", title="CIFAR-10, AirNet (validation = test set)"),
             plot_confusion_matrix(cm, test.classes, out / "strong_confusion_matrix.png"),
             plot_time_accuracy(minutes, history["val_accuracy"], acc, out / "strong_time_accuracy.png",
                                f"CIFAR-10, AirNet {args.widths}, 2 cores"),
             save_model(out / "strong_model.npz", model, {"widths": list(args.widths), "mean": mean.tolist(),
                                                          "std": std.tolist(), "test_acc": acc})]
    print("Saved: " + ", ".join(str(p) for p in saved))
    return {"widths": list(args.widths), "epochs": args.strong_epochs, "batch_size": batch, "steps": steps,
            "train_seconds": train_seconds, "img_per_s": len(train) * args.strong_epochs / train_seconds,
            "test_acc_plain": history["val_accuracy"][-1], "test_acc": acc, "tta": args.tta,
            "minutes": minutes.tolist(), "test_acc_per_epoch": history["val_accuracy"],
            "history": history.history}


def main(argv=None):
    args = parse_args(argv)
    args.strategy, args.ranks, args.is_main = distributed(args)
    train, test = load_data(args)
    print(f"CIFAR-10: {len(train):,} training and {len(test):,} test images")
    results = {"quick": args.quick, "seed": args.seed}
    if args.part in ("compare", "all"):
        results["compare"] = part_compare(train, test, args)
    if args.part in ("strong", "all"):
        results["strong"] = part_strong(train, test, args)
    if args.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"Results: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
