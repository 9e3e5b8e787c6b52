"""Speed and float32 accuracy of the convolution routes, forced one at a time, on the 3x3
stride-1 layers of the reference networks (the Winograd routes' domain).

    python benchmarks/conv_routes.py [--routes winograd4,winograd,im2row,rowtaps,direct]
                                     [--rounds 3] [--reps 5] [--threads 1] [--out benchmarks/results]

Speed: forward (no graph) and forward+backward (every gradient) of ``ops.conv2d(...,
route=NAME)`` in CPU time of the process (``time.process_time``, which a neighbour's
load disturbs far less than wall-clock time), channels-last input and output gradient
as inside a network.  Each route runs in its own fresh process, the routes taking
turns for ``--rounds`` rounds; in a process each layer gets a warm-up and ``--reps``
timed runs of which the median counts; the table gives the median over rounds.

Accuracy: max|a32 - a64| / max|a64| of the forward, dx and dw of each route in float32
against the float64 reference, standard normal x, Kaiming-scaled w (std sqrt(2/(9C))),
standard normal output gradient, 16 to 256 channels.

Writes ``conv_routes_<machine>.md`` and ``.json`` to ``--out``; prints the Markdown.
"""
import argparse
import json
import os
import statistics
import sys
import time

from harness import median_seconds, run_python, thread_env
from machine import describe, markdown_header, slug

# (N, C, H, W) -> O: the Fashion-MNIST CNN's conv2 at batch 64, ResNet-20's and the CIFAR CNNs' 3x3 layers at 128.
LAYERS = [(64, 32, 14, 14, 64), (128, 32, 16, 16, 64), (128, 64, 16, 16, 64), (128, 64, 8, 8, 64),
          (128, 128, 8, 8, 128), (128, 32, 32, 32, 32), (128, 16, 32, 32, 16)]
ACCURACY_LAYERS = [(8, 16, 16, 16, 16), (8, 32, 14, 14, 64), (8, 64, 16, 16, 64), (8, 128, 8, 8, 128),
                   (4, 256, 8, 8, 256)]
ROUTES = "winograd4,winograd,im2row,rowtaps,direct"


def speed_worker(route, reps):
    """{layer: [forward s, forward+backward s] or None where the route does not apply} for one route."""
    import numpy as np
    import minicnn
    from minicnn import ops, tensor
    from minicnn.fast.conv import ROUTES as TABLE
    from minicnn.ops.conv import conv_geometry
    rng = np.random.default_rng(0)
    out = {}
    for N, C, H, W, O in LAYERS:
        x = np.ascontiguousarray(rng.standard_normal((N, H, W, C), np.float32)).transpose(0, 3, 1, 2)
        w = (rng.standard_normal((O, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(np.float32)
        b = np.zeros(O, np.float32)
        gy = np.ascontiguousarray(rng.standard_normal((N, H, W, O), np.float32)).transpose(0, 3, 1, 2)
        if not TABLE[route].applies(conv_geometry(x, w, b, 1, 1, 1, 1)):
            out[str((N, C, H, W, O))] = None
            continue

        def forward():
            with minicnn.no_grad():
                ops.conv2d(tensor(x), tensor(w), tensor(b), 1, 1, route=route)

        def training():
            xt, wt, bt = (tensor(a, requires_grad=True) for a in (x, w, b))
            ops.conv2d(xt, wt, bt, 1, 1, route=route).backward(gy)
        out[str((N, C, H, W, O))] = [median_seconds(f, reps, time.process_time) for f in (forward, training)]
    return out


def accuracy_worker(routes):
    """{layer: {route: [forward, dx, dw] relative errors}}."""
    import numpy as np
    from minicnn import ops, tensor
    from minicnn.fast.conv import ROUTES as TABLE
    from minicnn.ops.conv import conv_geometry
    rng = np.random.default_rng(0)

    def run(route, x, w, gy):
        xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
        y = ops.conv2d(xt, wt, None, 1, 1, route=route)
        y.backward(gy.astype(x.dtype))
        return y.data, xt.grad, wt.grad
    out = {}
    for N, C, H, W, O in ACCURACY_LAYERS:
        x = rng.standard_normal((N, C, H, W))
        w = rng.standard_normal((O, C, 3, 3)) * np.sqrt(2 / (9 * C))
        gy = rng.standard_normal((N, O, H, W))
        want = run("reference", x, w, gy)
        applies = {r: TABLE[r].applies(conv_geometry(x, w, None, 1, 1, 1, 1)) for r in routes}
        out[str((N, C, H, W, O))] = {
            r: [float(np.abs(a - b).max() / np.abs(b).max())
                for a, b in zip(run(r, x.astype(np.float32), w.astype(np.float32), gy), want)] if applies[r] else None
            for r in routes}
    return out


def markdown(info, speed, accuracy, routes, args):
    lines = [f"# Convolution routes: 3x3 stride-1 layers, {args.threads} thread(s), CPU time", "",
             markdown_header(info), "",
             f"`python benchmarks/conv_routes.py --routes {','.join(routes)} --rounds {args.rounds} "
             f"--reps {args.reps} --threads {args.threads}`: median over rounds (each route in its own process, "
             "taking turns) of the median of the timed runs, ms; forward / forward+backward.", "",
             "| layer (N, C, H, W) -> O | " + " | ".join(routes) + " |", "|---|" + "---|" * len(routes)]
    for layer in speed[routes[0]]:
        cells = []
        for r in routes:
            t = speed[r][layer]
            cells.append("-" if t is None else f"{1e3 * t[0]:.1f} / {1e3 * t[1]:.1f}")
        n, c, h, w, o = json.loads(layer.replace("(", "[").replace(")", "]"))
        lines.append(f"| ({n}, {c}, {h}, {w}) -> {o} | " + " | ".join(cells) + " |")
    lines += ["", "Float32 error relative to the output's scale, max|a32 - a64| / max|a64|, "
              "forward / dx / dw (standard normal x and output gradient, Kaiming-scaled w):", "",
              "| layer | " + " | ".join(routes) + " |", "|---|" + "---|" * len(routes)]
    for layer, row in accuracy.items():
        lines.append(f"| {layer} | " + " | ".join(
            "-" if row[r] is None else " / ".join(f"{e:.1e}" for e in row[r]) for r in routes) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--routes", default=ROUTES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    routes = args.routes.split(",")
    if args.worker == "accuracy":
        print(json.dumps(accuracy_worker(routes)))
        return
    if args.worker:
        print(json.dumps(speed_worker(args.worker, args.reps)))
        return
    environ = thread_env(args.threads, OPENBLAS_NUM_THREADS=str(args.threads))
    me = os.path.abspath(__file__)
    rounds = {r: [] for r in routes}
    for k in range(args.rounds):
        for r in routes:
            rounds[r].append(json.loads(run_python([me, "--worker", r, "--reps", str(args.reps)], environ)))
            print(f"round {k + 1}/{args.rounds}: {r}", file=sys.stderr, flush=True)
    speed = {r: {layer: None if runs[0][layer] is None else
                 [statistics.median(run[layer][i] for run in runs) for i in (0, 1)]
                 for layer in runs[0]} for r, runs in rounds.items()}
    accuracy = json.loads(run_python([me, "--worker", "accuracy", "--routes", args.routes], environ))
    info = describe(args.threads)
    text = markdown(info, speed, accuracy, routes, args)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"conv_routes_{slug(info)}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"machine": info, "speed_s": speed, "accuracy": accuracy, "rounds": rounds}, f, indent=1)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
