"""State-dict conversion (renames, shapes, missing/unexpected keys) and Keras layout helpers."""
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import nn
from minicnn.io import (
    StateDictMismatch, conv_hwio_to_oihw, convert_state_dict, dense_to_linear, depthwise_hwcm_to_oihw,
    flatten_nhwc_to_nchw, load_pretrained, load_torch, rename_key, unwrap_state_dict,
)

RESNET20 = Path("/work/shared/weights/cifar10-resnet/resnet20-12fca82f.th")


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- renames
def test_rename_rules():
    rules = [("fc.weight", "head.1.weight"),            # exact
             ("features.", "backbone."),                 # module prefix
             (re.compile(r"layer(\d)\.(\d+)\.(.*)"), r"stage\1.block\2.\3"),
             ("aux.", None)]                             # dropped
    assert rename_key("fc.weight", rules) == "head.1.weight"
    assert rename_key("fc.bias", rules) == "fc.bias"     # exact means exact
    assert rename_key("features.0.weight", rules) == "backbone.0.weight"
    assert rename_key("featuresX.weight", rules) == "featuresX.weight"
    assert rename_key("layer2.3.bn1.running_var", rules) == "stage2.block3.bn1.running_var"
    assert rename_key("xlayer2.3.w", rules) == "xlayer2.3.w"  # regex matches the whole key
    assert rename_key("aux.fc.weight", rules) is None
    assert rename_key("a", {"a": "b", "b": "c"}) == "b"  # first match only, no chaining
    with pytest.raises(TypeError, match="str or re.Pattern"):
        rename_key("a", [(1, "b")])


def test_strip_prefix_rename_fill_and_order():
    src = OrderedDict([("module.bn.weight", np.ones(3)), ("module.bn.running_mean", np.zeros(3)),
                       ("module.fc.weight", np.arange(6.0).reshape(2, 3)), ("module.fc.bias", np.ones(2))])
    target = OrderedDict([("head.weight", np.zeros((2, 3), np.float32)), ("head.bias", np.zeros(2, np.float32)),
                          ("bn.weight", np.zeros(3, np.float32)), ("bn.running_mean", np.zeros(3, np.float32)),
                          ("bn.num_batches_tracked", np.array(5, np.int64))])
    out = convert_state_dict(src, target, renames={"fc.": "head."})
    assert list(out.state_dict) == list(target)  # target order
    assert out.filled == ["bn.num_batches_tracked"] and out.missing == out.unexpected == out.dropped == []
    nbt = out.state_dict["bn.num_batches_tracked"]
    assert nbt.shape == () and nbt.dtype == np.int64 and nbt == 0
    assert out.state_dict["head.weight"].dtype == np.float32  # cast to the target dtype
    np.testing.assert_array_equal(out.state_dict["head.weight"], src["module.fc.weight"])
    out.state_dict["bn.weight"][0] = 7
    assert src["module.bn.weight"][0] == 1  # copies


def test_shape_mismatch_names_key_and_both_shapes():
    src = {"a": np.zeros((16, 3, 3, 3)), "b": np.zeros(4), "c": np.zeros((10, 64))}
    target = {"a": (16, 3, 5, 5), "b": (4,), "c": (64, 10)}
    with pytest.raises(ValueError) as info:
        convert_state_dict(src, target, strict=False)
    msg = str(info.value)
    assert "2 key(s)" in msg and "'a'" in msg and "(16, 3, 3, 3) vs target (16, 3, 5, 5)" in msg
    assert "(10, 64) vs target (64, 10)" in msg and "'b'" not in msg


def test_dtype_rules():
    assert convert_state_dict({"w": np.ones(2)}, {"w": (2,)}).state_dict["w"].dtype == np.float64
    ints = convert_state_dict({"n": np.array(3)}, {"n": np.zeros((), np.float32)})
    assert ints.state_dict["n"].dtype == np.float32
    with pytest.raises(ValueError, match="float64 cannot become target dtype int64"):
        convert_state_dict({"n": np.array(3.5)}, {"n": np.array(0, np.int64)})


def test_missing_and_unexpected():
    src = {"module.a": np.zeros(1), "module.extra": np.zeros(1), "module.drop.w": np.zeros(9)}
    target = {"a": (1,), "b": (2,), "c.num_batches_tracked": ()}
    with pytest.raises(StateDictMismatch) as info:
        convert_state_dict(src, target, renames=[("drop.", None)])
    assert info.value.missing == ["b"] and info.value.unexpected == ["module.extra"]
    assert "1 missing from the source ('b')" in str(info.value)
    out = convert_state_dict(src, target, renames=[("drop.", None)], strict=False)
    assert list(out.state_dict) == ["a", "c.num_batches_tracked"]
    assert (out.missing, out.unexpected, out.dropped) == (["b"], ["module.extra"], ["module.drop.w"])
    # fill_zeros matches whole dotted names only
    assert convert_state_dict({}, {"xnum_batches_tracked": ()}, strict=False).missing == ["xnum_batches_tracked"]


