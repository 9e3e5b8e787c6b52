"""Batch, instance, group and layer norm: gradients vs finite differences (float64),
the fused backward vs the same norm composed from primitive ops, the modules'
PyTorch semantics (buffers, momentum, eval) and, where torch is installed, outputs,
gradients and running statistics vs torch over several training steps then eval."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import nn, ops, tensor
from minicnn.gradcheck import gradcheck
from minicnn.nn import fusion as nn_fuse
from minicnn.testing import norm_cases

# kind -> (fused op with signature (x, w, b, groups, eps), axes of the statistics after the
# (N, G, C/G, S) view used by the composed reference)
FUSED = {
    "batch": lambda x, w, b, G, eps: ops.batch_norm(x, None, None, w, b, training=True, eps=eps),
    "instance": lambda x, w, b, G, eps: ops.instance_norm(x, None, None, w, b, eps=eps),
    "group": lambda x, w, b, G, eps: ops.group_norm(x, G, w, b, eps=eps),
}
STAT_AXES = {"batch": (0, 2, 3), "instance": (3,), "group": (2, 3)}


def composed(x, w, b, kind, G, eps):
    """The same norm from primitive minicnn ops: mean, var, sqrt, broadcasting arithmetic."""
    N, C = x.shape[:2]
    G = C if kind != "group" else G
    v = x.reshape(N, G, C // G, -1)
    axes = STAT_AXES[kind]
    xhat = ((v - v.mean(axis=axes, keepdims=True)) / (v.var(axis=axes, keepdims=True) + eps).sqrt())
    affine = (1, C) + (1,) * (x.ndim - 2)
    y = xhat.reshape(*x.shape)
    if w is not None:
        y = y * w.reshape(*affine)
    if b is not None:
        y = y + b.reshape(*affine)
    return y


def _tensors(*arrays):
    return [None if a is None else tensor(a, requires_grad=True) for a in arrays]


@settings(deadline=None)
@given(norm_cases(kinds=tuple(FUSED)))
def test_channel_norm_gradients_match_finite_differences(case):
    kind, x, w, b, G, eps = case
    tx, tw, tb = _tensors(x, w, b)
    inputs = [t for t in (tx, tw, tb) if t is not None]

    def f(*args):
        it = iter(args)
        return FUSED[kind](next(it), next(it) if w is not None else None, next(it) if b is not None else None, G, eps)
    # tiny groups with a small eps make x̂ steep; the finite-difference step must stay well inside
    assert gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


@settings(deadline=None)
@given(norm_cases(kinds=tuple(FUSED)))
def test_fused_channel_norm_equals_composition_of_primitive_ops(case):
    kind, x, w, b, G, eps = case
    g = np.random.default_rng(1).standard_normal(x.shape)
    fused_in, ref_in = _tensors(x, w, b), _tensors(x, w, b)
    y = FUSED[kind](*fused_in, G, eps)
    ref = composed(*ref_in, kind, G, eps)
    np.testing.assert_allclose(y.data, ref.data, rtol=1e-10, atol=1e-10)
    y.backward(g)
    ref.backward(g)
    for got, want in zip(fused_in, ref_in):
        if got is not None:
            np.testing.assert_allclose(got.grad, want.grad, rtol=1e-8, atol=1e-9)


@settings(deadline=None)
@given(st.data())
def test_layer_norm_gradients_and_composition(data):
    lead = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2), label="leading")
    norm = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2), label="normalized"))
    if int(np.prod(norm)) < 2:
        norm = norm + (2,)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.standard_normal((*lead, *norm)) * 3 + 1
    w, b = rng.standard_normal(norm), rng.standard_normal(norm)
    eps = data.draw(st.sampled_from([1e-5, 1e-2]), label="eps")
    tx, tw, tb = _tensors(x, w, b)
    assert gradcheck(lambda x, w, b: ops.layer_norm(x, norm, w, b, eps), [tx, tw, tb], eps=1e-7, rtol=1e-4)

    axes = tuple(range(len(lead), x.ndim))
    rx, rw, rb = _tensors(x, w, b)
    ref = (rx - rx.mean(axis=axes, keepdims=True)) / (rx.var(axis=axes, keepdims=True) + eps).sqrt() * rw + rb
    y = ops.layer_norm(tx, norm, tw, tb, eps)
    np.testing.assert_allclose(y.data, ref.data, rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(x.shape)
    y.backward(g)
    ref.backward(g)
    for got, want in ((tx, rx), (tw, rw), (tb, rb)):
        np.testing.assert_allclose(got.grad, want.grad, rtol=1e-8, atol=1e-9)


def test_eval_batch_norm_gradient_uses_fixed_statistics():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 4, 2, 2)), rng.standard_normal(4), rng.standard_normal(4)
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    tx, tw, tb = _tensors(x, w, b)
    assert gradcheck(lambda x, w, b: ops.batch_norm(x, mean, var, w, b, training=False), [tx, tw, tb])
    y = ops.batch_norm(tx, mean, var, tw, tb, training=False)
    shape = (1, 4, 1, 1)
    expected = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * w.reshape(shape) + b.reshape(shape)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12)


def test_float32_statistics_survive_a_large_mean():
    # sum/sum-of-squares in float32 would lose the variance entirely at this offset
    x = (np.random.default_rng(0).standard_normal((8, 3, 16, 16)) + 1e4).astype(np.float32)
    y = ops.batch_norm(tensor(x), None, None, training=True)
    assert y.dtype == np.float32
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.data, expected, atol=2e-5)
    assert abs(y.data.std() - 1) < 1e-3


def test_running_statistics_momentum_and_cumulative_average():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((5, 3, 4)) * (i + 1) + i for i in range(4)]
    bn, cumulative = nn.BatchNorm1d(3, dtype=np.float64), nn.BatchNorm1d(3, momentum=None, dtype=np.float64)
    mean, var = np.zeros(3), np.ones(3)
    for xb in batches:
        bn(tensor(xb))
        cumulative(tensor(xb))
        mean = 0.9 * mean + 0.1 * xb.mean(axis=(0, 2))
        var = 0.9 * var + 0.1 * xb.var(axis=(0, 2), ddof=1)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-12)
    np.testing.assert_allclose(cumulative.running_mean, np.mean([b.mean(axis=(0, 2)) for b in batches], 0), rtol=1e-12)
    np.testing.assert_allclose(cumulative.running_var, np.mean([b.var(axis=(0, 2), ddof=1) for b in batches], 0),
                               rtol=1e-12)
    assert cumulative.num_batches_tracked.dtype == np.int64 and cumulative.num_batches_tracked.shape == ()
    assert int(cumulative.num_batches_tracked) == 4

    bn.eval()
    x = batches[0]
    expected = (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)
    np.testing.assert_allclose(bn(tensor(x)).data, expected, rtol=1e-10)
    assert int(bn.num_batches_tracked) == 4        # eval does not count batches


def test_module_state_matches_pytorch_names_and_defaults():
    bn = nn.BatchNorm2d(8, eps=1e-3)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert bn.eps == 1e-3 and bn.momentum == 0.1
    assert list(nn.InstanceNorm2d(4).state_dict()) == []
    assert list(nn.InstanceNorm2d(4, affine=True, track_running_stats=True).state_dict()) == \
        ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert list(nn.GroupNorm(2, 4).state_dict()) == ["weight", "bias"]
    assert nn.LayerNorm((3, 4)).weight.shape == (3, 4)
    assert nn.LayerNorm(5, bias=False).bias is None
    assert list(nn.BatchNorm1d(3, affine=False, track_running_stats=False).state_dict()) == []


def test_untracked_batch_norm_uses_batch_statistics_in_eval():
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    bn = nn.BatchNorm2d(2, track_running_stats=False, dtype=np.float64).eval()
    np.testing.assert_allclose(bn(tensor(x)).data.mean(axis=(0, 2, 3)), 0, atol=1e-12)


def test_instance_norm_eval_without_tracking_uses_each_images_statistics():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)) * 5 + 2
    y = nn.InstanceNorm2d(3).eval()(tensor(x)).data
    np.testing.assert_allclose(y.mean(axis=(2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(2, 3)), 1, atol=1e-5)


def _channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@settings(deadline=None)
@given(st.data())
def test_batch_norm_residual_relu_epilogue_equals_separate_ops(data):
    """relu(bn(x) + residual) fused into the normalizing pass: the values and every
    gradient of the separate ops, in training and eval mode, with x and the residual
    each in C order or channels-last."""
    N, C, H, W = (data.draw(st.integers(1, 3), label=k) for k in "NCHW")
    N = max(N, 2) if H * W == 1 else N
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, r, g = (rng.standard_normal((N, C, H, W)) for _ in range(3))
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    mean, var = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    if data.draw(st.booleans(), label="x channels-last"):
        x = _channels_last(x)
    if data.draw(st.booleans(), label="residual channels-last"):
        r = _channels_last(r)
    with_residual = data.draw(st.booleans(), label="residual")
    relu = data.draw(st.booleans(), label="relu")
    training = data.draw(st.booleans(), label="training")
    stats = (None, None) if training else (mean, var)

    def run(fused):
        tx, tw, tb, tr = _tensors(x, w, b, r)
        res = tr if with_residual else None
        if fused:
            y = minicnn.fast.batch_norm_fused(tx, *stats, tw, tb, training=training, residual=res, relu=relu)
        else:
            y = ops.batch_norm(tx, *stats, tw, tb, training=training)
            y = y if res is None else y + res
            y = ops.relu(y) if relu else y
        y.backward(g)
        return [y.data, tx.grad, tw.grad, tb.grad] + ([tr.grad] if with_residual else [])

    for got, want in zip(run(True), run(False)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_batch_norm_epilogue_gradients_match_finite_differences(rng):
    x, r = rng.standard_normal((3, 2, 3, 2)), rng.standard_normal((3, 2, 3, 2))
    w, b = rng.standard_normal(2), rng.standard_normal(2)
    inputs = _tensors(_channels_last(x), w, b, r)
    f = lambda x, w, b, r: minicnn.fast.batch_norm_fused(x, None, None, w, b, training=True, residual=r,  # noqa: E731
                                                        relu=True)
    assert gradcheck(f, inputs, eps=1e-7, atol=1e-6, rtol=1e-5)


def test_fused_module_runs_as_written_under_forward_hooks(rng):
    """nn.bn_act and a fused Sequential's BN -> ReLU: the result of the separate layers
    either way, and a forward hook sees the batch norm's own output."""
    x = rng.standard_normal((4, 3, 5, 5))
    res = rng.standard_normal((4, 3, 5, 5))
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    bn.weight.data[:] = rng.standard_normal(3)
    bn.eval()
    want = ops.relu(bn(tensor(x)) + tensor(res)).data
    np.testing.assert_allclose(nn.bn_act(bn, tensor(x), tensor(res), relu=True).data, want, rtol=1e-12, atol=1e-12)
    seen = []
    bn.register_forward_hook(lambda m, args, out: seen.append(out.data))
    np.testing.assert_allclose(nn.bn_act(bn, tensor(x), tensor(res), relu=True).data, want, rtol=1e-12, atol=1e-12)
    assert len(seen) == 1 and seen[0].min() < 0                     # before the add and the ReLU
    net = nn.fuse(nn.Sequential(nn.BatchNorm2d(3, dtype=np.float64), nn.ReLU(), nn.BatchNorm2d(3, dtype=np.float64),
                                nn.ReLU(), nn.MaxPool2d(2)))
    net.eval()
    net[0].running_mean[:] = rng.standard_normal(3)
    fused = net(tensor(x)).data
    net[1].register_forward_hook(lambda m, args, out: seen.append(out.data))   # now runs layer by layer
    np.testing.assert_array_equal(net(tensor(x)).data, fused)
    assert len(seen) == 2 and seen[1].min() == 0


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_conv_bn_folds_an_eval_batch_norm_into_the_convolution(affine, conv_bias, rng):
    """nn.conv_bn in eval mode without gradients: relu(bn(conv(x)) + residual) as the
    convolution's epilogue, equal to the layers run one by one; with gradients (or in
    training) it runs conv then nn.bn_act, and the gradients reach the convolution."""
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=conv_bias, dtype=np.float64)
    bn = nn.BatchNorm2d(4, affine=affine, dtype=np.float64)
    bn.running_mean[:], bn.running_var[:] = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    if affine:
        bn.weight.data[:], bn.bias.data[:] = rng.standard_normal(4), rng.standard_normal(4)
    if conv_bias:
        conv.bias.data[:] = rng.standard_normal(4)
    bn.eval()
    x, res = tensor(rng.standard_normal((3, 3, 5, 6))), tensor(rng.standard_normal((3, 4, 5, 6)))
    want = ops.relu(bn(conv(x)) + res)
    with minicnn.no_grad():
        np.testing.assert_allclose(nn.conv_bn(conv, bn, x, res, activation="relu").data, want.data, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(nn.conv_bn(conv, bn, x).data, bn(conv(x)).data, rtol=1e-12, atol=1e-12)
    got = nn.conv_bn(conv, bn, x, res, activation="relu")                 # gradients wanted: not folded
    np.testing.assert_allclose(got.data, want.data, rtol=1e-12, atol=1e-12)
    got.sum().backward()
    assert conv.weight.grad is not None and np.abs(conv.weight.grad).max() > 0
    assert not nn_fuse._folds_into(conv, bn, x, res)
    conv.requires_grad_(False)
    bn.requires_grad_(False)                       # a frozen backbone: folded with gradients on, too
    assert nn_fuse._folds_into(conv, bn, x, res)
    np.testing.assert_allclose(nn.conv_bn(conv, bn, x, res, activation="relu").data, want.data, rtol=1e-12, atol=1e-12)


def test_fused_sequential_folds_conv_bn_relu_in_eval_without_gradients(rng):
    net = nn.fuse(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64), nn.BatchNorm2d(3, dtype=np.float64),
                                nn.ReLU(), nn.Conv2d(3, 3, 1, dtype=np.float64), nn.BatchNorm2d(3, dtype=np.float64)))
    net[1].running_mean[:], net[4].running_var[:] = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    net.eval()
    x = tensor(rng.standard_normal((2, 2, 4, 5)))
    with minicnn.no_grad():
        fused = net(x).data
        seen = []
        net[2].register_forward_hook(lambda m, args, out: seen.append(out.data))   # the first triple runs as written
        np.testing.assert_allclose(net(x).data, fused, rtol=1e-12, atol=1e-12)
    assert len(seen) == 1 and seen[0].min() == 0


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_epilogue_matches_torch(training, against_torch, torch, rng):
    """relu(bn(x) + residual) against torch's three ops in float64, the output and the
    gradients of x, weight, bias and residual, x channels-last as inside a network."""
    F = torch.nn.functional
    x = np.ascontiguousarray(rng.standard_normal((4, 3, 5, 6)).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    r, w, b = rng.standard_normal((4, 3, 5, 6)), rng.standard_normal(3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    stats = (None, None) if training else (mean, var)
    t_stats = (None, None) if training else (torch.tensor(mean), torch.tensor(var))
    against_torch(lambda x, r, w, b: minicnn.fast.batch_norm_fused(x, *stats, w, b, training=training, residual=r,
                                                                  relu=True),
                  lambda x, r, w, b: F.relu(F.batch_norm(x, *t_stats, w, b, training=training) + r), x, r, w, b)


@pytest.mark.parametrize("groups, activation", [(1, "relu"), (1, "relu6"), (3, None)])
def test_conv_bn_fold_matches_torch(groups, activation, torch, rng):
    """The inference fold, conv -> eval BN -> + residual -> activation in the convolution's
    epilogue, against torch's separate ops in float64 (depthwise included)."""
    F = torch.nn.functional
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=groups, dtype=np.float64)
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    bn.running_mean[:], bn.running_var[:] = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    bn.weight.data[:], bn.bias.data[:], conv.bias.data[:] = (rng.standard_normal(3) * 3 for _ in range(3))
    bn.eval()
    x, res = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((2, 3, 6, 5))
    with minicnn.no_grad():
        got = nn.conv_bn(conv, bn, tensor(x), tensor(res), activation=activation).data
    T = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    y = F.conv2d(T(x), T(conv.weight.data), T(conv.bias.data), padding=1, groups=groups)
    y = F.batch_norm(y, T(bn.running_mean), T(bn.running_var), T(bn.weight.data), T(bn.bias.data), False, 0.0, bn.eps)
    y = y + T(res)
    y = {None: y, "relu": F.relu(y), "relu6": F.relu6(y)}[activation]
    np.testing.assert_allclose(got, y.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(residual=np.zeros((2, 3, 4, 5))), ValueError, r"residual has shape \(2, 3, 4, 5\), expected \(2, 3, 4, 4\)"),
    (dict(residual=np.zeros((2, 3, 4, 4), np.float32)), TypeError, r"residual dtype float32 differs from input dtype float64"),
])
def test_batch_norm_epilogue_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        minicnn.fast.batch_norm_fused(tensor(np.zeros((2, 3, 4, 4))), None, None, training=True, **kwargs)


