"""minicnn.testing: tools to test ops, layers and models, yours or minicnn's.

* :func:`check_function` checks a Function subclass: one gradient per input with the
  right shape and dtype, gradients against finite differences, float32 against float64;
* :func:`gradcheck_module` checks every input and parameter gradient of a layer or model,
  naming parameters by their dotted names and leaving running statistics untouched;
* :func:`assert_close` compares arrays with a report of which elements differ and by how much;
* hypothesis strategies (the optional extra ``pip install "minicnn[testing]"``):
  :func:`arrays`, :func:`shapes`, :func:`broadcastable_shapes`, :func:`magnitudes`,
  :func:`reduction_axes`, :func:`distinct_arrays`, :func:`conv2d_cases`,
  :func:`pool2d_cases`, :func:`norm_cases`, :func:`module_inputs`, and
  :func:`gradient_settings` (hypothesis settings that suit gradient checks).

The tutorial is docs/testing.md.  The strategies are imported on first use, so the rest
works without hypothesis.
"""
from ..gradcheck import GradcheckError, GradcheckResult, gradcheck
from .compare import assert_close
from .gradients import check_function, gradcheck_module

STRATEGIES = ("arrays", "shapes", "broadcastable_shapes", "magnitudes", "reduction_axes", "distinct_arrays",
              "conv2d_cases", "pool2d_cases", "norm_cases", "module_inputs", "gradient_settings",
              "Conv2dCase", "Pool2dCase", "NormCase")

__all__ = ["assert_close", "check_function", "gradcheck", "gradcheck_module", "GradcheckError",
           "GradcheckResult", *STRATEGIES]


def __getattr__(name):
    if name in STRATEGIES:
        from . import strategies
        return getattr(strategies, name)
    raise AttributeError(f"module 'minicnn.testing' has no attribute {name!r}")
