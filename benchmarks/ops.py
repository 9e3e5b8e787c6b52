"""Speed of every conv and pool layer of the reference networks, minicnn vs PyTorch CPU.

    python benchmarks/ops.py [--rounds 5] [--reps 7] [--threads 2] [--out benchmarks/results]

Layers: the Fashion-MNIST CNN at batch 64 and ResNet-20 (CIFAR) at batch 128.
For each layer, forward (inference, no graph) and forward+backward (the first
layer of a network computes no input gradient, as in training) are timed in ms.
Inputs and output gradients come in the memory layout each framework's layers hand
each other inside a network: C order for torch, channels-last for minicnn (whose
convolutions write that layout; the first layer gets the C-ordered images).

Method (the machine is shared and noisy, see DESIGN.md):
* each framework runs in its own process (two BLAS/OpenMP runtimes in one process
  slow each other), with the same number of threads;
* the processes alternate, minicnn, torch, minicnn, torch, ... for ``--rounds``
  rounds; inside a process every layer gets a warm-up and ``--reps`` timed
  repetitions, of which the median counts;
* the ratio reported is the median over rounds of (torch ms / minicnn ms) of the
  same round: > 1 means minicnn is faster.
A network's total weights each layer by how often it occurs in the network.

A third process per round, "gemm", runs minicnn with every conv kernel but the
GEMMs switched off (im2row/im2col, row2im/col2im, the row taps' window unrolling,
the layout moves and the Winograd transforms do nothing; the scratch buffers are
zeros): the same GEMMs, chunks and worker threads as the real engine, and nothing
else but the bias add and sum.  Its time is the floor of minicnn's unrolling +
OpenBLAS design on this machine: the speed ratio against torch can go no higher
than torch ms / gemm ms.

Also measured, in fresh processes: the first forward+backward through every conv
route (im2col, row taps, Winograd, depthwise), pool kernel and ReLU in float32, with a warm Numba
cache (what every later run pays) and with an empty one (compilation).

Writes ``ops.json`` and ``ops.md`` to ``--out`` (``ops_t1_cpu.*`` and the like for
other ``--threads``/``--clock`` settings); prints the Markdown table.  ``--clock cpu``
with ``--threads 1`` measures per-core efficiency, which a busy machine disturbs
far less than 2-thread wall-clock time.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from harness import env, median_seconds, run_python, thread_env

# (name, network, count in the network, kind, spec)
#   conv spec: (N, C, H, W, O, k, stride, padding, bias, first)   pool spec: (N, C, H, W, kind, k)
LAYERS = [
    ("conv1 1->32", "fashion", 1, "conv", (64, 1, 28, 28, 32, 3, 1, 1, True, True)),
    ("maxpool1", "fashion", 1, "pool", (64, 32, 28, 28, "max", 2)),
    ("conv2 32->64", "fashion", 1, "conv", (64, 32, 14, 14, 64, 3, 1, 1, True, False)),
    ("maxpool2", "fashion", 1, "pool", (64, 64, 14, 14, "max", 2)),
    ("conv 3->16", "resnet20", 1, "conv", (128, 3, 32, 32, 16, 3, 1, 1, False, True)),
    ("conv 16->16", "resnet20", 6, "conv", (128, 16, 32, 32, 16, 3, 1, 1, False, False)),
    ("conv 16->32 s2", "resnet20", 1, "conv", (128, 16, 32, 32, 32, 3, 2, 1, False, False)),
    ("conv 32->32", "resnet20", 5, "conv", (128, 32, 16, 16, 32, 3, 1, 1, False, False)),
    ("conv 32->64 s2", "resnet20", 1, "conv", (128, 32, 16, 16, 64, 3, 2, 1, False, False)),
    ("conv 64->64", "resnet20", 5, "conv", (128, 64, 8, 8, 64, 3, 1, 1, False, False)),
    ("global avgpool", "resnet20", 1, "pool", (128, 64, 8, 8, "gap", 8)),
]
FRAMEWORKS = ("minicnn", "torch", "gemm")
NETWORKS = {"fashion": "Fashion-MNIST CNN, batch 64", "resnet20": "ResNet-20, batch 128"}


def conv_gflop(spec):
    """GFLOP of one forward pass (2 per multiply-add)."""
    N, C, H, W, O, k, s, p, _, _ = spec
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return 2 * N * O * C * k * k * Ho * Wo / 1e9


# ------------------------------------------------------------------ workers

def _median_ms(fn, reps, clock):
    return median_seconds(fn, reps, clock) * 1e3


def _framework(name):
    """(tensor(array, requires_grad), conv2d, max_pool2d, global average pool, no_grad,
    in_network(array), ones_like(output)) of a framework.  ``in_network`` gives an input
    the memory layout that the framework's previous layer hands it inside a network
    (minicnn: channels-last, see minicnn/fast/layout.py; torch: C order), ``ones_like``
    an output gradient in the layout of the output, as the next layer's backward would."""
    if name == "torch":
        import torch
        F = torch.nn.functional
        return (lambda a, g: torch.tensor(a, requires_grad=g), F.conv2d, F.max_pool2d,
                lambda x: F.adaptive_avg_pool2d(x, 1), torch.no_grad, lambda a: a, torch.ones_like)
    import numpy as np

    import minicnn
    from minicnn import ops
    return (lambda a, g: minicnn.tensor(a, requires_grad=g), ops.conv2d, ops.max_pool2d,
            lambda x: ops.adaptive_avg_pool2d(x, 1), minicnn.no_grad,
            lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
            lambda y: minicnn.tensor(np.ones_like(y.data)))


