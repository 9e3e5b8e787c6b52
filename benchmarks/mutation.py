"""Mutation testing: plant one small bug at a time and see whether the tests catch it.

    python benchmarks/mutation.py --sample 60 --seed 0            # a random sample of mutants
    python benchmarks/mutation.py --files minicnn/train/callbacks.py --list   # what would be tried

A self-written mutator (no dependency): it parses each target file with ``ast`` and
makes one change per mutant, written over the original characters so the rest of the
file (and every line number) stays as it was:

* comparison operators: ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``;
* arithmetic operators: ``+`` <-> ``-``, ``*`` <-> ``/``, ``//`` -> ``/``;
* boolean operators: ``and`` <-> ``or``;
* integer constants: n -> n + 1; ``True`` <-> ``False``.

Constants in docstrings, error messages (f-strings) and ``raise`` lines are left alone:
a mutant there changes nothing a test should care about.  Each mutant runs in a copy of
the working tree (the shared tree is never touched) with the test files that exercise
its source file (``TESTS``), stopped at the first failure (``-x``).  A mutant is *killed*
when the tests fail or time out, *survived* when they pass.  A survivor is either a gap
in the tests or an equivalent mutant (a change of no observable effect); the report
lists each with its line, for a person to judge.

Results (kill rate, survivors) go to ``--out`` as JSON and are printed as a table.
"""
import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["minicnn/ops", "minicnn/optim", "minicnn/train/callbacks.py", "minicnn/data/transforms.py"]

# Which tests exercise which source file (the first match wins).
TESTS = {
    "minicnn/ops/activation.py": ["tests/test_activation.py", "tests/test_reference_ops.py"],
    "minicnn/ops/arith.py": ["tests/test_ops_math.py"],
    "minicnn/ops/reduce.py": ["tests/test_ops_math.py"],
    "minicnn/ops/special.py": ["tests/test_activation.py", "tests/test_ops_math.py"],
    "minicnn/ops/shape.py": ["tests/test_ops_shape.py"],
    "minicnn/ops/conv.py": ["tests/test_conv.py", "tests/test_reference_core.py"],
    "minicnn/ops/pool.py": ["tests/test_pool.py", "tests/test_reference_ops.py"],
    "minicnn/ops/norm.py": ["tests/test_norm.py", "tests/test_reference_ops.py"],
    "minicnn/ops/loss.py": ["tests/test_loss.py"],
    "minicnn/ops/dropout.py": ["tests/test_dropout.py"],
    "minicnn/ops/linear.py": ["tests/test_nn_module.py", "tests/test_bad_input.py", "tests/test_reference_ops.py"],
    "minicnn/ops/checks.py": ["tests/test_bad_input.py"],
    "minicnn/ops/dispatch.py": ["tests/test_reference_core.py"],
    "minicnn/ops/util.py": ["tests/test_ops_math.py", "tests/test_ops_shape.py"],
    "minicnn/ops/__init__.py": ["tests/test_ops_math.py", "tests/test_tensor.py"],
    "minicnn/optim/lr_scheduler.py": ["tests/test_lr_scheduler.py"],
    "minicnn/optim/": ["tests/test_optim.py"],
    "minicnn/train/callbacks.py": ["tests/test_train_callbacks.py"],
    "minicnn/data/transforms.py": ["tests/test_data_transforms.py"],
}

SWAPS = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
         ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*", ast.FloorDiv: "/",
         ast.And: "or", ast.Or: "and"}
SYMBOLS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
           ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.And: "and", ast.Or: "or"}


def target_files(paths):
    out = []
    for p in paths:
        full = os.path.join(ROOT, p)
        if os.path.isdir(full):
            out += sorted(os.path.join(p, f) for f in os.listdir(full) if f.endswith(".py"))
        else:
            out.append(p)
    return out


def tests_for(path):
    for prefix, tests in TESTS.items():
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return tests
    raise KeyError(f"no tests listed for {path}: add it to TESTS")


