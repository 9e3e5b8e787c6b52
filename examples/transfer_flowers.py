"""Flowers with little data: a CNN from scratch against transfer learning from ImageNet.

    python examples/transfer_flowers.py                          # both tasks, all three methods
    python examples/transfer_flowers.py --task daisy-dandelion --part scratch
    python examples/transfer_flowers.py --part transfer          # (b) and (c) only

Data: 3,000 photos of TensorFlow's flower_photos (500 training and 100 test
images per class), from ``flowers-256.tar.gz`` (``--archive``, default
../shared/datasets), extracted once into the cache dir (~/.cache/minicnn).
Two tasks: all 5 classes, and the seeds' daisy vs dandelion.

(a) **From scratch**, the seeds' CNN on 80x80 images with augmentation (flips,
    rotations, shifts, zoom, colour): Conv 64 - Pool - Conv 32 - Pool -
    Dense 128 - Dropout 0.3 - Dense 32 - Dropout 0.2 - output, Adam.
(b) **Frozen backbone**: EfficientNet-Lite0 pretrained on ImageNet, its
    classifier replaced by GlobalAvgPool - Dense 256 - Dropout 0.5 - Dense,
    trained with Adam and label smoothing 0.1.  The
    backbone's output does not change during training, so it is computed once
    per image (the costly part, shared by both tasks and both steps) and the
    head trains on the cached arrays in seconds.
(c) **Fine-tuning**: then the top ``--finetune-stages`` stages of the backbone
    train too, at a 10x smaller learning rate than the head, their BatchNorm
    layers kept in inference mode.  The cache holds the maps below the top
    ``--cache-stages`` stages; frozen stages above it run forward each epoch.

The tables give test accuracy and time (feature extraction is reported once).
"""
import argparse
import hashlib
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

import minicnn
from minicnn import nn
from minicnn.data import ImageFolder, data_root, extract_archive, transforms
from minicnn.io import load_state, save_state, sha256sum
from minicnn.models.efficientnet import efficientnet_lite0
from minicnn.models.pretrained import efficientnet_lite0_file, efficientnet_lite0_transform
from minicnn.ops import cross_entropy
from minicnn.optim import Adam
from minicnn.train import evaluate, fit
from minicnn.transfer import TransferModel, classifier_head, extract_features, parameter_counts

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flowers-256.tar.gz"
TASKS = {"5-class": None, "daisy-dandelion": ("daisy", "dandelion")}
# The head fits cached features perfectly within a few epochs; label smoothing keeps a
# gradient flowing, which the fine-tuning step (c) needs.
SMOOTHED = partial(cross_entropy, label_smoothing=0.1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("both", *TASKS), default="both")
    p.add_argument("--part", choices=("all", "scratch", "transfer"), default="all")
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="flowers-256.tar.gz")
    p.add_argument("--scratch-epochs", type=int, default=15, help="(a) epochs (default 15)")
    p.add_argument("--head-epochs", type=int, default=30, help="(b) epochs on cached features (default 30)")
    p.add_argument("--finetune-epochs", type=int, default=3, help="(c) epochs (default 3)")
    p.add_argument("--finetune-stages", type=int, default=2,
                   help="(c) top backbone stages to fine-tune, of 18 (default 2: block 15 and the 1x1 top)")
    p.add_argument("--cache-stages", type=int, default=3,
                   help="top stages left out of the cached features (default 3; at least --finetune-stages)")
    p.add_argument("--size", type=int, default=224, help="EfficientNet input size (default 224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/transfer_flowers"),
                   help="folder for the cached backbone features (default runs/transfer_flowers)")
    args = p.parse_args(argv)
    if min(args.scratch_epochs, args.head_epochs, args.finetune_epochs, args.finetune_stages) < 1:
        p.error("epoch and stage counts must be positive")
    if not args.finetune_stages <= args.cache_stages <= 17:
        p.error("--cache-stages must be in --finetune-stages..17")
    return args


