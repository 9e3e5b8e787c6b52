"""minicnn.testing: check_function, gradcheck_module, assert_close, the public strategies
(their docstring examples run), Module dtype conversion, and the tutorial's test file run
by pytest as a user would: passing, then failing by name once its backward is broken."""
import doctest
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

import minicnn
import minicnn.models
from minicnn import Function, nn, tensor
from minicnn.fast import runtime
from minicnn.gradcheck import GradcheckError
from minicnn.testing import (assert_close, check_function, conv2d_cases, gradcheck_module, norm_cases,
                             pool2d_cases)
from minicnn.testing import strategies

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gradient_tests" / "test_my_ops.py"


class Mul(Function):
    """y = x·w, with switchable faults in backward."""
    fault = None

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        gx, gw = g * w, g * x
        if Mul.fault == "one gradient":
            return gx
        if Mul.fault == "shape":
            return gx, gw.ravel()[:1]
        if Mul.fault == "dtype":
            return gx, gw.astype(np.float64)
        if Mul.fault == "value":
            gw = gw.copy()
            gw.flat[3] *= 1.1
        if Mul.fault == "float32 only" and x.dtype == np.float32:
            gx = gx + np.float32(0.01)
        return gx, gw


@pytest.fixture
def mul():
    yield Mul
    Mul.fault = None


def _pair(shape=(2, 3)):
    rng = np.random.default_rng(0)
    return rng.standard_normal(shape), rng.standard_normal(shape)


def test_check_function_passes_a_correct_function(mul):
    assert check_function(mul, *_pair()) is True


@pytest.mark.parametrize("fault, match", [
    ("one gradient", r"Mul in float64: backward returned 1 gradient\(s\) for 2 input\(s\) \(input 0 \(x\), input 1 \(w\)\)"),
    ("shape", r"the gradient of input 1 \(w\) is ndarray of shape \(1,\).*expected .* shape \(2, 3\)"),
    ("dtype", r"Mul in float32: the gradient of input 1 \(w\) is ndarray of shape \(2, 3\), dtype float64; "
              r"expected .* dtype float32"),
    ("value", r"gradcheck failed for input 1 \(w\) of shape \(2, 3\).* worst entry at output \[1, 0\], "
              r"input 1 \(w\) element \[1, 0\]"),
    ("float32 only", r"float32 disagrees with float64: Mul gradient of input 0 \(x\) are not close: 6 of 6"),
])
def test_check_function_names_each_fault(mul, fault, match):
    Mul.fault = fault
    with pytest.raises(GradcheckError, match=match):
        check_function(mul, *_pair())


def test_check_function_leaves_out_a_tensor_that_does_not_require_grad(mul):
    """A float32 Tensor without requires_grad is a constant: not differentiated, but run in
    the dtype of each pass like the others (a wrong gradient for it goes unnoticed)."""
    Mul.fault = "value"                                  # in w's gradient
    x, w = _pair()
    assert check_function(mul, x, tensor(w.astype(np.float32)))


def test_check_function_passes_non_float_inputs_through():
    class Take(Function):
        @staticmethod
        def forward(ctx, x, index, axis=0):
            ctx.save_for_backward(x.shape, index)
            ctx.axis = axis
            return np.take(x, index, axis=axis)

        @staticmethod
        def backward(ctx, g):
            shape, index = ctx.saved
            gx = np.zeros(shape, g.dtype)
            np.add.at(gx, (slice(None),) * ctx.axis + (index,), g)
            return gx, None
    x = np.random.default_rng(1).standard_normal((3, 4))
    assert check_function(Take, x, np.array([2, 0, 2]), axis=1)


class Scale(nn.Module):
    """y = x·w with w a parameter, through Mul (so its faults apply)."""
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(np.linspace(0.5, 1.5, 6).reshape(2, 3))

    def forward(self, x):
        return Mul.apply(x, self.weight)


def test_gradcheck_module_names_a_parameter_by_its_dotted_name_and_the_element(mul):
    model = nn.Sequential(nn.Identity(), Scale())
    assert gradcheck_module(model, _pair()[0]).checked == ("input 0", "parameter 1.weight")
    Mul.fault = "value"
    with pytest.raises(GradcheckError, match=r"parameter 1\.weight of shape \(2, 3\).* parameter 1\.weight "
                                             r"element \[1, 0\]: analytic"):
        gradcheck_module(model, _pair()[0])