def _skipped_lines(tree):
    """Lines of docstrings, f-strings and raise statements: mutants there are noise."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.JoinedStr)) or (
                isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant)
                and isinstance(node.value.value, str)):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def _between(lines, start, end, symbol):
    """(line, col) of ``symbol`` as a token between two (line, col) positions on one line, or None."""
    (l0, c0), (l1, c1) = start, end
    if l0 != l1:
        return None
    gap = lines[l0 - 1][c0:c1]
    stripped = gap.replace("(", " ").replace(")", " ")
    parts = stripped.split()
    if parts != [symbol]:
        return None
    return l0, c0 + gap.index(symbol)


def mutants(path):
    """Every mutant of ``path``: dicts with line, col, old, new (text) and a description."""
    source = open(os.path.join(ROOT, path), encoding="utf-8").read()
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    skip = _skipped_lines(tree)
    found = []

    def add(line, col, old, new):
        if line not in skip:
            found.append(dict(path=path, line=line, col=col, old=old, new=new,
                              text=lines[line - 1].strip()))

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in SWAPS:
            at = _between(lines, (node.left.end_lineno, node.left.end_col_offset),
                          (node.right.lineno, node.right.col_offset), SYMBOLS[type(node.op)])
            if at:
                add(*at, SYMBOLS[type(node.op)], SWAPS[type(node.op)])
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS:
            op = type(node.ops[0])
            at = _between(lines, (node.left.end_lineno, node.left.end_col_offset),
                          (node.comparators[0].lineno, node.comparators[0].col_offset), SYMBOLS[op])
            if at:
                add(*at, SYMBOLS[op], SWAPS[op])
        elif isinstance(node, ast.BoolOp) and type(node.op) in SWAPS and len(node.values) == 2:
            a, b = node.values
            at = _between(lines, (a.end_lineno, a.end_col_offset), (b.lineno, b.col_offset), SYMBOLS[type(node.op)])
            if at:
                add(*at, SYMBOLS[type(node.op)], SWAPS[type(node.op)])
        elif isinstance(node, ast.Constant) and node.lineno == node.end_lineno:
            old = lines[node.lineno - 1][node.col_offset:node.end_col_offset]
            if isinstance(node.value, bool):
                add(node.lineno, node.col_offset, old, str(not node.value))
            elif isinstance(node.value, int) and old.isdigit():
                add(node.lineno, node.col_offset, old, str(node.value + 1))
    found.sort(key=lambda m: (m["line"], m["col"]))
    return found


def apply(source, m):
    lines = source.splitlines(keepends=True)
    line = lines[m["line"] - 1]
    assert line[m["col"]:m["col"] + len(m["old"])] == m["old"], (m, line)
    lines[m["line"] - 1] = line[:m["col"]] + m["new"] + line[m["col"] + len(m["old"]):]
    return "".join(lines)


def copy_tree(dest):
    for name in ("minicnn", "tests", "docs", "examples", "README.md", "pyproject.toml"):
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
        elif os.path.exists(src):
            shutil.copy2(src, dest)


def run_tests(tree, tests, timeout):
    env = dict(os.environ, PYTHONPATH=tree, MINICNN_AUTOTUNE="0")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        status = "survived" if proc.returncode == 0 else "killed"
        tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    except subprocess.TimeoutExpired:
        status, tail = "timeout", []
    return status, time.perf_counter() - start, " ".join(tail)


def write(args, every, chosen, results):
    killed = sum(r["status"] != "survived" for r in results)
    summary = dict(mutants_total=len(every), sampled=len(chosen), run=len(results), killed=killed,
                   kill_rate=round(killed / max(len(results), 1), 3), seed=args.seed, python=sys.version.split()[0],
                   command=" ".join(["python"] + sys.argv), results=results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="*", default=TARGETS, help="files or folders to mutate")
    ap.add_argument("--sample", type=int, default=0, help="run this many mutants drawn at random (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mutant before it counts as killed")
    ap.add_argument("--at", nargs="*", default=(), help="only the mutants at these path:line places")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "mutation.json"))
    args = ap.parse_args()

    every = [m for f in target_files(args.files) for m in mutants(f)
             if not args.at or f"{m['path']}:{m['line']}" in args.at]
    chosen = random.Random(args.seed).sample(every, args.sample) if 0 < args.sample < len(every) else every
    if args.list:
        for m in every:
            print(f"{m['path']}:{m['line']}: {m['old']} -> {m['new']}    {m['text']}")
        print(f"{len(every)} mutants")
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="minicnn-mutation-") as tree:
        copy_tree(tree)
        for path in sorted({m["path"] for m in chosen}):    # the unmutated tests must pass first
            status, seconds, tail = run_tests(tree, tests_for(path), args.timeout)
            if status != "survived":
                sys.exit(f"the tests of {path} fail without any mutant ({status}: {tail}); fix them first")
        for k, m in enumerate(chosen):
            target = os.path.join(tree, m["path"])
            original = open(target, encoding="utf-8").read()
            with open(target, "w", encoding="utf-8") as f:
                f.write(apply(original, m))
            try:
                status, seconds, tail = run_tests(tree, tests_for(m["path"]), args.timeout)
            finally:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(original)
            results.append(dict(m, status=status, seconds=round(seconds, 1), pytest=tail))
            print(f"[{k + 1}/{len(chosen)}] {status:8s} {m['path']}:{m['line']}: {m['old']} -> {m['new']}  "
                  f"({seconds:.0f} s)  {m['text'][:70]}", flush=True)
            summary = write(args, every, chosen, results)      # after every mutant: a stopped run keeps its results
    killed = summary["killed"]
    print(f"\nkilled {killed} of {len(results)} ({100 * summary['kill_rate']:.1f}%); "
          f"{len(every)} mutants in all; results in {args.out}")
    for r in results:
        if r["status"] == "survived":
            print(f"  survived: {r['path']}:{r['line']}: {r['old']} -> {r['new']}    {r['text']}")


if __name__ == "__main__":
    main()
