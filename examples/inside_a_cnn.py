"""Look inside a CNN: where it looks (Grad-CAM, saliency) and what its layers do while it trains.

    python examples/inside_a_cnn.py                 # all three parts: 2-4 minutes on 2 shared cores
    python examples/inside_a_cnn.py --part monitor  # only the deep-net training (part 3)
    python examples/inside_a_cnn.py --quick         # tiny settings, seconds (a smoke test)

Figures go to ``--out`` (default runs/inside_a_cnn).

1. **CIFAR-10 ResNet-20** with the published weights (``--weights``, default
   ../shared/weights/cifar10-resnet) on one test image of each of the first six
   classes of the local CIFAR-10 copy (cifar_grad_cam.png).  Columns: Grad-CAM at
   ``layer3`` (8x8, the last stage) and at ``layer2`` (16x16), then three saliency
   maps of the predicted class: the plain gradient, SmoothGrad (50 noisy copies,
   σ = 15% of the range) and integrated gradients (baseline: the mean image, 0 after
   normalization; 128 steps).  What to see: Grad-CAM at layer3 is one coarse blob
   on the object -- the aeroplane's fuselage, the car's body, the bird, the cat's
   open mouth, the deer's head and neck, the dog's face -- and not on the sky,
   road or grass.  At layer2 the map is finer but no longer about the class: it
   lights up edges and parts, and for the aeroplane and the deer mostly the
   background around them.  The plain gradient is speckle spread over the whole
   image with a faint concentration on the object (and a grid from the stride-2
   convolutions); SmoothGrad is a little more concentrated (the dog's nose, the
   car's grille); integrated gradients are the sparsest, on the object's edges
   and a few strong features.  The printed completeness gap of integrated
   gradients (|Σ attributions - Δscore| / |Δscore|) is a few percent at most: a
   ReLU network's kinks make the quadrature converge only as 1/steps.
2. **Fashion-MNIST CNN** (the classic 2-conv net, trained for ``--fashion-steps``
   Adam steps: ~89% test accuracy) on six test images (fashion_grad_cam.png):
   Grad-CAM at the second conv block (14x14) and the same three saliency maps.
   What to see: Grad-CAM looks at the *background around* the garment, where the
   silhouette tells one class from its look-alikes: the gap between the trouser
   legs, the empty space beside a T-shirt's body where long sleeves would be (what
   separates it from a shirt or pullover), the gaps under a shirt's long sleeves,
   the space above a bag (a handle?), above a sneaker (no shaft: not a boot) and
   along the slope from a boot's toe to its shaft.  The network has learned shapes, and a
   shape is as much where the ink is not.  The gradient and SmoothGrad maps follow
   the outline, inside and out; integrated gradients with a black baseline give
   the black background exactly nothing (x - x' = 0 there) and sit on the
   garment's edges.  fashion_feature_maps.png: one image through both conv layers
   (outputs before the ReLU, one shared colour scale per layer, the bar at the
   row's end): the first layer copies the silhouette with either sign and picks
   out its left, right, top edges; the second responds to longer vertical edges.
   fashion_filters.png: the 32 first-layer 3x3 filters on one blue-white-red scale
   (white = 0), most of them still close to their random He initialization after
   one short epoch.
3. **A deep plain CNN with and without batch norm** (12 conv layers of 16
   channels, weights drawn from N(0, 0.01²), the pre-2015 habit; the same seed,
   data and SGD with momentum for both), recorded by LayerMonitor every 10 steps
   (layer_monitor.png with four quantities, layer_monitor_std_grad.png with two:
   layers top to bottom, input side first; training steps left to right; one
   colour scale per quantity shared by both runs; black = exactly 0).  What to see:
   without batch norm, at step 0 the activation std falls by ~10x per conv layer
   (1e-13 near the top), and the gradient norms *vanish toward the input*: ~1e-2 at
   the last conv, ~1e-13 at the first.  The update/weight ratios are 1e-17 to 1e-5,
   nowhere near the ~1e-3 of a layer that learns (and exactly 0 after ~200 steps,
   when the momentum's fading steps drop below the float32 resolution of the
   weights).  Within ~30 steps the last ReLUs
   switch off for every input (fraction of zeros -> 1, the pooled output black):
   from then on no gradient reaches any conv layer (black), only the linear head
   learns the class prior, and the loss stays at ln 10 = 2.30.  With batch norm the
   same init trains: activation std ~1 at every depth throughout, half of each
   ReLU's units off (fraction of zeros ~0.5, none dead), gradient norms 1e-2 to 1 at
   every depth and update ratios ~1e-3 to 1e-2; the loss falls (printed).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn import internals, nn
from minicnn.data import CIFAR10, DownloadError, FashionMNIST
from minicnn.models import fashion_cnn
from minicnn.models.pretrained import CIFAR_RESNET_MEAN, CIFAR_RESNET_STD, load_cifar_resnet
from minicnn.optim import SGD, Adam
from minicnn.train import evaluate, fit
from minicnn.train.callbacks import LayerMonitor

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "cifar10-resnet"
FASHION_CLASSES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "cifar", "fashion", "monitor"), default="all")
    p.add_argument("--out", type=Path, default=Path("runs/inside_a_cnn"), help="folder for the PNGs")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="folder with resnet20-<hash>.th")
    p.add_argument("--images", type=int, default=6, help="images per attribution figure (6)")
    p.add_argument("--fashion-steps", type=int, default=600, help="Adam steps of 64 for the Fashion CNN (600)")
    p.add_argument("--steps", type=int, default=400, help="SGD steps of 64 for each deep CNN (400)")
    p.add_argument("--depth", type=int, default=12, help="conv layers of the deep CNN (12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    args = p.parse_args(argv)
    args.ig_steps, args.samples = (128, 50)
    if args.quick:
        args.images, args.fashion_steps, args.steps, args.depth = 2, 5, 6, 3
        args.ig_steps, args.samples = 8, 4
    return args


def attributions(model, x, layers, steps, samples):
    """Grad-CAM at each of ``layers`` (name -> title) and the three saliency maps of the
    predicted class (``steps`` for integrated gradients, ``samples`` for SmoothGrad)."""
    maps = {title: internals.grad_cam(model, x, name) for name, title in layers.items()}
    for method, title in (("gradient", "gradient"), ("smoothgrad", "SmoothGrad"),
                          ("integrated_gradients", "integrated grad.")):
        a = internals.saliency(model, x, method=method, steps=steps, samples=samples)
        maps[title] = a.map()
        if a.completeness_error is not None:
            print(f"  integrated gradients ({steps} steps): completeness gap |Σ attr - Δscore| / |Δscore| = "
                  + ", ".join(f"{e:.1%}" for e in a.completeness_error))
    return maps


def captions(model, x, labels, names):
    pred = evaluate_logits(model, x).argmax(1)
    return [names[t] if t == p else f"{names[t]} → {names[p]}" for t, p in zip(labels, pred)]


def evaluate_logits(model, x):
    model.eval()
    with minicnn.no_grad():
        return model(minicnn.tensor(x)).data


def cifar_part(args, viz):
    try:
        test = CIFAR10(train=False, download=False)
    except (FileNotFoundError, DownloadError) as e:
        print(f"CIFAR-10 part skipped: no local copy ({e}).\n  Build it with: "
              "python ../shared/datasets/make_cifar10_bin.py ~/.cache/minicnn")
        return []
    try:
        model = load_cifar_resnet("resnet20", args.weights)
    except FileNotFoundError as e:
        print(f"CIFAR-10 part skipped: {e}")
        return []
    # one image of each of the first classes, from a fixed stretch of the test set
    picks = [int(np.flatnonzero(test.labels == c)[3]) for c in range(args.images)]
    shown = test.images[picks].astype(np.float32) / 255
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (CIFAR_RESNET_MEAN, CIFAR_RESNET_STD))
    x = (shown - mean) / std
    print(f"\n1. CIFAR-10 ResNet-20 on {len(x)} test images")
    maps = attributions(model, x, {"layer3": "Grad-CAM layer3 (8x8)", "layer2": "Grad-CAM layer2 (16x16)"},
                        args.ig_steps, args.samples)
    rows = captions(model, x, test.labels[picks], test.classes)
    return [viz.plot_attributions(shown, maps, args.out / "cifar_grad_cam.png", row_labels=rows)]


def load_fashion():
    try:
        return FashionMNIST(train=True, download=False), FashionMNIST(train=False, download=False)
    except (FileNotFoundError, DownloadError, ValueError) as e:
        print(f"Fashion-MNIST parts skipped: no local copy ({e}).\n  "
              "Install it with: apt-get install dataset-fashion-mnist")
        return None


def as_input(images):
    return (images.astype(np.float32) / 255)[:, None]


def fashion_part(args, viz, data):
    train, test = data
    minicnn.manual_seed(args.seed)
    model = fashion_cnn()
    n = min(args.fashion_steps * 64, len(train))
    start = time.perf_counter()
    fit(model, (as_input(train.images[:n]), train.labels[:n]), epochs=1, optimizer=Adam(model.parameters()),
        batch_size=64, seed=args.seed, verbose=0)
    acc = evaluate(model, (as_input(test.images[:2000]), test.labels[:2000]))["accuracy"]
    print(f"\n2. Fashion-MNIST CNN: {n} training images in {time.perf_counter() - start:.0f} s, "
          f"{acc:.1%} on 2,000 test images")
    picks = [int(np.flatnonzero(test.labels == c)[0]) for c in (1, 7, 8, 6, 0, 9)[:args.images]]
    x = as_input(test.images[picks])
    maps = attributions(model, x, {"4": "Grad-CAM conv2 (14x14)"}, args.ig_steps, args.samples)
    rows = captions(model, x, test.labels[picks], FASHION_CLASSES)
    return [viz.plot_attributions(x, maps, args.out / "fashion_grad_cam.png", row_labels=rows),
            viz.plot_feature_maps(model, x[0], args.out / "fashion_feature_maps.png"),
            viz.plot_filters(model[0], args.out / "fashion_filters.png")]


def deep_cnn(depth, batch_norm, width=16):
    """conv(1 -> width) [BN] ReLU, 2x2 max pool, then depth - 1 x (conv [BN] ReLU), global
    average pool, linear; conv weights from N(0, 0.01²)."""
    layers = []
    for i in range(depth):
        conv = nn.Conv2d(1 if i == 0 else width, width, 3, padding=1, bias=not batch_norm)
        nn.init.normal_(conv.weight, 0.0, 0.01)
        layers += [conv, *([nn.BatchNorm2d(width)] if batch_norm else []), nn.ReLU()]
        if i == 0:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(width, 10))


def monitor_part(args, viz, data):
    train, _ = data
    n = min(args.steps * 64, len(train))
    x, y = as_input(train.images[:n]), train.labels[:n]
    print(f"\n3. A {args.depth}-conv plain CNN, N(0, 0.01²) weights, {args.steps} SGD steps of 64, "
          "with and without batch norm:")
    monitors = {}
    for label, bn in (("no batch norm", False), ("batch norm", True)):
        minicnn.manual_seed(args.seed)
        model = deep_cnn(args.depth, bn)
        monitors[label] = LayerMonitor(every=2 if args.quick else 10)
        start = time.perf_counter()
        history = fit(model, (x, y), epochs=1, optimizer=SGD(model.parameters(), lr=0.05, momentum=0.9),
                      batch_size=64, seed=args.seed, verbose=0, callbacks=[monitors[label]])
        m = monitors[label]
        names, grads = m.values("grad_norm")
        convs = [i for i, name in enumerate(names) if m.kind[name] == "Conv2d"]
        _, stds = m.values("act_std")
        top = max(i for i, name in enumerate(m.layers) if m.kind[name] == "ReLU")
        print(f"  {label:>13}: loss {history.history['loss'][0]:.3f} (epoch mean), {time.perf_counter() - start:.0f} s; "
              f"at the last record: std after the last ReLU {stds[top, -1]:.1e}, gradient norm of the "
              f"first conv {grads[convs[0], -1]:.1e}, of the last {grads[convs[-1], -1]:.1e}")
    return [viz.plot_layer_monitor(monitors, args.out / "layer_monitor.png"),
            viz.plot_layer_monitor(monitors, args.out / "layer_monitor_std_grad.png",
                                   quantities=("act_std", "grad_norm"))]


def main(argv=None):
    args = parse_args(argv)
    from minicnn import viz  # matplotlib, only when drawing

    saved = []
    if args.part in ("all", "cifar"):
        saved += cifar_part(args, viz)
    if args.part in ("all", "fashion", "monitor"):
        data = load_fashion()
        if data is not None and args.part in ("all", "fashion"):
            saved += fashion_part(args, viz, data)
        if data is not None and args.part in ("all", "monitor"):
            saved += monitor_part(args, viz, data)
    print("\nSaved: " + ", ".join(map(str, saved)))
    if not saved:
        sys.exit("no data for any part: nothing drawn")


if __name__ == "__main__":
    main()
