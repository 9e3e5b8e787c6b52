"""gradcheck itself: passes correct gradients, catches wrong ones with a readable message
(both the full-Jacobian and the random-direction path), warns on float32."""
import numpy as np
import pytest
from hypothesis import given

from minicnn import Function, ops, tensor
from minicnn.gradcheck import GradcheckError, gradcheck
from minicnn.testing import arrays, shapes


class Cube(Function):
    """y = x³ with a backward that is right, or wrong by a chosen factor at one element."""
    error_at, factor = None, 1.0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved
        gx = 3 * x * x * g
        if Cube.error_at is not None:
            gx.flat[Cube.error_at] *= Cube.factor
        return gx


@pytest.fixture
def broken_cube():
    """Cube whose gradient at element 2 is 1.5x too large."""
    Cube.error_at, Cube.factor = 2, 1.5
    yield Cube.apply
    Cube.error_at, Cube.factor = None, 1.0


def _x(n=5):
    return tensor(np.linspace(0.5, 1.5, n), requires_grad=True)


def test_correct_gradients_pass_and_inputs_are_restored():
    x = _x()
    before = x.data.copy()
    assert gradcheck(Cube.apply, [x]) is True
    np.testing.assert_array_equal(x.data, before)
    assert x.grad is None


@given(x=arrays(shapes(min_dims=1), 0.5, 2.0), w=arrays((3,), -2, 2))
def test_user_style_property_test(x, w):
    """What people write with gradcheck + hypothesis: a composite expression."""
    tx = tensor(x, requires_grad=True)
    tw = tensor(w, requires_grad=True)
    assert gradcheck(lambda a, b: (ops.log(a).sum() * b).exp() / (1 + b * b), [tx, tw])


def test_wrong_backward_raises_a_readable_message_on_the_full_jacobian(broken_cube):
    with pytest.raises(GradcheckError) as err:
        gradcheck(broken_cube, [_x()])
    msg = str(err.value)
    assert "input 0" in msg and "max abs error" in msg and "max rel error" in msg
    assert "1 of 25 entries" in msg                     # the 5x5 Jacobian has one bad entry
    assert "worst entry at output [2], input 0 element [2]" in msg
    assert "analytic" in msg and "numeric" in msg
    assert isinstance(err.value, AssertionError)       # so pytest shows it as a failed assertion


def test_wrong_backward_is_caught_by_the_random_direction_check(broken_cube):
    with pytest.raises(GradcheckError, match="random direction"):
        gradcheck(broken_cube, [_x(100)], full_limit=0)


def test_random_directions_check_every_input(broken_cube):
    """Each input gets its own projection: a 1.5x error in the second input's gradient alone
    is caught on the random-direction path, named, and located."""
    y = tensor(np.linspace(-1.0, 1.0, 100), requires_grad=True)
    with pytest.raises(GradcheckError, match=r"input 1 of shape \(100,\) \(random directions.*input 1 element \[2\]"):
        gradcheck(lambda a, b: a * 2 + broken_cube(b).sum(), [_x(100), y], full_limit=0)


def test_large_inputs_use_random_directions_and_pass_when_correct():
    x = tensor(np.random.default_rng(0).uniform(0.5, 1.5, (80, 80)), requires_grad=True)
    assert gradcheck(Cube.apply, [x])        # 6400² entries: far past full_limit


def test_names_the_input_whose_gradient_is_wrong(broken_cube):
    y = tensor(np.array([0.3, -0.7, 1.1, 0.2, 0.9]), requires_grad=True)
    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(lambda a, b: a * 2 + broken_cube(b), [_x(), y])


def test_only_inputs_that_require_grad_are_checked(broken_cube):
    frozen = tensor(np.linspace(0.5, 1.5, 5))
    assert gradcheck(lambda a, b: a * broken_cube(b), [_x(), frozen])


@pytest.mark.parametrize("full_limit", [4096, 0])
def test_a_nan_gradient_fails(broken_cube, full_limit):
    """NaN compares false with everything: an unwritten (NaN) element of a gradient must still
    be outside the tolerance, on either path."""
    Cube.factor = np.nan
    with pytest.raises(GradcheckError, match=r"input 0 .*nan"):
        gradcheck(broken_cube, [_x()], full_limit=full_limit)


def test_tolerances_decide(broken_cube):
    Cube.factor = 1 + 1e-4
    assert gradcheck(broken_cube, [_x()])              # within rtol=1e-3
    with pytest.raises(GradcheckError):
        gradcheck(broken_cube, [_x()], rtol=1e-6, atol=1e-8)


def test_float32_inputs_warn():
    x = tensor(np.linspace(0.5, 1.5, 4).astype(np.float32), requires_grad=True)
    with pytest.warns(UserWarning, match="float64"):
        gradcheck(lambda v: v * 2, [x], eps=1e-2, rtol=1e-2)


def test_bad_calls_are_clear_errors():
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda v: v * 2, [tensor(np.ones(3))])
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda v: v.data * 2, [_x()])


def test_an_output_independent_of_the_input_has_zero_gradient():
    assert gradcheck(lambda a, b: b * 2, [_x(), tensor(np.ones(3))])
