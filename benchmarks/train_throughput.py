"""End-to-end speed and memory of three reference models, minicnn vs PyTorch CPU.

    python benchmarks/train_throughput.py [--pairs 5] [--steps 10] [--threads 2] [--models ...] [--out DIR]

Models (input shape, training batch; inference batch 256 for all):

    fashion_cnn     the Fashion-MNIST CNN of examples/fashion_mnist.py   (1, 28, 28), 64, Adam
    improved_cnn    the seeds' improved CIFAR CNN (conv-BN, dropout)     (3, 32, 32), 128, Adam
    resnet20        ResNet-20 (He et al. 2016, option-A shortcuts)       (3, 32, 32), 128, SGD

The torch twin of each model is built from the minicnn model itself (same layers,
same weights loaded from its state dict) and checked to give the same logits, so
both frameworks do exactly the same work.  Torch runs at its best: each pair times its
default (contiguous) memory format and ``channels_last`` (model and inputs converted),
each in its own fresh process so that each format's peak RSS and start-up are its own
and neither inherits the other's warm allocator or oneDNN primitive cache; torch's
figure in a pair is the better of the two (per measure), and both are kept.

Per model and framework, in a fresh process:

* training img/s: forward + cross-entropy + backward + optimizer step, median of
  ``--steps`` steps after ``--warmup``;
* inference img/s: eval mode, no graph, batch 256, median likewise;
* peak RSS of the process (``ru_maxrss``: framework, model, data and all buffers);
* start-up: from the first line of the worker (before ``import minicnn`` or
  ``import torch``) to the end of the first training step, with a warm Numba
  cache.  One more minicnn process per model with an empty ``NUMBA_CACHE_DIR``
  measures the start-up that compiles every kernel (a first install);
* training GFLOP/s: img/s times the model's training FLOPs per image
  (``flops.py``: convolutions and linear layers, forward + both gradients), and its
  share of the machine's measured sgemm rate with all threads (``machine.py``).

Same allocator for both: ``minicnn.fast.runtime`` sets glibc's malloc to keep freed
blocks (``MALLOC_SETTINGS``; a torch process without it runs ResNet-20 ~30% slower).
The torch processes get the same settings as ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``, which glibc reads at start-up (only theirs: minicnn leaves
malloc alone where these are exported).  Every worker checks that the settings are in
force and reports it (``malloc_tuned``).

The processes alternate (minicnn, torch, torch channels_last; then the reverse
order, ...) because a neighbour on this shared machine can halve 2-thread speed for
tens of seconds; the ratios reported are medians over pairs measured back to back
(> 1: minicnn faster or, for memory, larger).  Results go to one file per machine and
thread count, ``<--out>/<machine slug>.json`` and ``.md`` (``machine.slug``), headed
by the machine's description; the Markdown table is printed too.
"""
import time

T0 = time.perf_counter()  # start-up is measured from here, before any framework import

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from harness import ROOT, median_seconds, revision, revision_since, run_python, thread_env  # noqa: E402

EVAL_BATCH = 256
# name -> (input shape, training batch, optimizer)
MODELS = {
    "fashion_cnn": ((1, 28, 28), 64, "adam"),
    "improved_cnn": ((3, 32, 32), 128, "adam"),
    "resnet20": ((3, 32, 32), 128, "sgd"),
}
TITLES = {"fashion_cnn": "Fashion-MNIST CNN", "improved_cnn": "improved CIFAR CNN (BN)", "resnet20": "ResNet-20"}
TORCH_FORMATS = ("contiguous", "channels_last")
# Per measure, which of torch's two formats counts: the faster, the smaller, the quicker.
BEST = {"train": max, "infer": max, "peak_rss_mb": min, "startup_s": min}
# glibc's environment names for the mallopt parameters (M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3).
MALLOPT_ENV = {-1: "MALLOC_TRIM_THRESHOLD_", -3: "MALLOC_MMAP_THRESHOLD_"}
HEAP_PROBE_BYTES = 24 << 20  # above glibc's default mmap threshold, below minicnn's 32 MiB


