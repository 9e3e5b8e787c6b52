"""Look inside a CNN: activation statistics, gradient norms, filters, feature maps,
and what weight initialisation does to a deep stack.

    python examples/layer_internals.py               # with 300 training steps (most of the time)
    python examples/layer_internals.py --steps 0     # no training: the CNN as initialised

What it does (figures go to ``--out``, default runs/layer_internals):

1. draws which axes batch, layer, instance and group norm reduce over
   (norm_axes.png);
2. runs a batch through a plain 20-layer stack of 3x3 conv + ReLU twice, with
   Kaiming init and with N(0, 0.01²) weights, and prints the std of every
   ReLU's output side by side: roughly constant with Kaiming, collapsing by a
   factor ~0.12 per layer with the naive init (init_depth.png);
3. on Fashion-MNIST test images, prints the per-layer table (output shape, mean,
   std, fraction of zeros) and the gradient norm of every parameter of the
   batch-norm CNN from minicnn.models, before and after ``--steps`` steps of
   Adam (activation_stats_before.png / _after.png);
4. draws the first conv layer's filters and one image's feature maps through
   each conv layer (filters.png, feature_maps.png).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import minicnn
from minicnn import internals, ops
from minicnn.data import DownloadError, FashionMNIST
from minicnn.models import fashion_cnn_bn
from minicnn.optim import Adam
from minicnn.random import new_rng


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="Adam steps of batch 64 before the second look (300)")
    p.add_argument("--batch", type=int, default=256, help="images in the inspected batch (256)")
    p.add_argument("--seed", type=int, default=0, help="seed for init and sampling (0)")
    p.add_argument("--out", type=Path, default=Path("runs/layer_internals"), help="folder for the PNGs")
    return p.parse_args(argv)


def as_input(images):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return (images.astype(np.float32) / 255)[:, None]


def train(model, data, steps, seed):
    optimizer = Adam(model.parameters(), lr=1e-3)
    rng = new_rng(seed)
    model.train()
    for step in range(steps):
        idx = rng.integers(0, len(data), 64)
        loss = ops.cross_entropy(model(minicnn.tensor(as_input(data.images[idx]))), data.labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}: loss {loss.item():.3f}")


def main(argv=None):
    args = parse_args(argv)
    from minicnn import viz  # matplotlib, only when drawing

    minicnn.manual_seed(args.seed)
    out = args.out
    saved = [viz.plot_norm_axes(out / "norm_axes.png")]

    print("Activation std after each ReLU of a 20-layer 3x3 conv stack (32 channels, no bias):\n")
    columns = internals.init_depth_study(depth=20, seed=args.seed)
    print(internals.format_columns(columns, index="ReLU"))
    saved.append(viz.plot_depth_study(columns, out / "init_depth.png"))

    try:
        train_set, test_set = FashionMNIST(train=True), FashionMNIST(train=False)
    except (DownloadError, FileNotFoundError) as e:
        print("\nSaved: " + ", ".join(map(str, saved)))
        sys.exit(f"Fashion-MNIST is not available, so the CNN part is skipped ({e})")
    model = fashion_cnn_bn()
    x, y = as_input(test_set.images[:args.batch]), test_set.labels[:args.batch]
    looks = [("before", 0), ("after", args.steps)] if args.steps else [("at init", 0)]
    for label, steps in looks:
        if steps:
            print(f"\nTraining for {steps} steps of 64 images ...")
            train(model, train_set, steps, args.seed)
        model.eval()  # batch norm with running statistics, dropout off: the model as used
        report = internals.inspect(model, x, ops.cross_entropy, y)
        print(f"\nFashion-MNIST CNN {label} training, on {len(y)} test images:\n")
        print(report)
        saved.append(viz.plot_activation_stats(report, out / f"activation_stats_{label.replace(' ', '_')}.png"))

    saved += [viz.plot_filters(model[0], out / "filters.png"),
              viz.plot_feature_maps(model, x[0], out / "feature_maps.png")]
    print("\nSaved: " + ", ".join(map(str, saved)))


if __name__ == "__main__":
    main()
