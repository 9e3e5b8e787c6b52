"""Pretrained CIFAR-10 ResNets on the JPEG copy of CIFAR-10: a domain shift, and how to recover.

    python examples/cifar_pretrained.py                    # evaluate all four, then fine-tune ResNet-20
    python examples/cifar_pretrained.py --part evaluate    # only the table of the four networks
    python examples/cifar_pretrained.py --part finetune --epochs 2
    python examples/cifar_pretrained.py --part evaluate --limit 200   # a quick look at 200 images

The weights (github.com/akamaster/pytorch_resnet_cifar10, read from
``--weights``, default ../shared/weights/cifar10-resnet) were trained on the
original CIFAR-10 images.  The CIFAR-10 copy here was rebuilt from JPEGs
(quality ~75), and these networks never saw JPEG artifacts: they lose about ten
points -- train in factory A, test in factory B.

1. **evaluate**: ResNet-20/32/44/56 on the 10,000 JPEG test images, inputs
   normalized as in training (ImageNet mean/std), beside the published accuracy
   and a PyTorch reference measured on the same JPEG copy.
2. **finetune**: two ways to adapt ResNet-20 to the new domain:
   (a) re-estimate only the BatchNorm statistics on JPEG training images,
       augmented as in training (forward passes, no gradient; the cheapest
       adaptation there is);
   (b) fine-tune all weights on the 50,000 JPEG training images for a short
       run (SGD with Nesterov momentum, weight decay 5e-4, flip + pad-4 crop,
       a cosine schedule from ``--lr`` per batch).
   Prints the before/after table with times.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn import nn
from minicnn.data import CIFAR10, transforms
from minicnn.models.pretrained import cifar_resnet_transform
from minicnn.models.resnet_cifar import resnet20, resnet32, resnet44, resnet56
from minicnn.optim import SGD, CosineAnnealingLR
from minicnn.train import evaluate, fit

MODELS = {"resnet20": resnet20, "resnet32": resnet32, "resnet44": resnet44, "resnet56": resnet56}
PUBLISHED = {"resnet20": 91.73, "resnet32": 92.63, "resnet44": 93.10, "resnet56": 93.39}
TORCH_ON_JPEG = {"resnet20": 81.0, "resnet32": 82.6, "resnet44": 82.7, "resnet56": 83.2}
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "cifar10-resnet"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "evaluate", "finetune"), default="all")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                   help="folder with resnetNN-<hash>.th (default ../shared/weights/cifar10-resnet)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--lr", type=float, default=0.02, help="fine-tuning peak learning rate (default 0.02)")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size (default 128)")
    p.add_argument("--bn-images", type=int, default=10000,
                   help="training images for the BatchNorm re-estimation (default 10,000)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N images of each split (default: all; for a quick run)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.bn_images < 1:
        p.error("--epochs, --batch-size and --bn-images must be positive")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be positive")
    return args


def load_split(train, limit=None):
    """The CIFAR-10 split from the cache dir, its first ``limit`` images if given."""
    try:
        data = CIFAR10(train=train, download=False)
    except FileNotFoundError as e:
        sys.exit(f"{e}\nBuild the JPEG copy with: python ../shared/datasets/make_cifar10_bin.py ~/.cache/minicnn")
    return data if limit is None else data[:limit]


def test_accuracy(model, test):
    """(accuracy in %, seconds) on the test set, inputs normalized for the pretrained nets."""
    start = time.perf_counter()
    acc = evaluate(model, test, transform=cifar_resnet_transform())["accuracy"]
    return 100 * acc, time.perf_counter() - start


def evaluate_all(args, test):
    print(f"Pretrained CIFAR-10 ResNets on the {len(test):,} JPEG test images\n")
    print("| model | published (original images) | PyTorch ref. (JPEG copy) | minicnn (JPEG copy) | time |")
    print("|---|---|---|---|---|")
    for name, build in MODELS.items():
        acc, seconds = test_accuracy(build(pretrained=args.weights), test)
        print(f"| {name} | {PUBLISHED[name]:.2f}% | {TORCH_ON_JPEG[name]:.1f}% | {acc:.2f}% | {seconds:.0f} s |",
              flush=True)


def train_transform():
    """The augmentation the networks were trained with: flip, pad-4 random crop, normalization."""
    return transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4),
                               cifar_resnet_transform()])


def reestimate_batchnorm(model, images, rng, batch_size=250):
    """Replace every BatchNorm's running statistics by their average over ``images``, augmented
    as in training (the zero borders of pad-4 crops are part of the statistics the network
    learned with); train-mode forward passes without a graph, no weight changes."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    tf = train_transform()
    model.train()
    with minicnn.no_grad():
        for i in range(0, len(images), batch_size):
            model(minicnn.Tensor(tf(images[i:i + batch_size], rng)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def finetune(args, train, test):
    rows = []
    model = minicnn.nn.fuse(resnet20(pretrained=args.weights))
    acc, _ = test_accuracy(model, test)
    rows.append(("pretrained on the original images", acc, "-"))

    rng = np.random.default_rng(args.seed)
    bn_images = min(args.bn_images, len(train))
    pick = rng.choice(len(train), bn_images, replace=False)
    start = time.perf_counter()
    reestimate_batchnorm(model, train.images[pick], rng)
    seconds = time.perf_counter() - start
    acc, _ = test_accuracy(model, test)
    rows.append((f"(a) BatchNorm statistics re-estimated on {bn_images:,} JPEG train images", acc,
                 f"{seconds:.0f} s"))
    print(f"(a) BatchNorm re-estimation: {acc:.2f}% in {seconds:.0f} s", flush=True)

    model = minicnn.nn.fuse(resnet20(pretrained=args.weights))
    minicnn.manual_seed(args.seed)
    optimizer = SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = args.epochs * -(-len(train) // args.batch_size)
    scheduler = CosineAnnealingLR(optimizer, T_max=steps)
    scheduler.interval = "batch"
    transform = train_transform()
    print(f"(b) fine-tuning ResNet-20 on {len(train):,} JPEG training images for {args.epochs} "
          f"epoch{'s' * (args.epochs > 1)}", flush=True)
    start = time.perf_counter()
    fit(model, train, epochs=args.epochs, optimizer=optimizer, scheduler=scheduler,
        batch_size=args.batch_size, transform=transform, seed=args.seed)
    seconds = time.perf_counter() - start
    acc, _ = test_accuracy(model, test)
    rows.append((f"(b) fine-tuned {args.epochs} epoch{'s' * (args.epochs > 1)} on the JPEG train set", acc,
                 f"{seconds:.0f} s ({len(train) * args.epochs / seconds:.0f} img/s)"))

    print("\nResNet-20 on the JPEG test set (published 91.73% on the original test set)\n")
    print("| ResNet-20 | test accuracy | time |")
    print("|---|---|---|")
    for what, acc, t in rows:
        print(f"| {what} | {acc:.2f}% | {t} |")


def main(argv=None):
    args = parse_args(argv)
    if not args.weights.is_dir():
        sys.exit(f"no weights folder {args.weights} (pass --weights DIR with resnetNN-<hash>.th files)")
    test = load_split(train=False, limit=args.limit)
    if args.part in ("all", "evaluate"):
        evaluate_all(args, test)
        print()
    if args.part in ("all", "finetune"):
        finetune(args, load_split(train=True, limit=args.limit), test)


if __name__ == "__main__":
    main()
