"""The reading path and the switches around it: reference mode, fusion only when asked,
per-thread grad mode, gradient hooks for learners, and the checks on user Functions."""
import threading

import numpy as np
import pytest

import minicnn
from minicnn import Function, nn, ops, tensor
from minicnn.models.efficientnet import efficientnet_lite0
from minicnn.models.fashion import fashion_cnn, fashion_cnn_bn
from minicnn.models.resnet_cifar import resnet20


def test_sequential_runs_every_layer_and_hooks_see_each(rng):
    """Without nn.fuse, a Sequential calls each layer's forward: a hook on the batch norm
    sees its own output (negative values), before the ReLU."""
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2))
    seen = []
    for m in net:
        m.register_forward_hook(lambda m, args, out: seen.append((type(m).__name__, out.data.min())))
    net.eval()
    with minicnn.no_grad():
        net(tensor(rng.standard_normal((2, 2, 6, 6)).astype(np.float32)))
    assert [name for name, _ in seen] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert seen[1][1] < 0 and seen[2][1] == 0


@pytest.mark.parametrize("build, shape", [(resnet20, (3, 3, 32, 32)), (fashion_cnn_bn, (3, 1, 28, 28)),
                                          (fashion_cnn, (3, 1, 28, 28)),
                                          (lambda: efficientnet_lite0(num_classes=5), (1, 3, 64, 64))])
def test_fuse_changes_no_result_and_says_so(build, shape, rng):
    """nn.fuse gives the unfused model's outputs and gradients (to float rounding), in
    training and in eval mode, keeps the state dict's names, and the printed model says
    which parts run fused."""
    minicnn.manual_seed(0)
    plain = build()
    x = rng.standard_normal(shape).astype(np.float32)
    minicnn.manual_seed(0)
    fused = nn.fuse(build())
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert "fused" in repr(fused) and "fused" not in repr(plain)
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(fused, mode)()
        outs = []
        for m in (plain, fused):
            m.zero_grad()
            minicnn.manual_seed(1)                 # the same dropout masks
            y = m(tensor(x))
            y.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape))
            outs.append([y.data] + [p.grad for p in m.parameters()])
        for a, b in zip(*outs):
            np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(a).max()))
    with minicnn.no_grad():                        # eval without gradients: the folded epilogues
        np.testing.assert_allclose(fused(tensor(x)).data, plain(tensor(x)).data, rtol=1e-4, atol=1e-4)


def test_reference_mode_runs_the_textbook_ops_with_the_same_results(rng, monkeypatch):
    """Inside reference_mode no fast route runs (every route's forward is made to fail),
    and a ResNet-20 step gives the fast path's loss and gradients to float32 rounding."""
    model = resnet20()
    x, y = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)
    results = []
    for reference in (False, True):
        model.zero_grad()
        with minicnn.reference_mode(reference):
            assert minicnn.ops.dispatch.reference_enabled() == reference
            loss = ops.cross_entropy(model(tensor(x)), y)
            loss.backward()
        results.append([loss.data] + [p.grad for p in model.parameters()])
        if not reference:
            for route in minicnn.fast.conv.ROUTES.values():
                monkeypatch.setattr(route, "forward", classmethod(lambda *a, **k: 1 / 0))
    for fast, ref in zip(*results):
        np.testing.assert_allclose(ref, fast, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(fast).max()))


def test_grad_mode_is_per_thread():
    seen = []
    with minicnn.no_grad():
        t = threading.Thread(target=lambda: seen.append(minicnn.is_grad_enabled()))
        t.start(), t.join()
        assert not minicnn.is_grad_enabled()
    assert seen == [True] and minicnn.is_grad_enabled()


def test_retain_grad_and_tensor_hooks(rng):
    x = tensor(rng.standard_normal((3, 4)), requires_grad=True)
    a = x * 2
    a.retain_grad()
    seen = []
    handle = a.register_hook(lambda g: seen.append(g.copy()))
    (a * a).sum().backward()
    np.testing.assert_allclose(a.grad, 2 * a.data)
    np.testing.assert_allclose(seen[0], 2 * a.data)
    np.testing.assert_allclose(x.grad, 8 * x.data)
    handle.remove()
    b = x * 3
    b.register_hook(lambda g: g * 0)               # a hook may replace the gradient
    x.grad = None
    b.sum().backward()
    np.testing.assert_array_equal(x.grad, 0)
    assert len(seen) == 1


