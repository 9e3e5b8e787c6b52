"""Differentiable operations: one Function per op, forward and backward side by side.

Functional forms follow ``torch.nn.functional``'s names and signatures.
"""
from .activation import gelu, leaky_relu, log_softmax, relu, relu6, sigmoid, softmax, tanh
from .arith import abs, add, astype, clip, div, exp, log, matmul, mul, neg, pow, sqrt, sub, where
from .linear import linear
from .loss import binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss
from .reduce import max, mean, min, sum, var
from .shape import concatenate, flatten, getitem, pad, reshape, squeeze, stack, transpose, unsqueeze
from .norm import batch_norm, group_norm, instance_norm, layer_norm
from .dropout import dropout, dropout2d
from .conv import conv2d
from .pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