def test_gradcheck_module_leaves_running_statistics_random_state_and_grads_alone():
    minicnn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Dropout(0.3)).double()
    model.train()
    model[1].running_mean[...] = [0.1, 0.2, 0.3]
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model[0].weight.grad = np.full(model[0].weight.shape, 7.0)
    state = minicnn.random.get_state()
    x = np.random.default_rng(2).standard_normal((2, 2, 3, 3))
    result = gradcheck_module(model, x)                  # dropout in train mode: the same mask every forward
    assert result.method == "random directions" and result.directions == 3
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert model[1].num_batches_tracked == 0 and model[1].num_batches_tracked.dtype == np.int64
    assert minicnn.random.get_state() == state
    assert (model[0].weight.grad == 7.0).all() and model[1].weight.grad is None


def test_gradcheck_module_uses_the_full_jacobian_when_small():
    layer = nn.Linear(3, 2, dtype=np.float64)
    result = gradcheck_module(layer, np.random.default_rng(3).standard_normal((2, 3)))
    assert result.method == "full Jacobian" and result.directions == 0
    assert result.checked == ("input 0", "parameter weight", "parameter bias")


def test_assert_close_reports_count_and_worst_elements():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert_close(a, a + 1e-9)
    assert_close(a.astype(np.float32), a + 1e-6)                 # float32's default tolerance
    with pytest.raises(AssertionError, match=r"y are not close: 2 of 4 elements \(50\.0%\).*\n"
                                             r"  largest absolute difference 0\.5 at index \(1, 1\): actual 4.5, "
                                             r"expected 4\n  largest relative difference 0\.2 at index \(0, 1\)"):
        assert_close(a + np.array([[0, 0.4], [0, 0.5]]), a, name="y")
    with pytest.raises(AssertionError, match=r"shape \(4,\) differs from the expected shape \(2, 2\)"):
        assert_close(a.ravel(), a)
    with pytest.raises(AssertionError, match="1 of 4"):
        assert_close(np.where(a == 2, np.nan, a), a)
    assert_close(np.array([np.nan]), np.array([np.nan]), equal_nan=True)


def test_module_to_converts_parameters_and_float_buffers_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    model[0].weight.grad = np.ones(model[0].weight.shape, np.float32)
    assert model.double() is model
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float64)}
    assert model[0].weight.grad.dtype == np.float64
    assert model[1].running_var.dtype == np.float64 and model[1].num_batches_tracked.dtype == np.int64
    assert model(tensor(np.ones((2, 1, 3, 3)))).dtype == np.float64
    model.float()
    assert {b.dtype for _, b in model.named_buffers()} == {np.dtype(np.float32), np.dtype(np.int64)}
    assert model.to(np.float64)[3].weight.dtype == np.float64
    with pytest.raises(TypeError, match=r"Sequential\.to: expected np\.float32 or np\.float64, got int32"):
        model.to(np.int32)


@pytest.mark.parametrize("factory", ["fashion_cnn", "fashion_cnn_bn", "fashion_cnn_strong", "resnet20"])
def test_model_factories_take_a_dtype(factory):
    model = getattr(minicnn.models, factory)(dtype=np.float64)
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float64)}
    side = 28 if factory.startswith("fashion") else 32
    with minicnn.no_grad():
        assert model.eval()(tensor(np.zeros((1, 1 if side == 28 else 3, side, side)))).dtype == np.float64


def test_dtype_mismatch_says_how_to_convert_the_model():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(TypeError, match=r"^0 \(Conv2d\): conv2d: weight dtype float32 differs from input dtype "
                                        r"float64; convert the input with \.astype\(np\.float32\) .*"
                                        r"model\.to\(np\.float64\)"):
        model(tensor(np.ones((1, 1, 4, 4))))


def test_every_public_strategy_has_a_docstring_example_that_runs():
    """The ``>>>`` examples of minicnn.testing run, and every test function they define passes."""
    names = [n for n in minicnn.testing.STRATEGIES if not n.endswith("Case")]
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    defined = 0
    for name in names:
        obj = getattr(minicnn.testing, name)
        assert ">>>" in (obj.__doc__ or ""), f"{name} has no example"
        for test in finder.find(obj, name, globs=dict(vars(strategies), np=np, minicnn=minicnn, given=given)):
            runner.run(test, clear_globs=False)
            for fn_name, fn in test.globs.items():
                if fn_name.startswith("test_") and callable(fn):
                    fn = fn if fn_name == "test_square_is_non_negative" else settings(max_examples=5)(fn)
                    fn()
                    defined += 1
    for fn in (assert_close, check_function, gradcheck_module):
        for test in finder.find(fn, globs=dict(np=np, minicnn=minicnn, **vars(minicnn.testing))):
            runner.run(test)
    assert runner.failures == 0 and defined >= len(names) - 1


