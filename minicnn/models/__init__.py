"""Reference architectures, each a function returning a Module."""
from .fashion import FASHION_MODELS, fashion_cnn, fashion_cnn_bn, fashion_cnn_strong
from .cifar import airnet_cifar, improved_cnn_cifar, mlp_cifar, seed_cnn_cifar, vgg_cifar
from .resnet_cifar import resnet20, resnet32, resnet44, resnet56
from .efficientnet import efficientnet_lite0
from . import imagenet_classes
