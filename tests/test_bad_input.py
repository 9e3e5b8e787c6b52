"""Bad input to layers and losses: clear errors that name the layer, or correct results where PyTorch gives them."""
import traceback

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn, ops


def f32(*shape):
    return mc.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


class Net(nn.Module):
    """features.0 conv 3->4, features.1 ReLU, features.2 a Sequential of conv 4->8 and batch norm."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8)))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x).mean(axis=(2, 3)))


class Skip(nn.Module):
    """Feeds its input straight to ``features.2`` of its net: 3 channels where 4 are expected."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features[2](x)


# ------------------------------------------------------------------ errors that name the layer

def test_error_names_the_path_and_type_of_the_failing_layer():
    model = Net()
    with pytest.raises(ValueError) as info:
        model(f32(2, 1, 6, 6))
    msg = str(info.value)
    assert msg.startswith("features.0 (Conv2d): "), msg
    assert "has 1 channels" in msg and "expects 3" in msg
    assert info.value.minicnn_module is model.features[0]
    assert info.value.minicnn_path == "features.0"


def test_nested_sequential_gives_the_dotted_path_relative_to_the_outermost_call():
    model = Skip(Net())
    with pytest.raises(ValueError) as info:
        model(f32(2, 3, 6, 6))
    msg = str(info.value)
    assert msg.startswith("net.features.2.0 (Conv2d): "), msg
    assert msg.count("(Conv2d)") == 1 and msg.count("features") == 1      # prefixed once
    assert info.value.minicnn_module is model.net.features[2][0]
    # The same failure, called one level down, is named relative to that call.
    with pytest.raises(ValueError, match=r"^0 \(Conv2d\): conv2d: "):
        model.net.features[2](f32(2, 3, 6, 6))


def test_error_in_the_fused_inference_paths_still_names_the_layer():
    """Eval mode under no_grad: Sequential runs conv -> batch norm as one convolution, and a
    batch norm -> ReLU as one fused pass; the errors still name the layer that was given the input."""
    model = Net().eval()
    with mc.no_grad(), pytest.raises(ValueError, match=r"^net\.features\.2\.0 \(Conv2d\): "):
        Skip(model)(f32(2, 3, 6, 6))
    bn_relu = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.BatchNorm2d(5), nn.ReLU()))
    with pytest.raises(ValueError, match=r"^1\.0 \(BatchNorm2d\): .*expected 5 channels"):
        bn_relu(f32(2, 3, 6, 6))


def test_a_directly_called_layer_keeps_its_message():
    with pytest.raises(ValueError, match=r"^conv2d: input \(2, 1, 6, 6\) has 1 channels"):
        nn.Conv2d(3, 4, 3)(f32(2, 1, 6, 6))


def test_the_exception_keeps_its_type_identity_and_traceback():
    class Odd(ValueError):
        pass

    raised = []

    class Bad(nn.Module):
        def forward(self, x):
            raised.append(Odd("no good"))
            raise raised[-1]

    model = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Identity(), Bad()))
    with pytest.raises(Odd) as info:
        model(f32(2, 3))
    assert info.value is raised[0]
    assert str(info.value) == "1.1 (Bad): no good"
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "forward"   # where it was raised
    with pytest.raises(Odd, match=r"^1\.1 \(Bad\): no good$"):                     # a fresh call, a fresh prefix
        model(f32(2, 3))


def test_error_from_a_forward_hook_names_the_hooked_layer():
    model = Net()

    def hook(module, inputs, out):
        raise RuntimeError("hook saw a bad value")

    model.features[1].register_forward_hook(hook)
    with pytest.raises(RuntimeError, match=r"^forward hook of features\.1 \(ReLU\): hook saw a bad value$"):
        model(f32(2, 3, 6, 6))


def test_exceptions_whose_message_is_not_their_first_argument_get_a_note():
    """A KeyError prints its key's repr; rewriting the key would change what handlers read."""
    class Lookup(nn.Module):
        def forward(self, x):
            return {}["weight"]

    with pytest.raises(KeyError) as info:
        nn.Sequential(nn.ReLU(), Lookup())(f32(2, 3))
    assert info.value.args == ("weight",)
    assert info.value.__notes__ == ["in 1 (Lookup)"]


# --------------------------------------------------------------------------------- losses

def test_cross_entropy_float_labels_of_shape_n_say_labels_must_be_integers():
    with pytest.raises(ValueError, match=r"float targets of shape \(4,\).*integer.*astype\(np\.int64\)"):
        ops.cross_entropy(f32(4, 3), np.array([0.0, 1.0, 2.0, 0.0]))


@pytest.mark.parametrize("labels", [[0, 1, 3, 0], [0, -1, 2, 0]])
def test_cross_entropy_labels_out_of_range(labels):
    with pytest.raises(ValueError, match=r"target class -?\d is outside \[0, 3\)"):
        ops.cross_entropy(f32(4, 3), np.array(labels))


