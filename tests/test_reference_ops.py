"""The reference ops of minicnn.ops, run directly (reference_mode), equal the fast routes that
the other test files check against loops and torch: forward, every gradient, and the running
statistics a norm updates.  Without this, the textbook code a learner reads was exercised only
through one ResNet step (mutation testing found reference-only bugs that no test saw)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn import ops, tensor
from minicnn.testing import assert_close, distinct_arrays, norm_cases, pool2d_cases, shapes


def both_ways(fn, arrays, state=()):
    """fn(*tensors) with the fast routes and with the references: outputs, gradients and the
    final values of the ``state`` arrays (copied in for each run) must agree."""
    results = []
    for reference in (False, True):
        ts = [None if a is None else tensor(a.copy(), requires_grad=True) for a in arrays]
        st_copies = [None if s is None else s.copy() for s in state]
        with minicnn.reference_mode(reference):
            y = fn(*ts, *st_copies)
            y.backward(np.cos(np.arange(y.size)).reshape(y.shape))
        results.append([y.data] + [t.grad for t in ts if t is not None] + [s for s in st_copies if s is not None])
    for k, (fast, ref) in enumerate(zip(*results)):
        assert_close(ref, fast, rtol=1e-10, atol=1e-12, name=f"reference vs fast, result {k}")


@given(distinct_arrays(shapes(min_dims=1)))
def test_relu(x):
    both_ways(ops.relu, [x])


@given(pool2d_cases())
def test_pools(case):
    both_ways(lambda t: ops.max_pool2d(t, case.kernel_size, case.stride, case.padding, case.ceil_mode), [case.x])
    both_ways(lambda t: ops.avg_pool2d(t, case.kernel_size, case.stride, case.padding, case.ceil_mode,
                                       case.count_include_pad), [case.x])
    both_ways(lambda t: ops.adaptive_avg_pool2d(t, (2, 1)), [case.x])
    both_ways(lambda t: ops.adaptive_avg_pool2d(t, 1), [case.x])


@given(norm_cases(), st.booleans(), st.sampled_from([0.1, 0.6]))
def test_norms_and_their_running_statistics(case, track, momentum):
    c = case.x.shape[1]
    running = (np.linspace(-1, 1, c), np.linspace(0.5, 2, c)) if track else (None, None)
    norm = {
        "batch": lambda x, w, b, rm, rv: ops.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum,
                                                        eps=case.eps),
        "instance": lambda x, w, b, rm, rv: ops.instance_norm(x, rm, rv, w, b, momentum=momentum, eps=case.eps),
        "group": lambda x, w, b, rm, rv: ops.group_norm(x, case.groups, w, b, eps=case.eps),
        "layer": lambda x, w, b, rm, rv: ops.layer_norm(x, case.x.shape[1:], w, b, eps=case.eps),
    }[case.kind]
    present = [a for a in (case.weight, case.bias) if a is not None]

    def fn(x, *rest):
        it = iter(rest)
        w = next(it) if case.weight is not None else None
        b = next(it) if case.bias is not None else None
        return norm(x, w, b, *rest[len(present):])
    both_ways(fn, [case.x, *present], state=running)


def test_batch_norm_in_eval_mode_uses_the_running_statistics(rng):
    x, rm, rv = rng.standard_normal((3, 4, 2, 2)), rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    both_ways(lambda *t: ops.batch_norm(t[0], rm, rv, t[1], t[2], training=False), [x, w, b])


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.booleans(), st.integers(0, 2**32 - 1))
def test_linear(n, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((n, fin)), rng.standard_normal((fout, fin))] + ([rng.standard_normal(fout)] * bias)
    both_ways(lambda *t: ops.linear(*t), arrays)


def test_linear_gives_exactly_the_gradients_asked_for(rng):
    """Each subset of (x, weight, bias) requiring grad gets its gradients, the others none,
    on both paths (e.g. the input gradient of a frozen layer, as saliency maps need)."""
    arrays = [rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)]
    g = rng.standard_normal((3, 2))
    for reference in (False, True):
        with minicnn.reference_mode(reference):
            full = [tensor(a, requires_grad=True) for a in arrays]
            ops.linear(*full).backward(g)
            for need in ("x", "w", "b", "xb", "wb", "xw"):
                part = [tensor(a, requires_grad=k in need) for a, k in zip(arrays, "xwb")]
                ops.linear(*part).backward(g)
                for f, p, k in zip(full, part, "xwb"):
                    if k in need:
                        np.testing.assert_allclose(p.grad, f.grad, rtol=1e-12, err_msg=f"{need}: {k}")
                    else:
                        assert p.grad is None
