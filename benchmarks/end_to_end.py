"""examples/fashion_mnist.py against its PyTorch twin, whole programs, side by side.

    python benchmarks/end_to_end.py [--pairs 3] [--threads 2] [--epochs N] [--quick] [--data-dir DIR]
                                    [--torch-formats contiguous channels_last] [--no-warmup] [--out DIR]

Runs ``python examples/fashion_mnist.py`` and ``python benchmarks/fashion_mnist_torch.py``
(the same run in PyTorch: see its docstring) with the same options, each in its own
process.  A pair is one minicnn run and one torch run per memory format of
``--torch-formats`` (torch's default layout and ``channels_last``, each in its own
process); pairs alternate their order (minicnn, torch contiguous, torch channels_last,
then the reverse, ...) because a neighbour on a shared machine can halve 2-thread
speed for tens of seconds.  Before them, one untimed run of each program with
``--epochs 1`` (``--no-warmup`` skips it) fills the Numba and autotuning caches for
every batch shape of the run and the page cache for both frameworks' libraries, so
the timed runs start as a user's second run does.

Per run: the whole process's wall time (start to exit: imports, data loading, model,
training, test prediction, report and plots), the training time the program prints
(its ``fit``: validation passes and callbacks included), the epochs it ran (early
stopping may end the two at different epochs, hence also the training time per
epoch), its test accuracy and the validation loss of each epoch (the two programs
start from the same weights and see the same batches, so these should agree closely).
Torch at its best: per pair and time, the faster of its formats counts (all kept).
Summary: medians per framework and the median over pairs of torch / minicnn for each
time (> 1: minicnn faster).

Threads: both get ``--threads`` (``harness.thread_env``); minicnn's conv workers each
run a one-thread OpenBLAS (``OPENBLAS_NUM_THREADS=1``, as ``train_throughput.py`` runs
it), torch gets ``--threads`` for ``torch.set_num_threads``.  Memory: the torch
processes get the allocator settings minicnn applies to itself
(``train_throughput.malloc_env``) and report whether they were in force; the minicnn
process gets neither variable (with them set, minicnn would leave its own ``mallopt`` out).

Writes ``<slug>.json`` and ``<slug>.md`` to ``--out`` (default
benchmarks/results/end_to_end/), named for the machine and thread count by
``machine.slug`` and headed by its description, and prints the Markdown.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from harness import ROOT, revision, revision_since, thread_env
from machine import SGEMM_SIZE, describe, markdown_header, slug
from train_throughput import TORCH_FORMATS, malloc_env

PROGRAMS = {"minicnn": os.path.join(ROOT, "examples", "fashion_mnist.py"),
            "torch": os.path.join(ROOT, "benchmarks", "fashion_mnist_torch.py")}
TIMES = {"wall_s": "whole process, s", "train_s": "training (validation included), s",
         "epoch_s": "training per epoch, s"}

TOOK = re.compile(r"^Training took (?:[\d.]+ min \()?([\d.]+) s\)? for (\d+) epochs?\b", re.M)
ACCURACY = re.compile(r"^Test accuracy: ([\d.]+) \((\d+)/(\d+)\)", re.M)
VAL_LOSS = re.compile(r"^Epoch \d+/\d+ .*\bval_loss (\S+)", re.M)
MALLOC = re.compile(r"\bmalloc tuned: (True|False|None)\b")


def environment(framework, threads):
    """The environment of one program's process (see the module docstring)."""
    if framework == "torch":
        return thread_env(threads, **malloc_env())
    environ = thread_env(threads, OPENBLAS_NUM_THREADS="1")
    for name in malloc_env():
        environ.pop(name, None)
    return environ


