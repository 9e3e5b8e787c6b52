"""Command line: ``python -m minicnn COMMAND ...`` (or the ``minicnn`` script).

    python -m minicnn convert SRC DST.npz --arch NAME

Each command is one entry of :data:`COMMANDS`: a function that adds its
arguments to an argparse sub-parser and a function that runs it with the parsed
arguments and returns the exit status.  A new command adds one entry.
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
    parser.add_argument("src", type=Path, help="PyTorch checkpoint (.pth/.pt/.th, read without torch); "
                                               "for a ResNet also the folder holding resnetNN-<hash>.th")
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


COMMANDS = {
    "convert": (_add_convert, _run_convert,
                "convert pretrained PyTorch weights to a minicnn .npz checkpoint"),
}


def build_parser():
    """The argparse parser with one sub-parser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m minicnn", description=__doc__.split("\n\n")[0])
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
