"""A SiLU op written as a Function, a depthwise-separable block that uses it, and their tests.

Run with ``pytest test_my_ops.py`` (needs ``pip install "minicnn[testing]"``)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn import nn
from minicnn.testing import (arrays, assert_close, check_function, gradcheck_module, gradient_settings,
                             module_inputs, shapes)


class SiLU(minicnn.Function):
    """y = x·σ(x);  dy/dx = σ(x)·(1 + x·(1 - σ(x)))."""

    @staticmethod
    def forward(ctx, x):
        s = 1 / (1 + np.exp(-x))
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved
        return g * s * (1 + x * (1 - s))


def silu(x):
    return SiLU.apply(x)


class SeparableBlock(nn.Module):
    """Depthwise 3x3, pointwise 1x1, batch norm, SiLU: (N, cin, H, W) -> (N, cout, H, W)."""

    def __init__(self, cin, cout, dtype=np.float32):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False, dtype=dtype)
        self.pointwise = nn.Conv2d(cin, cout, 1, dtype=dtype)
        self.bn = nn.BatchNorm2d(cout, dtype=dtype)

    def forward(self, x):
        return silu(self.bn(self.pointwise(self.depthwise(x))))


def test_silu_values():
    x = np.array([-2.0, 0.0, 1.0])
    assert_close(silu(minicnn.tensor(x)), x / (1 + np.exp(-x)))


@gradient_settings(max_examples=20)
@given(arrays(shapes(min_dims=1, max_dims=3), -6.0, 6.0))
def test_silu_function(x):
    assert check_function(SiLU, x)


@gradient_settings(max_examples=10)
@given(st.data())
def test_separable_block_gradients(data):
    minicnn.manual_seed(data.draw(st.integers(0, 1000)))
    block = SeparableBlock(2, 3).double()
    x = data.draw(module_inputs(block, max_side=5))
    result = gradcheck_module(block, x)
    assert result.checked == ("input 0", "parameter depthwise.weight", "parameter pointwise.weight",
                              "parameter pointwise.bias", "parameter bn.weight", "parameter bn.bias")
    assert block.bn.num_batches_tracked == 0      # the check left the running statistics alone