@pytest.mark.parametrize("make, x_shape, message", [
    (lambda: nn.BatchNorm2d(3), (2, 4, 3, 3), r"BatchNorm2d\(3\): expected 3 channels on axis 1, got 4"),
    (lambda: nn.BatchNorm2d(3), (2, 3, 3), r"BatchNorm2d\(3\): expected input of shape \(N, C, H, W\)"),
    (lambda: nn.BatchNorm1d(3), (2, 3, 4, 4), r"BatchNorm1d\(3\): expected input of shape \(N, C\) or \(N, C, L\)"),
    (lambda: nn.BatchNorm1d(3), (1, 3), r"more than 1 value per channel"),
    (lambda: nn.InstanceNorm2d(2), (2, 5, 3, 3), r"InstanceNorm2d\(2\): expected 2 channels on axis 1, got 5"),
    (lambda: nn.GroupNorm(2, 4), (2, 6, 3), r"GroupNorm\(2, 4\): expected 4 channels on axis 1, got 6"),
    (lambda: nn.LayerNorm((3, 4)), (2, 4, 3), r"normalized_shape=\(3, 4\) must match"),
])
def test_clear_errors_for_wrong_inputs(make, x_shape, message):
    with pytest.raises(ValueError, match=message):
        make()(tensor(np.zeros(x_shape, np.float32)))