def _gemms_only():
    """Switch off every conv kernel but the GEMMs (see the module docstring)."""
    import threading
    import types

    import numpy as np
    from minicnn.fast.kernels import conv as kernels
    from minicnn.fast.kernels import winograd as winograd_kernels
    from numba import njit
    from minicnn.fast.conv import plan
    for name in ("transpose", "im2row", "row2im", "im2col", "col2im"):
        setattr(kernels, name, lambda *args: None)
    for name in ("winograd_tiles", "winograd_untile"):
        setattr(winograd_kernels, name, lambda *args: None)
    # The row taps unroll inside their Numba kernels: recompile those with no-op unrolling.
    skip = njit(nogil=True)(lambda *args: None)
    for name in ("rowtap_forward", "rowtap_backward"):
        source = getattr(kernels, "_" + name)
        scope = dict(source.__globals__, class_windows=skip, row2im=skip)
        setattr(kernels, name, njit(nogil=True)(types.FunctionType(source.__code__, scope, name)))
    zeros = {}

    def scratch(name, size, dtype):    # zeros, never written by the switched-off kernels: no NaN or denormal
        key = (name, np.dtype(dtype).str, threading.get_ident())     # per worker, as the real scratch
        if zeros.get(key) is None or zeros[key].size < size:
            zeros[key] = np.zeros(size, dtype)
        return zeros[key][:size]
    plan.scratch = scratch


def _cases(framework, spec, kind, rng):
    """(forward, forward+backward) closures for one layer; float32 inputs as in training,
    in the layout the layer gets inside the network (the first layer: C order)."""
    import numpy as np
    tensor, conv2d, max_pool2d, global_pool, no_grad, in_network, ones_like = framework
    if kind == "conv":
        N, C, H, W, O, k, s, p, bias, first = spec
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        x = tensor(x if first else in_network(x), not first)
        w = tensor(rng.standard_normal((O, C, k, k), dtype=np.float32) * 0.1, True)
        b = tensor(np.zeros(O, np.float32), True) if bias else None
        layer = lambda: conv2d(x, w, b, s, p)  # noqa: E731
    else:
        N, C, H, W, pk, k = spec
        x = tensor(in_network(rng.standard_normal((N, C, H, W), dtype=np.float32)), True)
        layer = (lambda: max_pool2d(x, k)) if pk == "max" else (lambda: global_pool(x))
    with no_grad():
        gy = ones_like(layer())

    def forward():
        with no_grad():
            layer()

    def forward_backward():
        layer().backward(gy)

    return forward, forward_backward