def test_module_backward_hook_gives_each_layers_input_and_output_gradient(rng):
    """register_full_backward_hook: dL/d(input) and dL/d(output) of each layer, as the
    chain rule through the layers gives them; a layer whose input needs no gradient gets None."""
    net = nn.Sequential(nn.Linear(4, 5, dtype=np.float64), nn.ReLU(), nn.Linear(5, 2, dtype=np.float64))
    grads = {}
    for name, m in net.named_children():
        m.register_full_backward_hook(lambda m, gi, go, name=name: grads.__setitem__(name, (gi, go)))
    x = tensor(rng.standard_normal((3, 4)))
    y = net(x)
    y.backward(np.ones((3, 2)))
    assert grads["0"][0] == (None,)                      # the input wants no gradient
    np.testing.assert_allclose(grads["2"][1][0], np.ones((3, 2)))
    np.testing.assert_allclose(grads["2"][0][0], np.ones((3, 2)) @ net[2].weight.data)
    np.testing.assert_allclose(grads["1"][1][0], grads["2"][0][0])
    np.testing.assert_allclose(grads["0"][1][0], grads["1"][0][0])


def test_backward_must_return_one_gradient_per_input():
    class Twice(Function):
        @staticmethod
        def forward(ctx, x, y):
            return x + y

        @staticmethod
        def backward(ctx, g):
            return g                               # one gradient for two inputs

    a, b = tensor(np.ones(3), requires_grad=True), tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"Twice.backward returned 1 gradient\(s\) for 2 input\(s\)"):
        Twice.apply(a, b).sum().backward()


def test_import_changes_nothing_in_the_process(tmp_path):
    """``import minicnn`` sets no environment variable and applies no runtime setting;
    the first fast route does (fast.runtime.configure)."""
    import os
    import subprocess
    import sys
    code = ("import os; before = dict(os.environ)\n"
            "import minicnn, numpy as np\nfrom minicnn.fast import runtime\n"
            "assert dict(os.environ) == before and runtime.settings() is None\n"
            "minicnn.ops.relu(minicnn.tensor(np.ones(4, np.float32)))\n"
            "print(runtime.settings() is not None, os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["True", "PASSIVE"]


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("layer", ["conv", "maxpool", "avgpool", "global", "flatten", "bn_eval", "bn_fused",
                                   "groupnorm", "instancenorm", "layernorm", "relu", "linear"])
def test_an_empty_batch_gives_an_empty_output_and_gradient(layer, reference):
    """N = 0 flows through every layer as in PyTorch (it used to fail with 'cannot reshape
    array of size 0' in flatten, pooling, group norm and conv's reference)."""
    make = {"conv": lambda: nn.Conv2d(3, 4, 3, padding=1), "maxpool": lambda: nn.MaxPool2d(2),
            "avgpool": lambda: nn.AvgPool2d(2), "global": lambda: nn.GlobalAvgPool2d(),
            "flatten": lambda: nn.Flatten(), "bn_eval": lambda: nn.BatchNorm2d(3).eval(),
            "bn_fused": lambda: nn.fuse(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU())).eval(),
            "groupnorm": lambda: nn.GroupNorm(1, 3), "instancenorm": lambda: nn.InstanceNorm2d(3),
            "layernorm": lambda: nn.LayerNorm((3, 8, 8)), "relu": lambda: nn.ReLU(),
            "linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, 2))}[layer]()
    x = tensor(np.zeros((0, 3, 8, 8), np.float32), requires_grad=True)
    with minicnn.reference_mode(reference):
        y = make(x)
        assert y.shape[0] == 0
        y.backward(np.zeros(y.shape, np.float32))
    assert x.grad.shape == x.shape