def architecture(name):
    """The minicnn model ``name`` as defined (unfused)."""
    from minicnn.models import fashion_cnn, improved_cnn_cifar, resnet20
    return {"fashion_cnn": fashion_cnn, "improved_cnn": improved_cnn_cifar, "resnet20": resnet20}[name]()


def build_minicnn(name):
    from minicnn.nn import fuse
    return fuse(architecture(name))


def malloc_env():
    """minicnn's malloc settings (``minicnn.fast.runtime.MALLOC_SETTINGS``) as the
    environment variables glibc reads at process start."""
    from minicnn.fast.runtime import MALLOC_SETTINGS
    unknown = set(MALLOC_SETTINGS) - set(MALLOPT_ENV)
    if unknown:
        raise RuntimeError(f"minicnn.fast.runtime.MALLOC_SETTINGS has mallopt parameters {sorted(unknown)} "
                           f"that benchmarks/train_throughput.py cannot pass to torch (knows {sorted(MALLOPT_ENV)})")
    return {MALLOPT_ENV[k]: str(v) for k, v in MALLOC_SETTINGS.items()}


def malloc_tuned():
    """True if this process's malloc serves a 24 MiB block from the heap rather than a
    fresh mapping, as it does under minicnn's settings (mmap threshold 32 MiB) and not
    under glibc's defaults; None where it cannot tell (not glibc, no /proc).  Call it
    before any framework runs: glibc raises its default threshold (128 KiB) as large
    mapped blocks are freed, so after a torch step it answers True even without them."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(HEAP_PROBE_BYTES)
    try:
        with open("/proc/self/maps") as f:  # read after the malloc: the heap may have grown to hold it
            heaps = [line.split()[0].split("-") for line in f if line.rstrip().endswith("[heap]")]
    except OSError:
        return None
    finally:
        libc.free(block)
    return any(int(lo, 16) <= block < int(hi, 16) for lo, hi in heaps)


# ------------------------------------------------------------------ the torch twins

def torch_twin(model):
    """A torch module computing the same function as the minicnn ``model`` (a Sequential
    of standard layers, or a CIFAR ResNet), with the same parameter names and values."""
    import torch
    from minicnn import nn
    from minicnn.models.resnet_cifar import ResNetCIFAR
    twin = _torch_resnet(model) if isinstance(model, ResNetCIFAR) else _torch_sequential(model, nn, torch.nn)
    state = {k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=False)  # minicnn may omit buffers torch has, never parameters
    missing = {k for k in twin.state_dict() if k not in state and not k.endswith("num_batches_tracked")}
    if missing:
        raise RuntimeError(f"torch twin has parameters the minicnn model lacks: {sorted(missing)}")
    return twin


def _torch_sequential(model, nn, tnn):
    def layer(m):
        if isinstance(m, nn.Conv2d):
            return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                              m.groups, bias=m.bias is not None)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            cls = tnn.BatchNorm1d if isinstance(m, nn.BatchNorm1d) else tnn.BatchNorm2d
            return cls(m.num_features, eps=m.eps, momentum=m.momentum)
        if isinstance(m, nn.Linear):
            return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, nn.MaxPool2d):
            return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)
        if isinstance(m, nn.Dropout):
            return tnn.Dropout(m.p)
        simple = {nn.ReLU: tnn.ReLU, nn.Flatten: tnn.Flatten}
        if type(m) in simple:
            return simple[type(m)]()
        raise TypeError(f"no torch twin for {type(m).__name__}")
    return tnn.Sequential(*[layer(m) for m in model])


def _torch_resnet(model):
    import torch.nn as tnn
    import torch.nn.functional as F

    class Block(tnn.Module):
        def __init__(self, block):
            super().__init__()
            cin, cout = block.conv1.in_channels, block.conv1.out_channels
            self.conv1 = tnn.Conv2d(cin, cout, 3, block.conv1.stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.pad = getattr(block.shortcut, "pad", 0)

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
            return F.relu(out + sc)

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            self.layer1, self.layer2, self.layer3 = (
                tnn.Sequential(*[Block(b) for b in getattr(model, f"layer{i}")]) for i in (1, 2, 3))
            self.linear = tnn.Linear(64, model.linear.out_features)

        def forward(self, x):
            out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
            return self.linear(out.mean((2, 3)))

    return ResNet()


# ------------------------------------------------------------------ workers

def _rss_mb():
    """Peak resident set size of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _steps(framework, name, images, labels, eval_images, memory_format="contiguous"):
    """(train_step, infer_step) closures of ``framework`` for model ``name``; torch's
    model and inputs in ``memory_format`` (one of ``TORCH_FORMATS``)."""
    import numpy as np
    import minicnn
    minicnn.manual_seed(0)
    model = build_minicnn(name)
    optimizer = MODELS[name][2]
    if framework == "torch":
        import torch
        import torch.nn.functional as F
        twin, tensor = in_memory_format(torch_twin(model), memory_format)
        model.eval()
        twin.eval()
        with minicnn.no_grad(), torch.no_grad():
            probe = images[:8]
            diff = np.abs(model(minicnn.tensor(probe)).data - twin(tensor(probe)).numpy()).max()
        model.train()
        twin.train()
        if diff > 1e-3:
            raise RuntimeError(f"torch twin of {name} ({memory_format}) disagrees with minicnn: "
                               f"max |logit diff| {diff:.2e}")
        model, loss_fn, no_grad, opt_mod = twin, F.cross_entropy, torch.no_grad, torch.optim
        y = torch.from_numpy(labels)
    else:
        from minicnn import ops, optim
        tensor, loss_fn, no_grad, opt_mod, y = minicnn.tensor, ops.cross_entropy, minicnn.no_grad, optim, labels
    params = list(model.parameters())
    opt = (opt_mod.Adam(params, lr=1e-3) if optimizer == "adam"
           else opt_mod.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4))
    x, xe = tensor(images), tensor(eval_images)

    def train():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        with no_grad():
            model(xe)
        model.train()

    return train, infer


