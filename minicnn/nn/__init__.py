"""Layers and models' building blocks, with PyTorch's names and semantics."""
from . import init
from .activation import GELU, LeakyReLU, ReLU, ReLU6, Sigmoid, Softmax, Tanh
from .container import Flatten, Identity, ModuleList, Sequential
from .linear import Linear
from .module import Module
from .parameter import Parameter
from .norm import BatchNorm, BatchNorm1d, BatchNorm2d, GroupNorm, InstanceNorm2d, LayerNorm
from .dropout import Dropout, Dropout2d
from .conv import Conv2d
from .pool import AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .fusion import FusedSequential, bn_act, conv_bn, fuse