@pytest.mark.parametrize("shape", [(4, 1), (3,), (2, 2)])
def test_cross_entropy_wrong_label_shape(shape):
    with pytest.raises(ValueError, match=r"class-index targets must have shape \(4,\), got " + str(shape).replace("(", r"\(").replace(")", r"\)")):
        ops.cross_entropy(f32(4, 3), np.zeros(shape, np.int64))


def test_cross_entropy_spatial_label_shape():
    with pytest.raises(ValueError, match=r"class-index targets must have shape \(2, 5\), got \(5, 2\)"):
        ops.cross_entropy(f32(2, 3, 5), np.zeros((5, 2), np.int64))


def test_cross_entropy_refuses_boolean_labels():
    with pytest.raises(TypeError, match="bool"):
        ops.cross_entropy(f32(4, 3), np.array([True, False, True, False]))


def test_cross_entropy_of_an_empty_batch():
    empty, labels = f32(0, 3), np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="empty batch"):
        ops.cross_entropy(empty, labels)
    # The sum and the per-sample losses are well defined (as PyTorch: 0 and an empty array).
    assert float(ops.cross_entropy(empty, labels, reduction="sum").data) == 0.0
    assert ops.cross_entropy(empty, labels, reduction="none").shape == (0,)


# ---------------------------------------------------------------------------- empty batches

@pytest.mark.parametrize("layer, shape", [(nn.BatchNorm2d(3), (0, 3, 4, 4)), (nn.BatchNorm1d(3), (0, 3)),
                                          (nn.BatchNorm1d(3), (0, 3, 5))])
def test_eval_batch_norm_of_an_empty_batch_is_empty(layer, shape):
    x = mc.tensor(np.zeros(shape, np.float32), requires_grad=True)
    y = layer.eval()(x)
    assert isinstance(y, mc.Tensor) and y.shape == shape and y.dtype == np.float32
    y.sum().backward()
    assert x.grad.shape == shape


# -------------------------------------------------------------------------- wrong input types

@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(3, 4, 3), (1, 3, 5, 5)), (nn.Linear(3, 2), (1, 3)), (nn.MaxPool2d(2), (1, 3, 4, 4)),
    (nn.AvgPool2d(2), (1, 3, 4, 4)), (nn.AdaptiveAvgPool2d(2), (1, 3, 4, 4)), (nn.GlobalAvgPool2d(), (1, 3, 4, 4)),
    (nn.BatchNorm2d(3), (2, 3, 4, 4)), (nn.LayerNorm(4), (2, 4)), (nn.GroupNorm(1, 3), (2, 3, 4)),
    (nn.InstanceNorm2d(3), (2, 3, 4, 4))])
def test_a_python_list_into_a_layer_is_a_type_error_naming_the_expected_type(layer, shape):
    with pytest.raises(TypeError, match=r"expected a minicnn\.Tensor or numpy\.ndarray input, got list"):
        layer(np.zeros(shape, np.float32).tolist())


def test_ops_linear_refuses_a_list():
    with pytest.raises(TypeError, match=r"^linear: expected a minicnn\.Tensor or numpy\.ndarray input, got list"):
        ops.linear([[1.0, 2.0, 3.0]], nn.Linear(3, 2).weight)


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_linear_refuses_an_input_dtype_other_than_its_weight(dtype):
    x = mc.tensor(np.ones((2, 3), dtype))
    with pytest.raises(TypeError, match=rf"^linear: weight dtype float32 differs from input dtype {np.dtype(dtype)}; "
                                        r"convert the input with \.astype\(np\.float32\)"):
        nn.Linear(3, 2)(x)
    with pytest.raises(TypeError, match=r"^1 \(Linear\): linear: weight dtype float32"):   # in a model, named
        nn.Sequential(nn.Identity(), nn.Linear(3, 2))(x)


def test_float64_linear_accepts_float64_input_and_suggests_the_layer_dtype_for_float32():
    assert nn.Linear(3, 2, dtype=np.float64)(mc.tensor(np.ones((2, 3)), dtype=np.float64)).dtype == np.float64
    with pytest.raises(TypeError, match=r"or build the layer with dtype=np\.float32"):
        nn.Linear(3, 2, dtype=np.float64)(f32(2, 3))


def test_linear_wrong_last_axis_names_both_sizes():
    with pytest.raises(ValueError, match=r"input \(2, 4\) has 4 features on its last axis, weight \(2, 3\) expects 3"):
        nn.Linear(3, 2)(f32(2, 4))


def test_linear_of_a_0d_input():
    with pytest.raises(ValueError, match=r"linear: expected an input of shape \(\.\.\., 3\), got shape \(\)"):
        nn.Linear(3, 2)(mc.tensor(np.float32(1.0)))
