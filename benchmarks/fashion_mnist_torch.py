"""The PyTorch twin of examples/fashion_mnist.py: the same run, trained by PyTorch.

    python benchmarks/fashion_mnist_torch.py [--threads N] [the example's options]

``benchmarks/end_to_end.py`` times it side by side with the example.  It does the
example's work, with PyTorch doing the training:

* options: the example's own parser (``--epochs``, ``--batch-size``, ``--lr``,
  ``--seed``, ``--out``, ``--quick``, ``--data-dir``, ``--quiet``), plus ``--threads``
  (``torch.set_num_threads``) and ``--memory-format`` (``contiguous``, torch's default,
  or ``channels_last``: model and every input batch converted).  Models ``basic`` and
  ``bn``; ``strong`` (augmentation, one-cycle schedule) and ``--distributed`` are not
  twinned;
* data: the example's ``load_data``, and the loaders a minicnn ``Trainer`` builds with
  the same seed: the same stratified 20% validation split, the same shuffle every epoch.
  Batches come from minicnn's DataLoader in this process (NumPy indexing of the uint8
  images and one float32 scale per batch, no worker processes, as in the example),
  handed to torch by ``torch.from_numpy`` without a copy;
* model: the torch twin of the example's model (``train_throughput.torch_twin``) with
  the minicnn model's initial weights, so both runs start from the same point;
* per epoch: ``torch.optim.Adam`` steps with the running training loss and accuracy, a
  validation pass (eval mode, no graph, batches of 256), then the example's callbacks
  in its order: the best weights saved (``best.pt``, torch's format) when validation
  accuracy improves, a row of ``history.csv``, early stopping on validation accuracy
  (patience 4, best weights restored at the end) and ``torch.optim.lr_scheduler.
  ReduceLROnPlateau`` on validation loss (factor 0.3, min 1e-5); one progress line per
  epoch, drawn by minicnn's ProgressBar so that the two runs' lines read alike;
* afterwards: test logits in batches of 256, then the example's own ``report`` (test
  accuracy, classification report, three plots) on the NumPy results.

The lines ``Training took S s for E epochs`` and ``Test accuracy: A (C/N)`` are the ones
``end_to_end.py`` reads from both programs; from this one also whether minicnn's malloc
settings were in force (``train_throughput.malloc_tuned``, probed before any work).
"""
import argparse
import copy
import csv
import importlib.util
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import minicnn
from minicnn.data import DataLoader
from minicnn.models import FASHION_MODELS
from minicnn.optim import Adam
from minicnn.train import History, Trainer
from minicnn.train.progress import ProgressBar

from harness import ROOT
from train_throughput import TORCH_FORMATS, in_memory_format, malloc_tuned, torch_twin

EVAL_BATCH = 256       # the example's validation and prediction batches
TWINNED = ("basic", "bn")


