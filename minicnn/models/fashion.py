"""CNNs for 28x28 grey images (Fashion-MNIST): input (N, 1, 28, 28), output (N, 10) logits.

    fashion_cnn()          the classic 2-conv CNN of the seeds, 421,642 parameters
    fashion_cnn_bn()       the same with batch norm after each conv and dropout before the head
    fashion_cnn_strong()   a VGG-style 4-conv net with batch norm and dropout

All use 'same' 3x3 convolutions and 2x2 max pooling, so 28 -> 14 -> 7, and
PyTorch's default initialization of minicnn's layers; ``dtype=np.float64`` builds them
in float64 (for gradient checks).  Training recipes (optimizer,
schedule, augmentation) live in ``examples/fashion_mnist.py``.
"""
import numpy as np

from .. import nn

__all__ = ["fashion_cnn", "fashion_cnn_bn", "fashion_cnn_strong", "FASHION_MODELS"]


def _conv_block(c_in, c_out, bn):
    """3x3 'same' conv (no bias when a batch norm follows) [+ BatchNorm2d] + ReLU."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding="same", bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    return layers + [nn.ReLU()]


def fashion_cnn(num_classes=10, dtype=np.float32):
    """Conv 32 3x3 + ReLU, MaxPool 2, Conv 64 3x3 + ReLU, MaxPool 2, Flatten,
    Dense 128 + ReLU, Dense 10.  Parameters: 320 + 18,496 + 401,536 + 1,290 = 421,642."""
    return nn.Sequential(
        *_conv_block(1, 32, bn=False), nn.MaxPool2d(2),
        *_conv_block(32, 64, bn=False), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, num_classes)).to(dtype)


def fashion_cnn_bn(num_classes=10, dropout=0.3, dtype=np.float32):
    """The classic CNN with Conv-BN-ReLU blocks (convs without bias), BatchNorm1d in the
    dense layer and dropout before the classifier: 421,866 learned parameters."""
    return nn.Sequential(
        *_conv_block(1, 32, bn=True), nn.MaxPool2d(2),
        *_conv_block(32, 64, bn=True), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, num_classes)).to(dtype)


def fashion_cnn_strong(num_classes=10, width=32, dropout=(0.25, 0.25, 0.5), dtype=np.float32):
    """Two VGG blocks of two Conv-BN-ReLU each (width, then 2·width channels), each
    ending in MaxPool 2 and Dropout; then Dense 256-BN-ReLU, Dropout, Dense 10.

    width=32: 32-32 / 64-64 channels, 871,082 learned parameters.
    """
    w, d1, d2, d3 = width, *dropout
    return nn.Sequential(
        *_conv_block(1, w, True), *_conv_block(w, w, True), nn.MaxPool2d(2), nn.Dropout(d1),
        *_conv_block(w, 2 * w, True), *_conv_block(2 * w, 2 * w, True), nn.MaxPool2d(2), nn.Dropout(d2),
        nn.Flatten(),
        nn.Linear(2 * w * 7 * 7, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(d3),
        nn.Linear(256, num_classes)).to(dtype)


FASHION_MODELS = {"basic": fashion_cnn, "bn": fashion_cnn_bn, "strong": fashion_cnn_strong}
