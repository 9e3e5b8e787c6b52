"""End-to-end speed and memory of three reference models, minicnn vs PyTorch CPU.

    python benchmarks/train_throughput.py [--pairs 5] [--steps 10] [--threads 2] [--models ...]

Models (input shape, training batch; inference batch 256 for all):

    fashion_cnn     the Fashion-MNIST CNN of examples/fashion_mnist.py   (1, 28, 28), 64, Adam
    improved_cnn    the seeds' improved CIFAR CNN (conv-BN, dropout)     (3, 32, 32), 128, Adam
    resnet20        ResNet-20 (He et al. 2016, option-A shortcuts)       (3, 32, 32), 128, SGD

The torch twin of each model is built from the minicnn model itself (same layers,
same weights loaded from its state dict) and checked to give the same logits, so
both frameworks do exactly the same work.

Per model and framework, in a fresh process:

* training img/s: forward + cross-entropy + backward + optimizer step, median of
  ``--steps`` steps after ``--warmup``;
* inference img/s: eval mode, no graph, batch 256, median likewise;
* peak RSS of the process (``ru_maxrss``: framework, model, data and all buffers);
* start-up: from the first line of the worker (before ``import minicnn`` or
  ``import torch``) to the end of the first training step, with a warm Numba
  cache.  One more minicnn process per model with an empty ``NUMBA_CACHE_DIR``
  measures the start-up that compiles every kernel (a first install).

The frameworks alternate (minicnn, torch, torch, minicnn, ...) because a neighbour
on this shared machine can halve 2-thread speed for tens of seconds; the ratios
reported are medians over pairs measured back to back (> 1: minicnn faster or,
for memory, larger).  Writes ``train_throughput.json`` and ``train_throughput.md``
to ``--out`` and prints the Markdown table.
"""
import time

T0 = time.perf_counter()  # start-up is measured from here, before any framework import

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from harness import ROOT, median_seconds, run_python, thread_env  # noqa: E402

EVAL_BATCH = 256
# name -> (input shape, training batch, optimizer)
MODELS = {
    "fashion_cnn": ((1, 28, 28), 64, "adam"),
    "improved_cnn": ((3, 32, 32), 128, "adam"),
    "resnet20": ((3, 32, 32), 128, "sgd"),
}
TITLES = {"fashion_cnn": "Fashion-MNIST CNN", "improved_cnn": "improved CIFAR CNN (BN)", "resnet20": "ResNet-20"}


def build_minicnn(name):
    from minicnn.models import fashion_cnn, improved_cnn_cifar, resnet20
    from minicnn.nn import fuse
    return fuse({"fashion_cnn": fashion_cnn, "improved_cnn": improved_cnn_cifar, "resnet20": resnet20}[name]())


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


def _steps(framework, name, images, labels, eval_images):
    """(train_step, infer_step) closures of ``framework`` for model ``name``."""
    import numpy as np
    import minicnn
    minicnn.manual_seed(0)
    model = build_minicnn(name)
    optimizer = MODELS[name][2]
    if framework == "torch":
        import torch
        import torch.nn.functional as F
        twin = torch_twin(model)
        model.eval()
        twin.eval()
        with minicnn.no_grad(), torch.no_grad():
            probe = images[:8]
            diff = np.abs(model(minicnn.tensor(probe)).data - twin(torch.from_numpy(probe)).numpy()).max()
        model.train()
        twin.train()
        if diff > 1e-3:
            raise RuntimeError(f"torch twin of {name} disagrees with minicnn: max |logit diff| {diff:.2e}")
        model, tensor, loss_fn, no_grad, opt_mod = twin, torch.from_numpy, F.cross_entropy, torch.no_grad, torch.optim
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