def worker(framework, reps, threads, clock):
    """Time every layer in this process; print {layer: [forward ms, forward+backward ms]}
    (for "gemm", the conv layers only)."""
    fw = _framework(framework)   # first: minicnn sets the thread-pool defaults before numpy starts
    if framework == "gemm":
        _gemms_only()
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
    import numpy as np
    rng = np.random.default_rng(0)
    result = {}
    for name, _, _, kind, spec in LAYERS:
        if framework == "gemm" and kind != "conv":
            continue
        fwd, fwd_bwd = _cases(fw, spec, kind, rng)
        result[name] = [_median_ms(fwd, reps, clock), _median_ms(fwd_bwd, reps, clock)]
    print(json.dumps(result))


FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np, minicnn
from minicnn import ops
t1 = time.perf_counter()
x = minicnn.tensor(np.ones((2, 3, 8, 8), np.float32), requires_grad=True)
def weight(*shape):
    return minicnn.tensor(np.ones(shape, np.float32), requires_grad=True)
y = ops.conv2d(x, weight(32, 3, 3, 3), None, 1, 1)                          # im2col (thin: K = 27)
y = ops.conv2d(y, weight(64, 32, 3, 3), None, 1, 1)                         # row taps
y = ops.conv2d(y, weight(64, 64, 3, 3), None, 1, 1)                         # Winograd
y = ops.relu(ops.conv2d(y, weight(64, 1, 3, 3), None, 1, 1, 1, 64))         # depthwise
y = ops.max_pool2d(y, 2) + ops.max_pool2d(y, 3, 2, 1) + ops.avg_pool2d(y, 2) + ops.adaptive_avg_pool2d(y, 4)
(y.sum() + ops.adaptive_avg_pool2d(y, 1).sum()).backward()
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call_seconds(cache_dir=None):
    """(import s, first conv+pool forward/backward s) in a fresh process."""
    environ = env() if cache_dir is None else env(NUMBA_CACHE_DIR=cache_dir)
    out = run_python(["-c", FIRST_CALL], environ).split()
    return float(out[0]), float(out[1])


# ------------------------------------------------------------------ parent

def run_worker(framework, args):
    return json.loads(run_python([__file__, "--worker", framework, "--reps", str(args.reps),
                                  "--threads", str(args.threads), "--clock", args.clock], thread_env(args.threads)))


def _floor_ms(r, name, i):
    """The GEMM-only time of a conv layer in round ``r``, or minicnn's own time of a pool."""
    return r["gemm"][name][i] if name in r["gemm"] else r["minicnn"][name][i]


def summarize(rounds):
    """Per layer and network: median ms of each framework, median paired speed ratio, and the
    ratio's ceiling (torch / GEMMs only, see the module docstring)."""
    rows = {}
    for name, net, count, kind, spec in LAYERS:
        row = {"network": net, "count": count, "kind": kind}
        for i, mode in enumerate(("forward", "forward_backward")):
            mine = [r["minicnn"][name][i] for r in rounds]
            theirs = [r["torch"][name][i] for r in rounds]
            row[mode] = {"minicnn_ms": statistics.median(mine), "torch_ms": statistics.median(theirs),
                         "ratio": statistics.median(t / m for t, m in zip(theirs, mine))}
            if kind == "conv":
                floor = [r["gemm"][name][i] for r in rounds]
                row[mode]["gemm_only_ms"] = statistics.median(floor)
                row[mode]["ratio_ceiling"] = statistics.median(t / f for t, f in zip(theirs, floor))
                flop = conv_gflop(spec) * (1 if i == 0 else (2 if spec[-1] else 3))
                row[mode]["minicnn_gflops"] = flop / row[mode]["minicnn_ms"] * 1e3
                row[mode]["torch_gflops"] = flop / row[mode]["torch_ms"] * 1e3
        rows[name] = row
    nets = {}
    for net in NETWORKS:
        members = [(n, c) for n, nt, c, _, _ in LAYERS if nt == net]
        nets[net] = {}
        for i, mode in enumerate(("forward", "forward_backward")):
            per_round = [(sum(c * r["minicnn"][n][i] for n, c in members),
                          sum(c * r["torch"][n][i] for n, c in members),
                          sum(c * _floor_ms(r, n, i) for n, c in members)) for r in rounds]
            nets[net][mode] = {"minicnn_ms": statistics.median(m for m, _, _ in per_round),
                               "torch_ms": statistics.median(t for _, t, _ in per_round),
                               "gemm_only_ms": statistics.median(f for _, _, f in per_round),
                               "ratio": statistics.median(t / m for m, t, _ in per_round),
                               "ratio_ceiling": statistics.median(t / f for _, t, f in per_round)}
    return rows, nets


