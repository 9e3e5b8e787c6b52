"""Floating-point operations per image of a minicnn model's forward pass and training step.

Only convolutions and linear layers are counted (their GEMMs are nearly all of the
arithmetic; biases, normalization, activations, pooling and the optimizer are a few
percent and memory-bound).  A layer doing M multiply-adds per image (for a convolution
``out_channels * in_channels/groups * kh * kw`` per output pixel) costs

* forward: 2M FLOPs;
* training: 2M forward + 2M for the weight gradient + 2M for the input gradient,
  the last only where the layer's input needs a gradient: not for a first layer
  fed by the images, which is why a training step is a little less than 3x forward.

The count comes from the model itself: one forward pass of a single image of the
real input shape with hooks on every Conv2d and Linear, which read the output shape
and whether the input requires a gradient.
"""
import numpy as np


def count_flops(model, input_shape):
    """``{"forward": F, "train": T}``: FLOPs per image of ``model`` (a minicnn Module)
    for inputs of ``input_shape`` (without the batch axis).  The model's train/eval
    mode is restored."""
    import minicnn
    from minicnn import nn
    if not minicnn.is_grad_enabled():
        raise RuntimeError("count_flops needs gradient mode (called inside no_grad): it reads which "
                           "layers' inputs require a gradient")
    totals = {"forward": 0, "train": 0}

    def hook(module, inputs, out):
        channels = module.weight.shape[0]
        macs = module.weight.data.size * (out.data.size // (out.shape[0] * channels))
        totals["forward"] += 2 * macs
        totals["train"] += (6 if inputs[0].requires_grad else 4) * macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    training = model.training
    model.eval()  # one image: batch statistics of BatchNorm1d would be undefined
    try:
            model(minicnn.tensor(np.zeros((1, *input_shape), np.float32)))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return totals