def worker(framework, name, threads, warmup, steps):
    """Measure one framework on one model in this process; print the result as JSON."""
    if framework == "minicnn":
        import minicnn  # noqa: F401  (first: its thread settings must precede numpy's start)
    else:
        import torch
        torch.set_num_threads(threads)
    import numpy as np
    shape, batch, _ = MODELS[name]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    eval_images = rng.standard_normal((EVAL_BATCH, *shape), dtype=np.float32)
    train, infer = _steps(framework, name, images, labels, eval_images)
    train()
    startup = time.perf_counter() - T0
    result = {"train": batch / median_seconds(train, steps, time.perf_counter, warmup),
              "infer": EVAL_BATCH / median_seconds(infer, steps, time.perf_counter, max(1, warmup // 2)),
              "startup_s": startup, "peak_rss_mb": _rss_mb()}
    print(json.dumps(result))


def run_worker(framework, name, args, **extra_env):
    environ = thread_env(args.threads, **extra_env)
    if framework == "minicnn":  # its conv workers each run a one-thread BLAS; torch keeps its own pool
        environ["OPENBLAS_NUM_THREADS"] = "1"
    return json.loads(run_python([__file__, "--worker", framework, "--model", name, "--threads", str(args.threads),
                                  "--warmup", str(args.warmup), "--steps", str(args.steps)], environ))


# ------------------------------------------------------------------ parent

def summarize(runs):
    """Medians per framework and medians of the paired ratios minicnn / torch."""
    out = {}
    for key in ("train", "infer", "peak_rss_mb", "startup_s"):
        mine, theirs = [r[key] for r in runs["minicnn"]], [r[key] for r in runs["torch"]]
        out[key] = {"minicnn": statistics.median(mine), "torch": statistics.median(theirs),
                    "ratio": statistics.median(m / t for m, t in zip(mine, theirs))}
    return out


def markdown(results, setup):
    lines = ["| model | batch | training img/s minicnn / torch | ratio | inference img/s minicnn / torch | ratio "
             "| peak RSS MB minicnn / torch | ratio | start-up s (warm / empty cache) / torch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["summary"]
        cell = lambda k, f: f"{s[k]['minicnn']:{f}} / {s[k]['torch']:{f}}"  # noqa: E731
        lines.append(f"| {TITLES[name]} | {MODELS[name][1]} | {cell('train', ',.0f')} | **{s['train']['ratio']:.2f}x** "
                     f"| {cell('infer', ',.0f')} | **{s['infer']['ratio']:.2f}x** | {cell('peak_rss_mb', ',.0f')} "
                     f"| {s['peak_rss_mb']['ratio']:.2f}x | {s['startup_s']['minicnn']:.1f} / "
                     f"{r['startup_empty_cache_s']:.1f} / {s['startup_s']['torch']:.1f} |")
    lines += ["", setup, "Ratios: median over alternating minicnn/torch process pairs of minicnn / torch "
              "(speed: > 1 means minicnn is faster; memory: > 1 means minicnn uses more). Start-up: "
              "process start to the end of the first training step, imports included."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--pairs", type=int, default=5, help="alternating minicnn/torch pairs per model (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per process (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per process (default 10)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--worker", choices=("minicnn", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--model", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.threads, args.warmup, args.steps)

    load_before = os.getloadavg()[0]
    results = {}
    for name in args.models:
        run_worker("minicnn", name, args)  # fills the Numba cache, so that every timed run finds it warm
        runs = {"minicnn": [], "torch": []}
        for i in range(args.pairs):
            for fw in (("minicnn", "torch") if i % 2 == 0 else ("torch", "minicnn")):
                runs[fw].append(run_worker(fw, name, args))
                r = runs[fw][-1]
                print(f"{name} pair {i + 1}/{args.pairs} {fw:8s} train {r['train']:7.1f} img/s  infer "
                      f"{r['infer']:7.1f} img/s  peak RSS {r['peak_rss_mb']:5.0f} MB  start-up "
                      f"{r['startup_s']:.2f} s", flush=True)
        with tempfile.TemporaryDirectory() as empty:
            cold = run_worker("minicnn", name, args, NUMBA_CACHE_DIR=empty)["startup_s"]
        results[name] = {"train_batch": MODELS[name][1], "eval_batch": EVAL_BATCH, "summary": summarize(runs),
                         "startup_empty_cache_s": cold, "runs": runs}
    load, revision = (load_before, os.getloadavg()[0]), _revision()
    setup = (f"minicnn {revision}, {args.threads} threads per framework, torch {_torch_version()}, "
             f"{args.pairs} alternating pairs "
             f"x {args.steps} timed steps (after {args.warmup} warm-up steps), medians; 1-min load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after, on a {os.cpu_count()}-core machine.")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train_throughput.json"), "w") as f:
        json.dump({"revision": revision, "threads": args.threads, "pairs": args.pairs, "steps": args.steps, "warmup": args.warmup,
                   "load_average": load, "models": results}, f, indent=1)
    table = markdown(results, setup)
    with open(os.path.join(args.out, "train_throughput.md"), "w") as f:
        f.write(table + "\n")
    print(table)


def _revision():
    """The checkout's commit (with '+changes' if the tree differs from it outside the
    benchmark results, which a previous run may have rewritten), or 'unknown'."""
    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
        return (head + ("+changes" if changed else "")) or "unknown"
    except OSError:
        return "unknown"


def _torch_version():
    out = run_python(["-c", "import torch; print(torch.__version__)"], thread_env(1))
    return out.strip()


if __name__ == "__main__":
    main()