def parse_output(stdout, framework):
    """{'train_s', 'epochs', 'epoch_s', 'test_accuracy', 'correct', 'total', 'val_loss' (per
    epoch), 'malloc_tuned' (the twin's report; None for the example)} from a program's
    printed lines; ValueError naming what is missing."""
    took, acc = TOOK.search(stdout), ACCURACY.search(stdout)
    if took is None or acc is None:
        missing = " and ".join(what for what, m in (("'Training took ... s for E epochs'", took),
                                                     ("'Test accuracy: A (C/N)'", acc)) if m is None)
        raise ValueError(f"{framework} ({PROGRAMS[framework]}) printed no {missing} line; its output ended:\n"
                         f"{stdout[-1500:]}")
    seconds, epochs = float(took.group(1)), int(took.group(2))
    malloc = MALLOC.search(stdout)
    return {"train_s": seconds, "epochs": epochs, "epoch_s": seconds / epochs,
            "test_accuracy": float(acc.group(1)), "correct": int(acc.group(2)), "total": int(acc.group(3)),
            "val_loss": [float(v) for v in VAL_LOSS.findall(stdout)],
            "malloc_tuned": None if malloc is None else {"True": True, "False": False}.get(malloc.group(1))}


def run_program(framework, options, threads, memory_format=None):
    """Run one program to its end; its parsed results and wall time (RuntimeError with its
    output if it fails).  ``memory_format`` is torch's."""
    args = list(options)
    if framework == "torch":
        args += ["--threads", str(threads), "--memory-format", memory_format]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, PROGRAMS[framework], *args, "--out", out],
                              env=environment(framework, threads), capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{framework}: {PROGRAMS[framework]} {' '.join(args)} exited with {done.returncode}:\n"
                           f"{done.stdout[-1500:]}\n{done.stderr[-3000:]}")
    return {"wall_s": wall, **parse_output(done.stdout, framework)}


def torch_best(runs, formats):
    """Torch at its best in each pair: per time the fastest format's, and which format that was."""
    best = []
    for pair in zip(*(runs[f"torch_{fmt}"] for fmt in formats)):
        out = {}
        for key in TIMES:
            fastest = min(range(len(formats)), key=lambda i: pair[i][key])
            out[key], out[f"{key}_format"] = pair[fastest][key], formats[fastest]
        best.append(out)
    return best


def summarize(runs, formats):
    """Medians per framework of each time, torch at its best and per format, and the median
    over pairs of torch (at its best) / minicnn (None where minicnn's time is 0 in every
    pair: a printed time below half a second)."""
    mine, theirs = runs["minicnn"], torch_best(runs, formats)
    out = {}
    for key in TIMES:
        ratios = [t[key] / m[key] for m, t in zip(mine, theirs) if m[key] > 0]
        out[key] = {"minicnn": statistics.median(r[key] for r in mine),
                    "torch": statistics.median(r[key] for r in theirs),
                    **{f"torch_{fmt}": statistics.median(r[key] for r in runs[f"torch_{fmt}"]) for fmt in formats},
                    "ratio": statistics.median(ratios) if ratios else None,
                    "torch_formats": [r[f"{key}_format"] for r in theirs]}
    for key in ("epochs", "test_accuracy"):
        out[key] = {name: [r[key] for r in rs] for name, rs in runs.items()}
    return out


