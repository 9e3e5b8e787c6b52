"""Reference architectures, each a function returning a Module."""
from .fashion import FASHION_MODELS, fashion_cnn, fashion_cnn_bn, fashion_cnn_strong
