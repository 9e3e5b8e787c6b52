"""Module registration and traversal, state dicts, freezing, hooks, containers, Linear and init."""
import importlib
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import nn, ops, optim, tensor
from minicnn.gradcheck import gradcheck
from minicnn.nn import init
from minicnn.testing import arrays


class Block(nn.Module):
    """Linear -> ReLU -> Linear, with a buffer, as a nested module."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 2, bias=False)
        self.register_buffer("running", np.zeros(2))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
        self.scale = nn.Parameter(np.ones(1, np.float32))

    def forward(self, x):
        return self.head(self.block(x)) * self.scale


# PyTorch's order: a module's own parameters, then its children's, depth first
PARAM_NAMES = ["scale", "block.fc1.weight", "block.fc1.bias", "block.fc2.weight", "head.0.weight", "head.0.bias"]


def test_parameters_and_modules_are_registered_with_dotted_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == PARAM_NAMES
    assert len(list(net.parameters())) == 6
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.fc1", "block.act", "block.fc2",
                                                   "head", "head.0", "head.1"]
    assert [type(m) for m in net.children()] == [Block, nn.Sequential]
    assert dict(net.named_buffers()).keys() == {"block.running"}
    assert net.block.fc2.bias is None


def test_reassigning_and_deleting_attributes_updates_registration():
    net = Block()
    net.fc2 = nn.Identity()
    assert "fc2.weight" not in dict(net.named_parameters())
    net.extra = nn.Parameter(np.zeros(3, np.float32))
    assert "extra" in dict(net.named_parameters())
    del net.extra
    assert "extra" not in dict(net.named_parameters())
    net.fc1 = 5  # a plain attribute now
    assert net.fc1 == 5 and "fc1.weight" not in dict(net.named_parameters())


def test_shared_parameters_and_modules_count_once():
    shared = nn.Linear(2, 2)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(seq.parameters())) == 2
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_module_without_super_init_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\)\.__init__\(\) before assigning 'fc'"):
        Broken()


def test_missing_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="nope"):
        nn.Linear(2, 2).nope


def test_train_and_eval_set_every_submodule():
    net = Net()
    assert net.training
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


# ------------------------------------------------------------------ state dicts
def test_state_dict_is_ordered_copies_with_buffers():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == ["scale", "block.running", "block.fc1.weight", "block.fc1.bias", "block.fc2.weight",
                        "head.0.weight", "head.0.bias"]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["block.fc1.weight"][...] = 123.0
    sd["block.running"][...] = 7.0
    assert not np.any(net.block.fc1.weight.data == 123.0)
    assert not np.any(net.block.running == 7.0)


def test_state_dict_keys_match_the_same_net_in_torch(torch):
    tnn = torch.nn

    class TorchBlock(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = tnn.Linear(3, 4), tnn.ReLU(), tnn.Linear(4, 2, bias=False)
            self.register_buffer("running", torch.zeros(2))

    class TorchNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = TorchBlock(), tnn.Sequential(tnn.Linear(2, 2), tnn.Tanh())
            self.scale = tnn.Parameter(torch.ones(1))

    ref = TorchNet()
    assert list(Net().state_dict()) == list(ref.state_dict())
    assert [n for n, _ in Net().named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in Net().named_modules()] == [n for n, _ in ref.named_modules()]


def test_state_dict_round_trip_restores_outputs(rng):
    a, b = Net(), Net()
    for p in a.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    a.block.running = np.array([1.0, 2.0])
    x = tensor(rng.standard_normal((5, 3)).astype(np.float32))
    assert not np.array_equal(a(x).data, b(x).data)
    assert b.load_state_dict(a.state_dict()) == ([], [])
    np.testing.assert_array_equal(b(x).data, a(x).data)
    np.testing.assert_array_equal(b.block.running, [1.0, 2.0])
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pb.dtype == pa.dtype and pb.data is not pa.data, name


def test_loading_keeps_the_parameter_objects_and_dtypes():
    net = nn.Linear(2, 2)
    weight = net.weight
    net.load_state_dict({"weight": np.ones((2, 2)), "bias": np.zeros(2)})   # float64 arrays
    assert net.weight is weight and weight.dtype == np.float32
    np.testing.assert_array_equal(weight.data, np.ones((2, 2)))


def test_strict_load_lists_every_problem_and_changes_nothing():
    net = Net()
    before = net.state_dict()
    sd = net.state_dict()
    del sd["block.fc1.bias"], sd["scale"]
    sd["head.0.weight"] = np.zeros((3, 2))
    sd["block.fc9.weight"] = np.zeros(1)
    with pytest.raises(ValueError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    for needle in ["missing keys: scale, block.fc1.bias", "unexpected keys: block.fc9.weight",
                   "head.0.weight: checkpoint shape (3, 2), model shape (2, 2)"]:
        assert needle in msg
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_non_strict_load_reports_missing_and_unexpected_but_still_checks_shapes():
    net = nn.Linear(3, 2)
    missing, unexpected = net.load_state_dict({"weight": np.ones((2, 3)), "other": np.ones(1)}, strict=False)
    assert missing == ["bias"] and unexpected == ["other"]
    np.testing.assert_array_equal(net.weight.data, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"weight: checkpoint shape \(3, 2\), model shape \(2, 3\)"):
        net.load_state_dict({"weight": np.ones((3, 2))}, strict=False)


# ------------------------------------------------------------- freezing, hooks
def test_requires_grad_false_freezes_and_the_optimizer_skips(rng):
    net = Net()
    net.block.requires_grad_(False)
    assert not any(p.requires_grad for p in net.block.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    frozen = {n: p.data.copy() for n, p in net.named_parameters() if n.startswith("block")}
    opt = optim.SGD(net.parameters(), lr=0.1)
    x = tensor(rng.standard_normal((4, 3)).astype(np.float32))
    net(x).sum().backward()
    assert all(p.grad is None for p in net.block.parameters())
    assert all(p.grad is not None for p in net.head.parameters())
    before_head = net.head[0].weight.data.copy()
    opt.step()
    for n, p in net.named_parameters():
        if n in frozen:
            np.testing.assert_array_equal(p.data, frozen[n])
    assert not np.array_equal(net.head[0].weight.data, before_head)
    net.requires_grad_(True)
    assert all(p.requires_grad for p in net.parameters())


def test_zero_grad_clears_every_parameter(rng):
    net = Net()
    net(tensor(rng.standard_normal((2, 3)).astype(np.float32))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_forward_hook_sees_inputs_and_output_and_can_replace_it():
    layer = nn.Linear(2, 2)
    calls = []
    handle = layer.register_forward_hook(lambda m, inputs, out: calls.append((m, inputs, out)))
    x = tensor(np.ones((1, 2), np.float32))
    y = layer(x)
    assert calls == [(layer, (x,), y)]
    handle.remove()
    layer(x)
    assert len(calls) == 1
    layer.register_forward_hook(lambda m, inputs, out: out * 0)
    np.testing.assert_array_equal(layer(x).data, np.zeros((1, 2)))


def test_repr_is_readable():
    text = repr(Net())
    assert "(block): Block(" in text
    assert "(fc1): Linear(in_features=3, out_features=4, bias=True)" in text
    assert "(fc2): Linear(in_features=4, out_features=2, bias=False)" in text
    assert "(0): Linear(in_features=2, out_features=2, bias=True)" in text and "(1): Tanh()" in text
    assert repr(nn.Parameter(np.zeros(1, np.float32))).startswith("Parameter containing:")


# ------------------------------------------------------------------- containers
def test_sequential_indexing_len_append_and_iteration(rng):
    a, b, c = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
    seq = nn.Sequential(a, b)
    seq.append(c)
    assert len(seq) == 3 and seq[0] is a and seq[-1] is c and list(seq) == [a, b, c]
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and list(tail) == [b, c]
    x = tensor(rng.standard_normal((2, 3)).astype(np.float32))
    np.testing.assert_array_equal(seq(x).data, c(b(a(x))).data)
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)])
def test_sequential_runs_relu_after_max_pool_with_the_same_results(pool):
    """Sequential runs ReLU -> MaxPool2d as MaxPool2d -> ReLU: the same values and
    gradients, bit for bit, with ties, zeros, all-negative windows and NaNs; a forward
    hook on either layer keeps the written order (the hook sees the ReLU's output)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 3, (2, 3, 7, 8)).astype(np.float64)
    x[0, 0, :3, :3] = -1.0                                   # windows with no positive value
    x[1, 2, 4, 4] = np.nan
    gy = None
    results = []
    for run in ("sequential", "in order", "hooked"):
        t = tensor(x, requires_grad=True)
        relu = nn.ReLU()
        seq = nn.Sequential(relu, pool)
        if run == "hooked":
            seen = []
            relu.register_forward_hook(lambda m, i, out: seen.append(out.data.shape))
        y = pool(relu(t)) if run == "in order" else seq(t)
        gy = rng.standard_normal(y.shape) if gy is None else gy
        y.backward(gy)
        results.append((y.data, t.grad))
    assert seen == [x.shape]
    for y, g in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(g, results[0][1])


def test_module_list_registers_its_modules():
    layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 3)])
    layers.append(nn.Linear(3, 1))
    assert len(layers) == 3 and layers[2].out_features == 1 and len(list(layers)) == 3
    assert [n for n, _ in layers.named_parameters()][-2:] == ["2.weight", "2.bias"]