def in_memory_format(twin, memory_format):
    """(``twin`` converted to torch's ``memory_format``, a function making a torch input of
    that format from an ndarray)."""
    import torch
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[memory_format]
    if fmt is torch.contiguous_format:
        return twin, torch.from_numpy
    return twin.to(memory_format=fmt), lambda a: torch.from_numpy(a).contiguous(memory_format=fmt)


def worker(framework, name, threads, warmup, steps, memory_format="contiguous"):
    """Measure one framework on one model in this process; print the result as JSON."""
    if framework == "minicnn":
        import minicnn  # noqa: F401  (first: its thread settings must precede numpy's start)
        from minicnn.fast import runtime
    else:
        tuned = malloc_tuned()  # now, before torch's frees raise glibc's own threshold
        import torch
        torch.set_num_threads(threads)
    import numpy as np
    shape, batch, _ = MODELS[name]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    eval_images = rng.standard_normal((EVAL_BATCH, *shape), dtype=np.float32)
    train, infer = _steps(framework, name, images, labels, eval_images, memory_format)
    train()
    startup = time.perf_counter() - T0
    if framework == "minicnn":
        tuned = (runtime.settings() or {}).get("malloc_tuned")  # its mallopt calls succeeded
    result = {"train": batch / median_seconds(train, steps, time.perf_counter, warmup),
              "infer": EVAL_BATCH / median_seconds(infer, steps, time.perf_counter, max(1, warmup // 2)),
              "startup_s": startup, "peak_rss_mb": _rss_mb(), "malloc_tuned": tuned}
    print(json.dumps(result))


def run_worker(framework, name, args, memory_format="contiguous", **extra_env):
    environ = thread_env(args.threads, **extra_env)
    if framework == "minicnn":  # its conv workers each run a one-thread BLAS; torch keeps its own pool
        environ["OPENBLAS_NUM_THREADS"] = "1"
    else:  # minicnn's malloc settings; minicnn itself must not see these (it would skip its mallopt)
        environ.update(malloc_env())
    return json.loads(run_python([__file__, "--worker", framework, "--model", name, "--threads", str(args.threads),
                                  "--warmup", str(args.warmup), "--steps", str(args.steps),
                                  "--memory-format", memory_format], environ))


# ------------------------------------------------------------------ parent

def torch_best(by_format):
    """Torch at its best in one pair: ``{format: worker result}`` -> per measure the
    better of the formats (``BEST``), and which format gave it (``<measure>_format``)."""
    out = {}
    for key, better in BEST.items():
        fmt = better(by_format, key=lambda f: by_format[f][key])
        out[key], out[f"{key}_format"] = by_format[fmt][key], fmt
    return out


def summarize(runs):
    """Medians per framework and medians of the paired ratios minicnn / torch (at its best)."""
    out = {}
    for key in BEST:
        mine, theirs = [r[key] for r in runs["minicnn"]], [r[key] for r in runs["torch"]]
        out[key] = {"minicnn": statistics.median(mine), "torch": statistics.median(theirs),
                    "ratio": statistics.median(m / t for m, t in zip(mine, theirs)),
                    **{f"torch_{fmt}": statistics.median(r[key] for r in runs[f"torch_{fmt}"])
                       for fmt in TORCH_FORMATS}}
    return out


def winner(runs, key):
    """The format that gave torch's figure for ``key`` in most pairs, with the count."""
    formats = [r[f"{key}_format"] for r in runs["torch"]]
    best = max(TORCH_FORMATS, key=formats.count)
    return f"{best} {formats.count(best)}/{len(formats)}"


def markdown(results, info, setup):
    from machine import markdown_header
    peak = info["sgemm"]["gflops"]
    lines = [markdown_header(info), "",
             "| model | batch | training img/s minicnn / torch | ratio | training GFLOP/s minicnn / torch "
             "(share of sgemm peak) | inference img/s minicnn / torch | ratio | torch's faster format "
             "(training; inference) | peak RSS MB minicnn / torch | ratio | start-up s (warm / empty cache) / torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s, runs, gflops = r["summary"], r["runs"], r["train_gflops"]
        cell = lambda k, f: f"{s[k]['minicnn']:{f}} / {s[k]['torch']:{f}}"  # noqa: E731
        lines.append(f"| {TITLES[name]} | {MODELS[name][1]} | {cell('train', ',.0f')} | **{s['train']['ratio']:.2f}x** "
                     f"| {gflops['minicnn']:.0f} ({gflops['minicnn'] / peak:.0%}) / {gflops['torch']:.0f} "
                     f"({gflops['torch'] / peak:.0%}) "
                     f"| {cell('infer', ',.0f')} | **{s['infer']['ratio']:.2f}x** "
                     f"| {winner(runs, 'train')}; {winner(runs, 'infer')} | {cell('peak_rss_mb', ',.0f')} "
                     f"| {s['peak_rss_mb']['ratio']:.2f}x | {s['startup_s']['minicnn']:.1f} / "
                     f"{r['startup_empty_cache_s']:.1f} / {s['startup_s']['torch']:.1f} |")
    lines += ["", setup, "Ratios: median over alternating process pairs of minicnn / torch at its best "
              "(speed: > 1 means minicnn is faster; memory: > 1 means minicnn uses more). Torch at its best: "
              "per pair and measure the better of its default (contiguous) and channels_last memory formats, "
              "each timed in its own process; the format column says which won in how many pairs. "
              "Training GFLOP/s: img/s x training FLOPs per image (convolutions and linear layers: forward, "
              "weight gradient, input gradient except the first layer's; benchmarks/flops.py), against the "
              "sgemm rate measured above with all threads. Start-up: process start to the end of the first "
              "training step, imports included."]
    return "\n".join(lines)


def measure_model(name, args):
    """Alternating process pairs for one model; the model's entry of the results."""
    run_worker("minicnn", name, args)  # fills the Numba cache, so that every timed run finds it warm
    runs = {"minicnn": [], "torch": [], **{f"torch_{fmt}": [] for fmt in TORCH_FORMATS}}
    order = [("minicnn", None)] + [("torch", fmt) for fmt in TORCH_FORMATS]
    for i in range(args.pairs):
        for fw, fmt in (order if i % 2 == 0 else order[::-1]):
            r = run_worker(fw, name, args, fmt or "contiguous")
            runs[fw if fmt is None else f"torch_{fmt}"].append(r)
            print(f"{name} pair {i + 1}/{args.pairs} {fw:8s} {fmt or '':13s} train {r['train']:7.1f} img/s  infer "
                  f"{r['infer']:7.1f} img/s  peak RSS {r['peak_rss_mb']:5.0f} MB  start-up "
                  f"{r['startup_s']:.2f} s  malloc tuned {r['malloc_tuned']}", flush=True)
        runs["torch"].append(torch_best({fmt: runs[f"torch_{fmt}"][-1] for fmt in TORCH_FORMATS}))
    with tempfile.TemporaryDirectory() as empty:
        cold = run_worker("minicnn", name, args, NUMBA_CACHE_DIR=empty)["startup_s"]
    from flops import count_flops
    flops = count_flops(architecture(name), MODELS[name][0])
    summary = summarize(runs)
    return {"train_batch": MODELS[name][1], "eval_batch": EVAL_BATCH, "flops_per_image": flops,
            "train_gflops": {k: summary["train"][k] * flops["train"] / 1e9 for k in ("minicnn", "torch")},
            "summary": summary, "startup_empty_cache_s": cold, "runs": runs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--pairs", type=int, default=5, help="alternating minicnn/torch pairs per model (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per process (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per process (default 10)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "train_throughput"),
                   help="folder for <machine slug>.json and .md (default benchmarks/results/train_throughput)")
    p.add_argument("--worker", choices=("minicnn", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--model", choices=sorted(MODELS), help=argparse.SUPPRESS)
    p.add_argument("--memory-format", choices=TORCH_FORMATS, default="contiguous", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.threads, args.warmup, args.steps, args.memory_format)

    sys.path.insert(1, ROOT)  # this parent reads the FLOPs and malloc settings of the tree its workers run
    from machine import describe, slug
    info = describe(args.threads)
    load_before, start = os.getloadavg()[0], revision()
    results = {name: measure_model(name, args) for name in args.models}
    load, rev = (load_before, os.getloadavg()[0]), revision_since(start)
    tuned = all(r["malloc_tuned"] for m in results.values() for fw, rs in m["runs"].items() if fw != "torch"
                for r in rs)
    setup = (f"minicnn {rev}, {args.threads} threads per framework, {args.pairs} alternating pairs "
             f"x {args.steps} timed steps (after {args.warmup} warm-up steps), medians; 1-min load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after. Allocator: both frameworks ran with minicnn's glibc "
             f"malloc settings ({', '.join(f'{k}={v}' for k, v in malloc_env().items())}; torch through the "
             f"environment, minicnn by mallopt), "
             + ("confirmed in every process." if tuned else "**NOT confirmed in some processes (see the JSON)**."))
    machine_slug = slug(info)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, machine_slug + ".json"), "w") as f:
        json.dump({"machine": info, "slug": machine_slug, "revision": rev, "threads": args.threads,
                   "pairs": args.pairs, "steps": args.steps, "warmup": args.warmup, "load_average": load, "malloc_env": malloc_env(),
                   "malloc_tuned_everywhere": tuned, "models": results}, f, indent=1)
    table = markdown(results, info, setup)
    with open(os.path.join(args.out, machine_slug + ".md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