def test_two_sources_on_one_name():
    with pytest.raises(ValueError, match="'module.w' and 'w' both become 'w'"):
        convert_state_dict({"module.w": np.zeros(1), "w": np.zeros(1)}, {"w": (1,)})


def test_unwrap_state_dict():
    sd = {"w": np.zeros(2)}
    assert unwrap_state_dict(sd) is sd
    assert unwrap_state_dict({"state_dict": sd, "best_prec1": 91.7}) is sd
    assert unwrap_state_dict({"epoch": 3, "model": {"state_dict": sd}}) is sd
    with pytest.raises(ValueError, match=r"top-level keys are \['epoch', 'weights'\]"):
        unwrap_state_dict({"epoch": 3, "weights": [1]})
    with pytest.raises(TypeError, match="got list"):
        unwrap_state_dict([sd])


# ---------------------------------------------------------------- into minicnn modules
class _Norm(nn.Module):
    """Parameters and buffers named like BatchNorm's, enough to exercise loading."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(np.ones(n, np.float32))
        self.bias = nn.Parameter(np.zeros(n, np.float32))
        self.register_buffer("running_mean", np.zeros(n, np.float32))
        self.register_buffer("running_var", np.ones(n, np.float32))
        self.register_buffer("num_batches_tracked", np.array(0, np.int64))


def _net():
    return nn.Sequential(nn.Linear(4, 3), _Norm(3), nn.Linear(3, 2))


def _source(seed=0):
    """A DataParallel-style checkpoint for _net() without num_batches_tracked, in float64."""
    r = rng(seed)
    shapes = {"0.weight": (3, 4), "0.bias": (3,), "1.weight": (3,), "1.bias": (3,), "1.running_mean": (3,),
              "1.running_var": (3,), "2.weight": (2, 3), "2.bias": (2,)}
    return {"state_dict": {f"module.{k}": r.random(s) + 0.5 for k, s in shapes.items()}, "best_prec1": 90.0}


def test_load_pretrained_into_module():
    net, ckpt = _net(), _source()
    result = load_pretrained(net, ckpt)
    assert result.filled == ["1.num_batches_tracked"]
    sd = net.state_dict()
    for k, v in ckpt["state_dict"].items():
        assert sd[k[len("module."):]].dtype == np.float32
        np.testing.assert_array_equal(sd[k[len("module."):]], v.astype(np.float32))


def test_load_pretrained_new_head_keeps_model_values():
    net = _net()
    head_before = net.state_dict()["2.weight"]
    ckpt = _source()
    ckpt["state_dict"]["module.2.weight"] = np.zeros((10, 3))  # a head for another task
    with pytest.raises(ValueError, match=r"'2.weight'.*\(10, 3\) vs target \(2, 3\)"):
        load_pretrained(_net(), ckpt)
    result = load_pretrained(net, ckpt, renames={"2.": None}, strict=False)
    assert result.missing == ["2.weight", "2.bias"] and result.dropped == ["module.2.weight", "module.2.bias"]
    np.testing.assert_array_equal(net.state_dict()["2.weight"], head_before)
    np.testing.assert_array_equal(net.state_dict()["0.bias"], ckpt["state_dict"]["module.0.bias"].astype(np.float32))


@pytest.mark.skipif(not RESNET20.exists(), reason="shared weights not present")
def test_cifar_resnet_checkpoint_converts(tmp_path):
    sd = unwrap_state_dict(load_torch(RESNET20))
    target = OrderedDict()
    for k, v in sd.items():  # the model's names: no prefix, a num_batches_tracked per BatchNorm
        name = k[len("module."):]
        target[name] = v.shape
        if name.endswith("running_var"):
            target[name[:-len("running_var")] + "num_batches_tracked"] = ()
    out = convert_state_dict(sd, target)
    assert len(out.state_dict) == len(target) == 97 + 19 and len(out.filled) == 19
    assert out.state_dict["linear.weight"].shape == (10, 64)
    np.testing.assert_array_equal(out.state_dict["conv1.weight"], sd["module.conv1.weight"])


# ---------------------------------------------------------------- Keras / TF layouts
def _conv_nhwc(x, k):
    """TF conv2d, 'VALID', stride 1: y[n,i,j,o] = sum_{di,dj,c} x[n,i+di,j+dj,c] k[di,dj,c,o]."""
    kh, kw = k.shape[:2]
    n, h, w, _ = x.shape
    y = np.zeros((n, h - kh + 1, w - kw + 1, k.shape[3]))
    for di in range(kh):
        for dj in range(kw):
            y += x[:, di:di + h - kh + 1, dj:dj + w - kw + 1, :] @ k[di, dj]
    return y


def _conv_nchw(x, w, groups=1):
    """Cross-correlation as PyTorch defines it: y[n,o,i,j] = sum x[n, g*Cg + c, i+di, j+dj] w[o,c,di,dj]."""
    o_ch, cg, kh, kw = w.shape
    n, _, h, wd = x.shape
    y = np.zeros((n, o_ch, h - kh + 1, wd - kw + 1))
    per_group = o_ch // groups
    for o in range(o_ch):
        g = o // per_group
        for c in range(cg):
            for di in range(kh):
                for dj in range(kw):
                    y[:, o] += x[:, g * cg + c, di:di + h - kh + 1, dj:dj + wd - kw + 1] * w[o, c, di, dj]
    return y


def _depthwise_nhwc(x, k):
    """TF depthwise_conv2d: y[n,i,j,c*M+m] = sum_{di,dj} x[n,i+di,j+dj,c] k[di,dj,c,m]."""
    kh, kw, c, m = k.shape
    n, h, w, _ = x.shape
    y = np.zeros((n, h - kh + 1, w - kw + 1, c, m))
    for di in range(kh):
        for dj in range(kw):
            y += x[:, di:di + h - kh + 1, dj:dj + w - kw + 1, :, None] * k[di, dj]
    return y.reshape(n, h - kh + 1, w - kw + 1, c * m)


dims = st.integers(1, 4)


@settings(max_examples=25, deadline=None)
@given(kh=dims, kw=dims, cin=dims, cout=dims, seed=st.integers(0, 2**16))
def test_conv_hwio_to_oihw(kh, kw, cin, cout, seed):
    r = rng(seed)
    x = r.standard_normal((2, kh + 2, kw + 3, cin))
    k = r.standard_normal((kh, kw, cin, cout))
    w = conv_hwio_to_oihw(k)
    assert w.shape == (cout, cin, kh, kw) and w.flags.c_contiguous
    np.testing.assert_allclose(_conv_nchw(x.transpose(0, 3, 1, 2), w), _conv_nhwc(x, k).transpose(0, 3, 1, 2),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(kh=dims, kw=dims, c=dims, m=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_depthwise_hwcm_to_oihw(kh, kw, c, m, seed):
    r = rng(seed)
    x = r.standard_normal((2, kh + 2, kw + 1, c))
    k = r.standard_normal((kh, kw, c, m))
    w = depthwise_hwcm_to_oihw(k)
    assert w.shape == (c * m, 1, kh, kw) and w.flags.c_contiguous
    np.testing.assert_allclose(_conv_nchw(x.transpose(0, 3, 1, 2), w, groups=c),
                               _depthwise_nhwc(x, k).transpose(0, 3, 1, 2), rtol=1e-12, atol=1e-12)


def test_depthwise_matches_torch_grouped_conv():
    torch = pytest.importorskip("torch")
    r = rng(1)
    x = r.standard_normal((2, 6, 7, 3))
    k = r.standard_normal((3, 3, 3, 2))
    got = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                     torch.from_numpy(depthwise_hwcm_to_oihw(k)), groups=3).numpy()
    np.testing.assert_allclose(got, _depthwise_nhwc(x, k).transpose(0, 3, 1, 2), rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(h=dims, w=dims, c=dims, out=dims, seed=st.integers(0, 2**16))
def test_first_dense_after_flatten(h, w, c, out, seed):
    r = rng(seed)
    x_nhwc = r.standard_normal((3, h, w, c))
    kernel, bias = r.standard_normal((h * w * c, out)), r.standard_normal(out)
    keras = x_nhwc.reshape(3, -1) @ kernel + bias  # Flatten -> Dense on NHWC features
    weight = flatten_nhwc_to_nchw(dense_to_linear(kernel), (h, w, c))
    ours = x_nhwc.transpose(0, 3, 1, 2).reshape(3, -1) @ weight.T + bias  # Flatten -> Linear on NCHW
    assert weight.shape == (out, c * h * w) and weight.flags.c_contiguous
    np.testing.assert_allclose(ours, keras, rtol=1e-12, atol=1e-12)


def test_dense_to_linear():
    k = np.arange(6.0).reshape(3, 2)
    x = rng().standard_normal((4, 3))
    np.testing.assert_array_equal(x @ dense_to_linear(k).T, x @ k)
    assert dense_to_linear(k).flags.c_contiguous


def test_layout_helpers_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"4-d \(kh, kw, in, out\) array, got shape \(3, 3\)"):
        conv_hwio_to_oihw(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="4-d"):
        depthwise_hwcm_to_oihw(np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match="2-d"):
        dense_to_linear(np.zeros(3))
    with pytest.raises(ValueError, match=r"12 inputs, but hwc=\(2, 2, 2\) flattens to 8"):
        flatten_nhwc_to_nchw(np.zeros((5, 12)), (2, 2, 2))