def test_flatten_and_identity(rng):
    x = tensor(rng.standard_normal((2, 3, 4, 5)))
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0, 1)(x).shape == (6, 4, 5)
    assert nn.Identity()(x) is x


# ----------------------------------------------------------------------- Linear
@given(data=st.data())
def test_linear_forward_and_gradient(data):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x, w = data.draw(arrays(lead + (n_in,))), data.draw(arrays((n_out, n_in)))
    b = data.draw(st.none() | arrays((n_out,)))
    tx, tw = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
    tb = None if b is None else tensor(b, requires_grad=True)
    out = ops.linear(tx, tw, tb)
    np.testing.assert_allclose(out.data, x @ w.T + (0 if b is None else b), rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda *ts: ops.linear(*ts), [tx, tw] + ([] if tb is None else [tb]))


def test_linear_vs_torch(against_torch, torch, rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    against_torch(ops.linear, torch.nn.functional.linear, x, w, b)
    against_torch(ops.linear, torch.nn.functional.linear, x[0], w)
    # large enough for the backward GEMMs to run side by side on the worker threads
    x, w, b = rng.standard_normal((2, 50, 130)), rng.standard_normal((90, 130)), rng.standard_normal(90)
    assert 100 * w.size >= importlib.import_module("minicnn.fast.linear").MIN_PARALLEL
    against_torch(ops.linear, torch.nn.functional.linear, x, w, b)


def test_large_linear_splits_its_outputs_over_the_workers(rng):
    """Above MIN_PARALLEL the forward GEMM runs as two halves of the output features: the
    same values as one GEMM (an odd count, leading axes and the bias included)."""
    x, w, b = rng.standard_normal((2, 40, 150)), rng.standard_normal((91, 150)), rng.standard_normal(91)
    assert 80 * w.size >= importlib.import_module("minicnn.fast.linear").MIN_PARALLEL
    out = ops.linear(tensor(x), tensor(w), tensor(b))
    assert out.shape == (2, 40, 91)
    np.testing.assert_allclose(out.data, x @ w.T + b, rtol=1e-12, atol=1e-12)


def test_linear_module_shapes_dtype_and_mismatch_error():
    layer = nn.Linear(4, 3)
    assert layer.weight.shape == (3, 4) and layer.bias.shape == (3,)
    assert layer.weight.dtype == np.float32
    assert nn.Linear(4, 3, dtype=np.float64)(tensor(np.ones((2, 4)))).dtype == np.float64
    with pytest.raises(ValueError, match="4"):
        layer(tensor(np.ones((2, 5), np.float32)))


def test_linear_default_init_is_he_normal_with_zero_bias():
    layer = nn.Linear(400, 300)
    w = layer.weight.data
    np.testing.assert_array_equal(layer.bias.data, 0)
    assert abs(w.std() - math.sqrt(2 / 400)) < 0.02 * math.sqrt(2 / 400)   # 120,000 draws: ~0.2% sd
    assert abs(w.mean()) < 0.01 * math.sqrt(2 / 400)


# ------------------------------------------------------------------------- init
@pytest.mark.parametrize("nonlinearity, param, gain", [
    ("linear", None, 1.0), ("sigmoid", None, 1.0), ("conv2d", None, 1.0), ("tanh", None, 5 / 3),
    ("relu", None, math.sqrt(2)), ("leaky_relu", None, math.sqrt(2 / (1 + 0.01 ** 2))),
    ("leaky_relu", 0.2, math.sqrt(2 / 1.04)), ("selu", None, 0.75)])
def test_calculate_gain_matches_torch_table(nonlinearity, param, gain):
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(gain, rel=1e-12)


def test_calculate_gain_vs_torch(torch):
    for name in ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]:
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name), rel=1e-12)