def markdown(summary, formats, setup):
    names = ["minicnn", *(f"torch_{fmt}" for fmt in formats)]
    lines = ["| | minicnn | " + " | ".join(f"torch {fmt}" for fmt in formats) + " | torch at its best / minicnn |",
             "|---|" + "---|" * (len(names) + 1)]
    for key, title in TIMES.items():
        s = summary[key]
        ratio = "n/a" if s["ratio"] is None else f"**{s['ratio']:.2f}x**"
        lines.append(f"| {title} | " + " | ".join(f"{s[n]:.1f}" for n in names) + f" | {ratio} |")
    for key, title, fmt in (("epochs", "epochs run", "d"), ("test_accuracy", "test accuracy", ".4f")):
        lines.append(f"| {title} | " + " | ".join(", ".join(f"{v:{fmt}}" for v in summary[key][n]) for n in names)
                     + " | |")
    return "\n".join(lines + ["", setup])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="alternating minicnn/torch pairs (default 3)")
    p.add_argument("--threads", type=int, default=2, help="threads per framework (default 2)")
    p.add_argument("--epochs", type=int, default=None, help="passed to both programs (default: theirs, 15)")
    p.add_argument("--quick", action="store_true", help="passed to both: 1 epoch on a subset")
    p.add_argument("--data-dir", default=None, help="passed to both: the four idx files' folder")
    p.add_argument("--torch-formats", nargs="+", choices=TORCH_FORMATS, default=list(TORCH_FORMATS),
                   help="torch's memory formats, each timed in its own process (default both)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one untimed 1-epoch run of each program first (default on)")
    p.add_argument("--sgemm-size", type=int, default=SGEMM_SIZE,
                   help=f"matrix size of the machine's sgemm probe (default {SGEMM_SIZE})")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "end_to_end"))
    args = p.parse_args(argv)
    if args.pairs < 1 or args.threads < 1:
        p.error("--pairs and --threads must be positive")
    formats = list(dict.fromkeys(args.torch_formats))
    common = ["--quick"] * args.quick + (["--data-dir", args.data_dir] if args.data_dir else [])
    options = common + (["--epochs", str(args.epochs)] if args.epochs else [])
    order = [("minicnn", None)] + [("torch", fmt) for fmt in formats]

    machine = describe(args.threads, sgemm_size=args.sgemm_size)
    load_before, start = os.getloadavg()[0], revision()
    if args.warmup:
        for fw, fmt in order[:2]:
            print(f"warm-up {fw:8s} {run_program(fw, common + ['--epochs', '1'], args.threads, fmt)['wall_s']:6.1f} s",
                  flush=True)
    runs = {"minicnn": [], **{f"torch_{fmt}": [] for fmt in formats}}
    for i in range(args.pairs):
        for fw, fmt in (order if i % 2 == 0 else order[::-1]):
            r = run_program(fw, options, args.threads, fmt)
            runs[fw if fmt is None else f"torch_{fmt}"].append(r)
            print(f"pair {i + 1}/{args.pairs} {fw:8s}{fmt or '':14s} process {r['wall_s']:6.1f} s  training "
                  f"{r['train_s']:6.1f} s for {r['epochs']:2d} epochs  test accuracy {r['test_accuracy']:.4f}",
                  flush=True)
    load = (load_before, os.getloadavg()[0])
    summary = summarize(runs, formats)
    command = " ".join(["python benchmarks/end_to_end.py", *(argv if argv is not None else sys.argv[1:])])
    rev = revision_since(start)
    tuned = sorted({str(r["malloc_tuned"]) for fmt in formats for r in runs[f"torch_{fmt}"]})
    setup = (f"`{command}` at minicnn {rev}: {args.pairs} alternating process pairs, medians; ratios are "
             f"medians of the pairs' torch / minicnn, torch at its best (the faster of "
             f"{', '.join(formats)} per pair and time; > 1: minicnn faster). Training time as each program "
             f"prints it (validation and callbacks included; the example prints whole seconds). Torch ran with "
             f"minicnn's allocator settings ({', '.join(f'{k}={v}' for k, v in malloc_env().items())}; in force: "
             f"{', '.join(tuned)}). 1-min load average {load[0]:.1f} before, {load[1]:.1f} after.")
    os.makedirs(args.out, exist_ok=True)
    name = os.path.join(args.out, slug(machine))
    with open(name + ".json", "w") as f:
        json.dump({"command": command, "revision": rev, "machine": machine, "threads": args.threads,
                   "pairs": args.pairs, "options": options, "torch_formats": formats, "warmup": args.warmup,
                   "load_average": load, "torch_env": malloc_env(), "summary": summary, "runs": runs}, f, indent=1)
    table = "\n\n".join([markdown_header(machine), markdown(summary, formats, setup)])
    with open(name + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    return name + ".json"


if __name__ == "__main__":
    main()