def test_clear_errors_for_bad_configuration():
    with pytest.raises(ValueError, match=r"num_groups=3 must be a positive divisor of num_channels=4"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match=r"num_groups=4 must be a positive int dividing the 6 channels"):
        ops.group_norm(tensor(np.zeros((1, 6, 2))), 4)
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(2,\)"):
        ops.batch_norm(tensor(np.zeros((2, 2))), None, None, tensor(np.ones(3)), training=True)
    with pytest.raises(ValueError, match="running_mean and running_var are needed"):
        ops.batch_norm(tensor(np.zeros((2, 2))), None, None, training=False)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm2d(3, momentum=1.5)


def test_kernels_run_as_python_with_jit_disabled():
    code = ("import numpy as np, minicnn; from minicnn import ops;"
            "x = minicnn.tensor(np.arange(24.0).reshape(2, 3, 4) ** 1.5, requires_grad=True);"
            "y = ops.group_norm(x, 3); y.backward(np.cos(np.arange(24.0)).reshape(2, 3, 4));"
            "print(repr(np.concatenate([y.data.ravel(), x.grad.ravel()]).tolist()))")
    root = os.path.dirname(os.path.dirname(minicnn.__file__))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    x = tensor(np.arange(24.0).reshape(2, 3, 4) ** 1.5, requires_grad=True)
    y = ops.group_norm(x, 3)
    y.backward(np.cos(np.arange(24.0)).reshape(2, 3, 4))
    np.testing.assert_allclose(eval(out.stdout), np.concatenate([y.data.ravel(), x.grad.ravel()]), rtol=1e-12)