# ------------------------------------------------------------------------ data
def flowers_root(archive):
    """The extracted ``flowers/`` folder in the cache dir, extracting the archive the first time."""
    root = data_root() / "flowers"
    if not (root / "train").is_dir():
        if not archive.is_file():
            sys.exit(f"no flowers archive at {archive} (pass --archive PATH/flowers-256.tar.gz)")
        print(f"extracting {archive} into {data_root()} ...", flush=True)
        extract_archive(archive, data_root())
    return root


def task_subset(images, labels, names, wanted):
    """(images, labels, class names) restricted to the classes ``wanted`` (None: all), relabelled 0..k-1."""
    if wanted is None:
        return images, labels, list(names)
    ids = [list(names).index(c) for c in wanted]
    keep = np.isin(labels, ids)
    relabel = np.zeros(len(names), np.int64)
    relabel[ids] = np.arange(len(ids))
    return images[keep], relabel[labels[keep]], list(wanted)


def tasks(args):
    return list(TASKS) if args.task == "both" else [args.task]


# ------------------------------------------------------------------------ (a) from scratch
def seed_flower_cnn(num_classes):
    """The seeds' flower CNN for 80x80 RGB (80 -> 40 -> 20 spatially); 1,663,077 parameters for 5 classes."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 32, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 20 * 20, 128), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(128, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, num_classes))


def from_scratch(args, root):
    train, test = ImageFolder(root / "train", size=80, cache=True), ImageFolder(root / "test", size=80, cache=True)
    augment = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.85, 1.15)),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        transforms.ToFloat()])
    rows = {}
    for task in tasks(args):
        x, y, classes = task_subset(train.images, train.labels, train.classes, TASKS[task])
        xt, yt, _ = task_subset(test.images, test.labels, test.classes, TASKS[task])
        minicnn.manual_seed(args.seed)
        model = seed_flower_cnn(len(classes))
        print(f"\n(a) {task}: seed CNN from scratch, {parameter_counts(model)[1]:,} parameters, "
              f"{len(y):,} training images at 80x80, {args.scratch_epochs} epochs", flush=True)
        start = time.perf_counter()
        fit(model, (x, y), epochs=args.scratch_epochs, optimizer=Adam(model.parameters(), lr=1e-3),
            batch_size=32, transform=augment, seed=args.seed)
        seconds = time.perf_counter() - start
        acc = evaluate(model, (xt, yt))["accuracy"]
        print(f"(a) {task}: test accuracy {100 * acc:.2f}% after {seconds:.0f} s", flush=True)
        rows[task] = [("(a) seed CNN from scratch, 80x80, augmented", acc, seconds)]
    return rows


# ------------------------------------------------------------------------ (b), (c) transfer
def features_key(weights, datasets):
    """12 hex digits of a sha256 over the weights file and the datasets' content keys: new
    weights or changed images, new cache file."""
    keys = [sha256sum(weights)] + [ds.content_key for ds in datasets]
    return hashlib.sha256("\0".join(keys).encode()).hexdigest()[:12]


def backbone_maps(args, root, bottom, k, weights):
    """Outputs of the frozen ``bottom`` stages for every train and test image, computed once and
    kept in ``args.out`` (a later run with the same settings, weights and images reads them back)."""
    data = {split: ImageFolder(root / split, size=args.size, cache=True) for split in ("train", "test")}
    cache = args.out / f"lite0-{args.size}px-top{k}-{features_key(weights, data.values())}.npz"
    if cache.is_file():
        state = load_state(cache, kind="features")
        print(f"read cached backbone features {cache}", flush=True)
        return {s: tuple(state[s]) for s in data}, state["classes"], 0.0
    out, seconds = {}, 0.0
    for split, ds in data.items():
        print(f"extracting EfficientNet-Lite0 features of {len(ds):,} {split} images "
              f"({args.size}x{args.size}, {len(bottom)} frozen stages) ...", flush=True)
        start = time.perf_counter()
        maps = extract_features(bottom, ds, batch_size=32, transform=efficientnet_lite0_transform())
        seconds += time.perf_counter() - start
        out[split] = (maps, ds.labels)
        classes = ds.classes
    save_state(cache, {"classes": classes, **out}, kind="features")
    print(f"feature extraction: {seconds:.0f} s for {sum(len(v[1]) for v in out.values()):,} images "
          f"({out['train'][0].shape[1:]} each)", flush=True)
    return out, classes, seconds


def transfer(args, root):
    weights = efficientnet_lite0_file()
    net = minicnn.nn.fuse(efficientnet_lite0(pretrained=weights, num_classes=0))
    stages, k = net.stages(), args.finetune_stages
    cut = len(stages) - args.cache_stages
    bottom, top = stages[:cut], stages[cut:]
    maps, classes, extract_seconds = backbone_maps(args, root, bottom, args.cache_stages, weights)
    pretrained_top = top.state_dict()
    rows = {}
    for task in tasks(args):
        x, y, names = task_subset(*maps["train"], classes, TASKS[task])
        xt, yt, _ = task_subset(*maps["test"], classes, TASKS[task])
        top.load_state_dict(pretrained_top)  # each task starts from the ImageNet weights
        minicnn.manual_seed(args.seed)
        model = TransferModel(top, classifier_head(1280, len(names), hidden=256, dropout=0.5),
                              bn_eval="all").freeze_backbone()

        # (b) the head alone, on pooled features computed once from the cached maps
        prefix, rest = model.split()
        start = time.perf_counter()
        f, ft = extract_features(prefix, (x, y)), extract_features(prefix, (xt, yt))
        print(f"\n(b) {task}: head ({parameter_counts(rest)[0]:,} parameters) on cached "
              f"{f.shape[1:]} features of {len(y):,} images, {args.head_epochs} epochs", flush=True)
        fit(rest, (f, y), epochs=args.head_epochs, optimizer=Adam(rest.parameters(), lr=1e-3), loss=SMOOTHED,
            batch_size=32, seed=args.seed, verbose=0)
        seconds_b = time.perf_counter() - start
        acc_b = evaluate(rest, (ft, yt))["accuracy"]
        print(f"(b) {task}: test accuracy {100 * acc_b:.2f}% after {seconds_b:.1f} s", flush=True)

        # (c) the top stages too, slower than the head; what is still frozen is cached again
        model.unfreeze_top(k)
        prefix, rest = model.split()
        start = time.perf_counter()
        m, mt = extract_features(prefix, (x, y)), extract_features(prefix, (xt, yt))
        print(f"(c) {task}: fine-tuning the top {k} stages and the head ({parameter_counts(rest)[0]:,} "
              f"parameters) on cached {m.shape[1:]} maps, {args.finetune_epochs} epochs", flush=True)
        optimizer = Adam(rest.param_groups(lr=1e-4, backbone_lr=1e-5))
        fit(rest, (m, y), epochs=args.finetune_epochs, optimizer=optimizer, loss=SMOOTHED, batch_size=32,
            seed=args.seed)
        seconds_c = time.perf_counter() - start
        acc_c = evaluate(rest, (mt, yt))["accuracy"]
        print(f"(c) {task}: test accuracy {100 * acc_c:.2f}% after {seconds_c:.0f} s more", flush=True)
        rows[task] = [("(b) EfficientNet-Lite0 frozen + new head (cached features)", acc_b, seconds_b),
                      (f"(c) + fine-tune top {k} stages at lr/10", acc_c, seconds_b + seconds_c)]
    return rows, extract_seconds


def main(argv=None):
    args = parse_args(argv)
    root = flowers_root(args.archive)
    rows = {task: [] for task in tasks(args)}
    extract_seconds = None
    if args.part in ("all", "scratch"):
        for task, r in from_scratch(args, root).items():
            rows[task] += r
    if args.part in ("all", "transfer"):
        found, extract_seconds = transfer(args, root)
        for task, r in found.items():
            rows[task] += r
    for task, results in rows.items():
        print(f"\n{task} ({'5 classes' if TASKS[task] is None else ' vs '.join(TASKS[task])}): test accuracy\n")
        print("| method | test accuracy | training time |")
        print("|---|---|---|")
        for what, acc, seconds in results:
            print(f"| {what} | {100 * acc:.2f}% | {seconds:.0f} s |")
    if extract_seconds:
        print(f"\n(b) and (c) share one pass of the frozen backbone over all 3,000 images: "
              f"{extract_seconds:.0f} s, not counted above.")


if __name__ == "__main__":
    main()
