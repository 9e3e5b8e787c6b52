"""The conv, pool and channels-last batch-norm kernels run as plain Python (NUMBA_DISABLE_JIT=1, in a subprocess)
and give the same results as the compiled kernels: the source people read and debug
is the code that runs.  Both are compared with the reference ops (``minicnn.ops``, no
Numba), so a logic error in a kernel fails here whether it is compiled or not."""
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = """
import numpy as np
from minicnn import fast, ops, reference_mode, tensor

def grads(fn, *arrays):
    ts = [tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    y.backward(np.cos(np.arange(y.size)).reshape(y.shape))
    return [y.data] + [t.grad for t in ts]

def run(reference=False):
    with reference_mode(reference):
        return cases(reference)

def cases(reference):
    def fused_bn(x, r=None, **kw):
        if reference:
            return ops.relu(ops.batch_norm(x, **kw) + (0 if r is None else r))
        return fast.batch_norm_fused(x, residual=r, relu=True, **kw)
    route = lambda name: "reference" if reference else name
    rng = np.random.default_rng(0)
    x = rng.permutation(3 * 4 * 7 * 6).reshape(3, 4, 7, 6) * 0.01
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    out = {}
    conv = lambda x, w, b: ops.conv2d(x, w, b, stride=(2, 1), padding="same", dilation=(1, 2), groups=2)
    out["conv"] = grads(conv, x, w, b)
    dw = lambda x, w, b: ops.conv2d(x, w, b, stride=2, padding="same", dilation=(2, 1), groups=4)
    out["depthwise"] = grads(dw, x, rng.standard_normal((8, 1, 3, 2)), rng.standard_normal(8))
    x2 = rng.standard_normal((2, 64, 5, 6))           # wide enough for Winograd
    out["winograd"] = grads(lambda x, w: ops.conv2d(x, w, padding=(1, 0)), x2, rng.standard_normal((64, 64, 3, 3)))
    w4 = lambda x, w, b: ops.conv2d(x, w, b, padding=(2, 1), route=route("winograd4"))   # 7x6 output: cut tiles
    out["winograd4"] = grads(w4, x, rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(3))
    thin = lambda x, w, b: ops.conv2d(x, w, b, stride=(1, 2), padding=(2, 1), dilation=(2, 1))   # im2col
    out["im2col"] = grads(thin, x[:, :2], rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(3))
    out["pointwise"] = grads(lambda x, w: ops.conv2d(x, w), x, rng.standard_normal((5, 4, 1, 1)))
    rowtaps = lambda x, w, b: ops.conv2d(x, w, b, stride=(3, 2), padding=(2, 1), dilation=(2, 1), route=route("rowtaps"))
    out["rowtaps"] = grads(rowtaps, x, rng.standard_normal((5, 4, 3, 3)), rng.standard_normal(5))
    out["rowtaps_valid"] = grads(lambda x, w: ops.conv2d(x, w, route=route("rowtaps")), x,
                                 rng.standard_normal((5, 4, 3, 3)))
    out["max"] = grads(lambda x: ops.max_pool2d(x, 3, 2, 1, ceil_mode=True), x)
    out["max2x2"] = grads(lambda x: ops.max_pool2d(x, 2), x)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)     # channels-last memory
    out["max2x2_nhwc"] = grads(lambda x: ops.max_pool2d(x, 2), x_cl)
    out["global_nhwc"] = grads(lambda x: ops.adaptive_avg_pool2d(x, 1), x_cl)
    out["batch_norm_nhwc"] = grads(lambda x: ops.batch_norm(x, None, None, training=True), x_cl)
    out["bn_add_relu_nhwc"] = grads(lambda x, r: fused_bn(x, r, running_mean=None, running_var=None, training=True),
                                    x_cl, x_cl[::-1] - 0.5)
    out["conv_epilogue"] = [fast.conv2d_fused(x, w[:, :, :, :1], b, padding=(1, 0), groups=2,
                                              scale=np.cos(np.arange(6)),
                                              residual=np.sin(np.arange(3 * 6 * 7 * 6)).reshape(3, 6, 7, 6),
                                              activation="relu", route=route("im2row")).data]
    pooled = lambda x, w, b: fast.conv2d_fused(x, w, b, padding=1, activation="relu", pool=2, route=route("im2row"))
    out["conv_pooled_epilogue"] = grads(pooled, x, rng.standard_normal((5, 4, 3, 3)), rng.standard_normal(5))
    out["depthwise_epilogue"] = [fast.conv2d_fused(x, np.ones((4, 1, 3, 3)), padding=1, groups=4, activation="relu6",
                                                   route=route("depthwise")).data]
    out["bn_relu_eval"] = grads(lambda x: fused_bn(x, running_mean=np.zeros(4), running_var=np.full(4, 2.0)),
                                x - 0.5)
    out["avg"] = grads(lambda x: ops.avg_pool2d(x, (3, 2), 2, 1, True, False), x)
    out["adaptive"] = grads(lambda x: ops.adaptive_avg_pool2d(x, (3, 4)), x)
    out["global"] = grads(lambda x: ops.adaptive_avg_pool2d(x, 1), x)
    return {f"{k}_{i}": a for k, v in out.items() for i, a in enumerate(v)}
"""


def test_kernels_without_jit_match_compiled(tmp_path):
    path = tmp_path / "nojit.npz"
    script = CASES + f"\nimport numba\nassert numba.config.DISABLE_JIT\nnp.savez({str(path)!r}, **run())\n"
    env = dict(os.environ, NUMBA_DISABLE_JIT="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    namespace = {}
    exec(CASES, namespace)
    compiled, reference = namespace["run"](), namespace["run"](reference=True)
    python = np.load(path)
    assert set(python.files) == set(compiled) == set(reference)
    for key, value in compiled.items():
        np.testing.assert_allclose(python[key], value, rtol=1e-13, atol=1e-13, err_msg=key)
        np.testing.assert_allclose(value, reference[key], rtol=1e-10, atol=1e-10, err_msg=key)