# --------------------------------------------------------------------- torch
TORCH_MODULES = {
    "BatchNorm1d-2d-input": (lambda m, **kw: m.BatchNorm1d(5, **kw), (6, 5)),
    "BatchNorm1d-3d-input": (lambda m, **kw: m.BatchNorm1d(5, momentum=None, **kw), (4, 5, 3)),
    "BatchNorm2d": (lambda m, **kw: m.BatchNorm2d(4, eps=1e-3, momentum=0.3, **kw), (3, 4, 5, 5)),
    "InstanceNorm2d-tracking": (lambda m, **kw: m.InstanceNorm2d(3, affine=True, track_running_stats=True, **kw),
                                (2, 3, 4, 4)),
    "InstanceNorm2d": (lambda m, **kw: m.InstanceNorm2d(3, **kw), (2, 3, 4, 4)),
    "GroupNorm": (lambda m, **kw: m.GroupNorm(2, 6, **kw), (3, 6, 2, 3)),
    "LayerNorm": (lambda m, **kw: m.LayerNorm((4, 3), **kw), (2, 5, 4, 3)),
}


@pytest.mark.parametrize("name", TORCH_MODULES)
def test_modules_match_torch_over_training_steps_then_eval(name):
    torch = pytest.importorskip("torch")
    make, shape = TORCH_MODULES[name]
    mine, ref = make(nn, dtype=np.float64), make(torch.nn, dtype=torch.float64)
    rng = np.random.default_rng(3)
    params = {k: rng.standard_normal(v.shape) for k, v in mine.state_dict().items() if k in ("weight", "bias")}
    for k, v in params.items():
        getattr(mine, k).data = v.copy()
        getattr(ref, k).data = torch.tensor(v)
    for _ in range(3):
        x, g = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
        tx, rx = tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        y, ry = mine(tx), ref(rx)
        np.testing.assert_allclose(y.data, ry.detach().numpy(), rtol=1e-10, atol=1e-12)
        y.backward(g)
        ry.backward(torch.tensor(g))
        np.testing.assert_allclose(tx.grad, rx.grad.numpy(), rtol=1e-10, atol=1e-12)
        for k in params:  # one SGD step on both, so the next step runs with new weights
            np.testing.assert_allclose(getattr(mine, k).grad, getattr(ref, k).grad.numpy(), rtol=1e-10, atol=1e-12)
            getattr(mine, k).data -= 0.1 * getattr(mine, k).grad
            getattr(mine, k).grad = None
            with torch.no_grad():
                getattr(ref, k).sub_(0.1 * getattr(ref, k).grad)
            getattr(ref, k).grad = None
        _assert_state_equal(mine, ref)
    mine.eval(), ref.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(mine(tensor(x)).data, ref(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    _assert_state_equal(mine, ref)


def _assert_state_equal(mine, ref):
    theirs = {k: v.numpy() for k, v in ref.state_dict().items()}
    ours = mine.state_dict()
    assert list(ours) == list(theirs)
    for k, v in ours.items():
        np.testing.assert_allclose(v, theirs[k], rtol=1e-10, atol=1e-12, err_msg=k)