# (init function, kwargs, expected std for a (200, 50, 3, 3) weight: fan_in 450, fan_out 1800)
FAN_IN, FAN_OUT = 50 * 9, 200 * 9
INITS = [
    (init.kaiming_normal_, {}, math.sqrt(2 / FAN_IN)),
    (init.kaiming_normal_, {"mode": "fan_out"}, math.sqrt(2 / FAN_OUT)),
    (init.kaiming_normal_, {"nonlinearity": "leaky_relu", "a": 0.2}, math.sqrt(2 / 1.04 / FAN_IN)),
    (init.kaiming_uniform_, {}, math.sqrt(2 / FAN_IN)),
    (init.kaiming_uniform_, {"mode": "fan_out", "nonlinearity": "tanh"}, 5 / 3 / math.sqrt(FAN_OUT)),
    (init.xavier_normal_, {}, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    (init.xavier_uniform_, {"gain": 2.0}, 2 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
]


@pytest.mark.parametrize("fn, kwargs, std", INITS)
def test_init_draws_have_the_stated_spread(fn, kwargs, std):
    w = nn.Parameter(np.empty((200, 50, 3, 3), np.float32))
    assert fn(w, **kwargs) is w
    assert w.dtype == np.float32
    assert abs(w.data.std() - std) < 0.01 * std      # 90,000 draws: sd of the estimate ~0.3%
    if "uniform" in fn.__name__:                      # U(-b, b) with b = √3·std
        assert np.abs(w.data).max() <= math.sqrt(3) * std * (1 + 1e-6)
        assert np.abs(w.data).max() > 0.99 * math.sqrt(3) * std


def test_constant_zeros_ones_and_generator():
    w = nn.Parameter(np.empty((2, 3), np.float32))
    np.testing.assert_array_equal(init.constant_(w, 0.5).data, 0.5)
    np.testing.assert_array_equal(init.zeros_(w).data, 0)
    np.testing.assert_array_equal(init.ones_(w).data, 1)
    a = init.xavier_normal_(nn.Parameter(np.empty((3, 3))), generator=np.random.default_rng(5)).data
    b = init.xavier_normal_(nn.Parameter(np.empty((3, 3))), generator=np.random.default_rng(5)).data
    np.testing.assert_array_equal(a, b)


def test_init_rejects_bad_arguments():
    w = nn.Parameter(np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_normal_(w, mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity"):
        init.kaiming_uniform_(w, nonlinearity="swish")
    with pytest.raises(ValueError, match="2 dimensions"):
        init.xavier_uniform_(nn.Parameter(np.empty(3, np.float32)))