def _floor_cells(r, fmt):
    """The GEMMs-only and ratio-ceiling cells of a table row ("-" for pools)."""
    if "gemm_only_ms" not in r["forward"]:
        return ["-", "-"]
    fwd, both = r["forward"], r["forward_backward"]
    return [f"{fmt.format(fwd['gemm_only_ms'])} / {fmt.format(both['gemm_only_ms'])}",
            f"{fwd['ratio_ceiling']:.2f}x / {both['ratio_ceiling']:.2f}x"]


def markdown(rows, nets, start, setup):
    lines = [f"{setup}\n",
             "| network | layer | x | fwd ms minicnn / torch | fwd GFLOP/s | fwd speed ratio "
             "| fwd+bwd ms minicnn / torch | fwd+bwd GFLOP/s | fwd+bwd speed ratio "
             "| GEMMs only ms fwd / fwd+bwd | ratio ceiling fwd / fwd+bwd |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cells = []
        for mode in ("forward", "forward_backward"):
            m = r[mode]
            gf = f"{m['minicnn_gflops']:.0f} / {m['torch_gflops']:.0f}" if "minicnn_gflops" in m else "-"
            cells += [f"{m['minicnn_ms']:.2f} / {m['torch_ms']:.2f}", gf, f"{m['ratio']:.2f}x"]
        cells += _floor_cells(r, "{:.2f}")
        lines.append(f"| {r['network']} | {name} | {r['count']} | " + " | ".join(cells) + " |")
    for net, n in nets.items():
        cells = []
        for mode in ("forward", "forward_backward"):
            m = n[mode]
            cells += [f"{m['minicnn_ms']:.1f} / {m['torch_ms']:.1f}", "", f"**{m['ratio']:.2f}x**"]
        cells += _floor_cells(n, "{:.1f}")
        lines.append(f"| {net} | **all layers, weighted** | | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Speed ratio = torch time / minicnn time, median over alternating rounds (> 1: minicnn faster). "
                 "x = occurrences of the layer in the network (weights the totals). "
                 "GEMMs only: minicnn with every conv kernel but its GEMMs switched off (same chunks and "
                 "threads; a network's pools at their real time); ratio ceiling = torch time / that time, "
                 "the most this unrolling + OpenBLAS design could reach.")
    lines.append(f"First call of the conv/pool kernels in a fresh process: {start['warm_first_call_s']:.2f} s "
                 f"with a warm Numba cache, {start['cold_first_call_s']:.1f} s with an empty one "
                 f"(import minicnn: {start['import_s']:.2f} s).")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, robust to a busy machine but meaningful only with --threads 1")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.reps, args.threads,
                      time.process_time if args.clock == "cpu" else time.perf_counter)
    first_call_seconds()  # make sure the cache is populated
    import_s, warm = first_call_seconds()
    with tempfile.TemporaryDirectory() as empty:
        _, cold = first_call_seconds(empty)
    start = {"import_s": import_s, "warm_first_call_s": warm, "cold_first_call_s": cold}
    load_before = os.getloadavg()[0]
    rounds = []
    for i in range(args.rounds):
        rounds.append({fw: run_worker(fw, args) for fw in FRAMEWORKS})
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    rows, nets = summarize(rounds)
    load = (load_before, os.getloadavg()[0])
    setup = (f"{args.threads} thread(s) per framework, {'wall-clock' if args.clock == 'wall' else 'CPU'} time, "
             f"{args.rounds} alternating rounds x {args.reps} repetitions; 1-min load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after (on this 2-core machine).")
    os.makedirs(args.out, exist_ok=True)
    name = "ops" if (args.threads, args.clock) == (2, "wall") else f"ops_t{args.threads}_{args.clock}"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"threads": args.threads, "clock": args.clock, "rounds": args.rounds, "reps": args.reps,
                   "load_average": load, "start": start, "layers": rows, "networks": nets,
                   "raw_rounds": rounds}, f, indent=1)
    table = markdown(rows, nets, start, setup)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