@given(conv2d_cases(max_side=5))
def test_conv2d_cases_are_valid_convolutions(case):
    b = None if case.bias is None else tensor(case.bias)
    y = minicnn.ops.conv2d(tensor(case.x), tensor(case.weight), b, **case.kwargs)
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = case.resolved
    kh, kw = case.weight.shape[2:]
    assert y.shape[2:] == ((case.x.shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1,
                           (case.x.shape[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1)


@given(pool2d_cases(), norm_cases())
def test_pool_and_norm_cases_are_valid(pool, norm):
    assert len(np.unique(pool.x)) == pool.x.size
    minicnn.ops.avg_pool2d(tensor(pool.x), pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                           pool.count_include_pad)
    x, w, b = (None if a is None else tensor(a) for a in (norm.x, norm.weight, norm.bias))
    y = {"batch": lambda: minicnn.ops.batch_norm(x, None, None, w, b, training=True, eps=norm.eps),
         "instance": lambda: minicnn.ops.instance_norm(x, None, None, w, b, eps=norm.eps),
         "group": lambda: minicnn.ops.group_norm(x, norm.groups, w, b, eps=norm.eps),
         "layer": lambda: minicnn.ops.layer_norm(x, norm.x.shape[1:], w, b, eps=norm.eps)}[norm.kind]()
    assert y.shape == norm.x.shape


def test_module_inputs_needs_a_shape_when_it_cannot_tell():
    with pytest.raises(ValueError, match="cannot tell what ReLU takes.*pass shape="):
        strategies.module_inputs(nn.ReLU())


def test_strategies_without_hypothesis_say_what_to_install():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import numpy as np, minicnn.testing as t\n"
            "t.assert_close(np.ones(2), np.ones(2))\n"
            "try:\n    t.arrays\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'pip install "minicnn[testing]"' in out


def test_scratch_buffers_are_nan_filled_on_request(monkeypatch):
    monkeypatch.setenv("MINICNN_SCRATCH_FILL", "nan")
    buf = runtime.scratch("test_testing", 8, np.float32)
    assert np.isnan(buf).all()
    buf[:] = 1.0
    assert np.isnan(runtime.scratch("test_testing", 8, np.float32)).all()     # every time it is handed out
    monkeypatch.delenv("MINICNN_SCRATCH_FILL")
    runtime.scratch("test_testing", 8, np.float32)[:] = 2.0
    assert (runtime.scratch("test_testing", 8, np.float32) == 2.0).all()      # otherwise left as it was


def test_the_suite_runs_derandomized_with_a_thorough_profile():
    assert settings.get_profile("minicnn").derandomize
    assert settings.get_profile("thorough").max_examples >= 100
    assert os.environ["MINICNN_SCRATCH_FILL"] == "nan"


def test_tutorial_file_is_the_tutorials_code():
    """docs/testing.md shows the example file whole, in the blocks marked with its name."""
    doc = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8").splitlines()
    parts, i = [], 0
    while i < len(doc):
        if doc[i].strip() == "<!-- file: examples/gradient_tests/test_my_ops.py -->":
            end = doc.index("```", i + 2)
            parts.append("\n".join(doc[i + 2:end]))
            i = end
        i += 1
    assert "\n\n\n".join(parts) + "\n" == EXAMPLE.read_text(encoding="utf-8")


def test_tutorial_file_passes_and_a_broken_backward_fails_by_name(tmp_path):
    """Copied elsewhere, the tutorial's file passes under pytest; a copy with a wrong SiLU
    backward fails, naming the input and its worst element, in Function and block alike."""
    source = EXAMPLE.read_text(encoding="utf-8")
    right = "return g * s * (1 + x * (1 - s))"
    assert right in source
    (tmp_path / "test_my_ops.py").write_text(source, encoding="utf-8")
    (tmp_path / "test_broken_ops.py").write_text(source.replace(right, "return g * s * (1 + x * (1.05 - s))"),
                                                 encoding="utf-8")
    env = dict(os.environ, MINICNN_AUTOTUNE="0")      # many small geometries: no timing of routes per geometry
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    out = run.stdout
    assert run.returncode == 1 and "2 failed, 4 passed" in out, out + run.stderr
    assert all(f"FAILED test_broken_ops.py::{name}" in out
               for name in ("test_silu_function", "test_separable_block_gradients")), out
    assert "gradcheck failed for input 0 (x) of shape (1,)" in out and "input 0 (x) element [0]: analytic" in out
    assert re.search(r"gradcheck failed for input 0 of shape \(\d, 2, \d, \d\).*input 0 element \[\d, \d, \d, \d\]", out)