def load_example():
    """examples/fashion_mnist.py as a module (its parser and data loading are used as they are)."""
    spec = importlib.util.spec_from_file_location("fashion_mnist_example",
                                                  os.path.join(ROOT, "examples", "fashion_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(example, argv=None):
    """(the example's parsed options, this program's own: threads, memory_format); exits naming
    what the twin does not do."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--memory-format", choices=TORCH_FORMATS, default="contiguous")
    own, rest = p.parse_known_args(argv)
    args = example.parse_args(rest)
    unsupported = ([f"--model {args.model}"] if args.model not in TWINNED else []) + [
        f"--{name}" for name in ("augment", "distributed") if getattr(args, name)]
    if unsupported:
        sys.exit(f"{__file__}: the torch twin runs models {', '.join(TWINNED)} without augmentation on one "
                 f"process; got {' '.join(unsupported)}")
    if own.threads is not None and own.threads < 1:
        sys.exit(f"{__file__}: --threads must be positive, got {own.threads}")
    return args, own


def build_models(name, seed, memory_format="contiguous"):
    """(minicnn model as the example builds it, its torch twin with the same weights in
    ``memory_format``, the function making that twin's input tensor from an ndarray)."""
    minicnn.manual_seed(seed)
    torch.manual_seed(seed)   # dropout's stream in the bn model
    model = minicnn.nn.fuse(FASHION_MODELS[name]())
    return (model, *in_memory_format(torch_twin(model), memory_format))


def example_loaders(model, train, args):
    """(train, validation) loaders of the example's Trainer: built by one, so that the split
    and the shuffle of every epoch cannot drift from the example's."""
    trainer = Trainer(model, train, Adam(model.parameters()), validation_split=0.2, batch_size=args.batch_size,
                      seed=args.seed, verbose=0)
    return trainer.train_loader, trainer.val_loader


def evaluate(twin, tensor, loader):
    """(mean loss, accuracy) of ``twin`` over ``loader``, in eval mode without a graph."""
    twin.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for x, y in loader:
            logits, y = twin(tensor(x)), torch.from_numpy(y)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    n = len(loader.labels)
    return loss / n, correct / n


def train_epoch(twin, tensor, optimizer, loader, bar):
    """One pass over ``loader``; returns ({'loss', 'accuracy'} running means, images, seconds)."""
    twin.train()
    loss_sum = correct = seen = 0
    start = time.perf_counter()
    for b, (x, y) in enumerate(loader):
        x, y = tensor(x), torch.from_numpy(y)
        logits = twin(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n = len(y)
        seen += n
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        bar.update(b + 1, seen, {"loss": loss_sum / seen, "accuracy": correct / seen})
    return {"loss": loss_sum / seen, "accuracy": correct / seen}, seen, time.perf_counter() - start


def training_setup(twin, args):
    """(optimizer, plateau scheduler): built before the clock starts, as the example builds its own
    (torch's first optimizer imports torch._dynamo, over a second, which the wall time still counts)."""
    optimizer = torch.optim.Adam(twin.parameters(), lr=args.lr or 1e-3)
    # Keras (and minicnn) reduce after `patience` epochs without improvement, torch after
    # more than `patience`: torch's patience 1 is the example's 2.  min_delta 1e-4 is absolute.
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.3, patience=1, threshold=1e-4,
                                                         threshold_mode="abs", min_lr=1e-5)
    return optimizer, plateau


def fit(twin, tensor, optimizer, plateau, train_loader, val_loader, args):
    """The example's training run in torch; returns the History (best weights restored)."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    history, best, best_epoch, best_state, wait = History(), -math.inf, None, None, 0
    log = out / "history.csv"
    with open(log, "w", newline="") as f:
        writer = csv.writer(f)
        for epoch in range(args.epochs):
            lr = optimizer.param_groups[0]["lr"]
            bar = ProgressBar(f"Epoch {epoch + 1}/{args.epochs}", len(train_loader), enabled=not args.quiet)
            logs, seen, seconds = train_epoch(twin, tensor, optimizer, train_loader, bar)
            logs["val_loss"], logs["val_accuracy"] = evaluate(twin, tensor, val_loader)
            logs["lr"], logs["time"] = lr, seconds
            bar.finish(len(train_loader), seen, seconds, {**logs, "lr": (lr,)})
            history.append(epoch, logs)
            improved = logs["val_accuracy"] > best
            if improved:   # checkpoint and early stopping watch the same quantity
                best, best_epoch, wait = logs["val_accuracy"], epoch, 0
                best_state = copy.deepcopy(twin.state_dict())
                torch.save(best_state, out / "best.pt")
            if epoch == 0:
                writer.writerow(["epoch", *sorted(logs)])
            writer.writerow([epoch + 1, *(repr(float(logs[k])) for k in sorted(logs))])
            f.flush()
            wait += not improved
            stop = wait >= 4
            if stop and not args.quiet:
                print(f"EarlyStopping: val_accuracy has not improved on {best:.4f} (epoch {best_epoch + 1}) "
                      f"for {wait} epochs; stopping after epoch {epoch + 1}")
            plateau.step(logs["val_loss"])
            if optimizer.param_groups[0]["lr"] < lr and not args.quiet:
                print(f"ReduceLROnPlateau: epoch {epoch + 1}: learning rate {lr:.3g} -> "
                      f"{optimizer.param_groups[0]['lr']:.3g}")
            if stop:
                break
    twin.load_state_dict(best_state)
    return history


def predict(twin, tensor, images):
    """Test logits, batches of 256, as a NumPy array."""
    twin.eval()
    with torch.no_grad():
        return np.concatenate([twin(tensor(x)).numpy() for x, _ in DataLoader(
            (images, np.zeros(len(images), np.int64)), batch_size=EVAL_BATCH)])


def main(argv=None):
    tuned = malloc_tuned()   # first: freeing large blocks (data loading) would raise glibc's own threshold
    example = load_example()
    args, own = parse_args(example, argv)
    if own.threads is not None:
        torch.set_num_threads(own.threads)
    train, test = example.load_data(args)
    model, twin, tensor = build_models(args.model, args.seed, own.memory_format)
    train_loader, val_loader = example_loaders(model, train, args)
    print(twin)
    print(f"Total params: {sum(p.numel() for p in twin.parameters()):,} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {own.memory_format}, malloc tuned: {tuned})")
    print(f"\nTraining {args.model} (torch) on {len(train_loader.labels):,} images, validating on "
          f"{len(val_loader.labels):,}, for {args.epochs} epoch{'s' * (args.epochs > 1)} of batch {args.batch_size}")
    optimizer, plateau = training_setup(twin, args)
    start = time.perf_counter()
    history = fit(twin, tensor, optimizer, plateau, train_loader, val_loader, args)
    seconds = time.perf_counter() - start

    pred = predict(twin, tensor, test.images).argmax(axis=1)
    return example.report(history, seconds, test, pred, args.out, f"{args.model} CNN (torch)", args.out / "best.pt")


if __name__ == "__main__":
    main()
