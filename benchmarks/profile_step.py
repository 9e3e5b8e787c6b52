"""Where a training step's time goes: wall time per autograd Function, forward and backward.

    python benchmarks/profile_step.py [--model resnet20] [--steps 10] [--threads 2] [--top 25] [--infer]

Builds the model of ``benchmarks/train_throughput.py`` (fused, as it trains), runs
``--warmup`` untimed steps, then times every Function's forward and backward (wall
clock, summed over ``--steps`` steps, per Function and input shape) and the optimizer
step (with ``--infer``: an inference step of train_throughput's batch 256 in eval mode,
without a graph, forwards only).  Prints a table sorted by time, with each row's share of the step and, for
convolutions, the route that ran and the GFLOP/s it reached.  The sum of the rows is
less than the step: the remainder is the autograd engine's own work (graph walk,
gradient accumulation) and the loss.
"""
import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import EVAL_BATCH, MODELS, build_minicnn  # noqa: E402


def _all_functions(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_functions(sub)


def _conv_flops(shapes, out_hw):
    """Multiply-adds x 2 of a convolution's forward from its input and weight shapes and
    output size (before any pooling in its epilogue)."""
    (n, _, _, _), (cout, cin_g, kh, kw) = shapes[0], shapes[1]
    return 2.0 * n * cout * out_hw[0] * out_hw[1] * cin_g * kh * kw


def instrument(totals):
    """Wrap every Function's forward and backward to add their wall time to ``totals``
    (a Function run inside another, as BatchNorm runs ChannelNorm's forward, counts once)."""
    from minicnn.tensor import Function
    depth = [0]

    def wrap(cls, kind, raw):
        bound = isinstance(raw, classmethod)
        fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw

        def timed(*call, **kw):
            klass, ctx, args = (call[0], call[1], call[2:]) if bound else (cls, call[0], call[1:])
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                out = fn(*call, **kw)
            finally:
                depth[0] -= 1
            dt = time.perf_counter() - t0
            if depth[0]:
                return out
            if kind == "forward":
                shapes = tuple(getattr(a, "shape", None) for a in args if hasattr(a, "shape"))
                ctx._profile_key = (klass.__name__, shapes)
                is_conv = len(shapes) >= 2 and len(shapes[0]) == 4 and len(shapes[1]) == 4
                flops = _conv_flops(shapes, kw.get("out_hw", out.shape[2:])) if is_conv else 0.0
                ctx._profile_flops = flops
                ctx._profile_route = getattr(klass, "name", None) or ""
            key = ctx._profile_key
            row = totals[(key, kind)]
            row[0] += dt
            row[1] += 1
            row[2] = ctx._profile_flops * (2.0 if kind == "backward" else 1.0)
            row[3] = ctx._profile_route
            return out
        return classmethod(timed) if bound else staticmethod(timed)

    for cls in set(_all_functions(Function)):
        for kind in ("forward", "backward"):
            if kind in cls.__dict__:
                setattr(cls, kind, wrap(cls, kind, cls.__dict__[kind]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--infer", action="store_true", help="time inference (eval, no graph, batch 256)")
    args = p.parse_args(argv)
    os.environ.setdefault("MINICNN_NUM_THREADS", str(args.threads))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np
    import minicnn
    from minicnn import ops, optim

    shape, batch, opt_name = MODELS[args.model]
    minicnn.manual_seed(0)
    model = build_minicnn(args.model)
    params = list(model.parameters())
    opt = optim.Adam(params, lr=1e-3) if opt_name == "adam" else optim.SGD(params, lr=0.05, momentum=0.9,
                                                                           weight_decay=5e-4)
    rng = np.random.default_rng(0)
    if args.infer:
        batch = EVAL_BATCH
        model.eval()
    x = minicnn.tensor(rng.standard_normal((batch, *shape), dtype=np.float32))
    y = rng.integers(0, 10, batch)

    def step(timed_opt=None):
        if args.infer:
            with minicnn.no_grad():
                model(x)
            return
        loss = ops.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        t0 = time.perf_counter()
        opt.step()
        if timed_opt is not None:
            timed_opt.append(time.perf_counter() - t0)

    for _ in range(args.warmup):
        step()
    totals = collections.defaultdict(lambda: [0.0, 0, 0.0, ""])
    instrument(totals)
    opt_times, t0 = [], time.perf_counter()
    for _ in range(args.steps):
        step(opt_times)
    total = (time.perf_counter() - t0) / args.steps
    rows = sorted(((v[0] / args.steps, k, v) for k, v in totals.items()), key=lambda r: -r[0])
    print(f"{args.model} {'inference' if args.infer else 'training'}, batch {batch}, {args.threads} threads: "
          f"{total * 1e3:.1f} ms per step "
          f"({batch / total:,.0f} img/s)" + ("" if args.infer else
                                             f"; optimizer {sum(opt_times) / args.steps * 1e3:.1f} ms"))
    print(f"{'ms/step':>8} {'share':>6} {'GFLOP/s':>8}  function  pass  route  input shapes")
    covered = 0.0
    for rank, (ms, ((name, shapes), kind), v) in enumerate(rows):
        covered += ms
        if rank >= args.top:
            continue
        rate = f"{v[2] * v[1] / args.steps / ms / 1e9:8.1f}" if v[2] else " " * 8
        print(f"{ms * 1e3:8.2f} {ms / total:6.1%} {rate}  {name} {kind} {v[3]} {shapes}")
    print(f"Functions: {covered * 1e3:.1f} ms ({covered / total:.0%} of the step); the rest is the engine, "
          "the loss and the optimizer")


if __name__ == "__main__":
    main()
