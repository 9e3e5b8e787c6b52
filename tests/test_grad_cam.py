"""Grad-CAM and saliency (minicnn.attribution, exported by minicnn.internals): on models built
so that the right answer is known -- a class driven by one image region, a linear model,
a smooth CNN where integrated gradients must be complete."""
import numpy as np
import pytest

from minicnn import internals, nn, tensor

H = W = 16


def region_model():
    """Class 0 = mean over the image of relu(x - 1) (bright pixels), class 1 = mean of
    relu(-x - 1) (dark pixels); a max-pool halves the maps, so Grad-CAM must upsample."""
    conv = nn.Conv2d(1, 2, 3, padding=1)
    conv.weight.data[:] = 0
    conv.weight.data[0, 0, 1, 1], conv.weight.data[1, 0, 1, 1] = 1, -1
    conv.bias.data[:] = -1
    head = nn.Linear(2, 2)
    head.weight.data[:] = np.eye(2)
    head.bias.data[:] = 0
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.GlobalAvgPool2d(), nn.Flatten(), head)


def images_with_patches(n=4, seed=0):
    """Background noise in [-0.5, 0.5]; a bright 4x4 patch and a dark one at random, disjoint
    places (multiples of 2, so pooling keeps them sharp).  Returns images and the two masks."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, 0.5, (n, 1, H, W)).astype(np.float32)
    bright, dark = np.zeros((n, H, W), bool), np.zeros((n, H, W), bool)
    for i in range(n):
        while True:
            (r0, c0), (r1, c1) = 2 * rng.integers(0, (H - 4) // 2 + 1, (2, 2))
            if abs(r0 - r1) >= 6 or abs(c0 - c1) >= 6:
                break
        bright[i, r0:r0 + 4, c0:c0 + 4], dark[i, r1:r1 + 4, c1:c1 + 4] = True, True
    x[:, 0][bright] = 3.0
    x[:, 0][dark] = -3.0
    return x, bright, dark


def grown(mask, by=1):
    """``mask`` dilated by ``by`` pixels in each direction, diagonals included."""
    for axis in (-2, -1):
        mask = mask | np.logical_or.reduce([np.roll(mask, s, axis) for s in range(-by, by + 1)])
    return mask


@pytest.mark.parametrize("layer", ["1", "2"])
def test_grad_cam_peaks_in_the_region_that_drives_the_class(layer):
    model, (x, bright, dark) = region_model(), images_with_patches()
    for target, region in ((0, bright), (1, dark)):
        cam = internals.grad_cam(model, x, layer, target=target)
        assert cam.shape == (len(x), H, W) and cam.dtype == np.float32
        assert cam.min() >= 0 and np.allclose(cam.max(axis=(1, 2)), 1)
        for i in range(len(x)):
            peak = np.unravel_index(cam[i].argmax(), (H, W))
            assert region[i][peak], (target, i, peak)
            assert cam[i][region[i]].mean() > 0.5
            # bilinear upsampling blurs one pixel past the region; beyond it the map is zero
            assert cam[i][~grown(region[i])].max() < 1e-6


def test_grad_cam_explains_the_prediction_by_default_and_accepts_the_module():
    model, (x, bright, dark) = region_model(), images_with_patches()
    x[1, 0][dark[1]] = -6.0  # the dark patch now wins on image 1
    logits = model(tensor(x)).data
    assert logits.argmax(1).tolist() == [0, 1, 0, 0]
    cam = internals.grad_cam(model, x, model[1])
    np.testing.assert_array_equal(cam[0], internals.grad_cam(model, x[:1], "1", target=0)[0])
    np.testing.assert_array_equal(cam[1], internals.grad_cam(model, x[1:2], "1", target=1)[0])
    per_image = internals.grad_cam(model, x, "1", target=[0, 1, 1, 0])
    np.testing.assert_array_equal(per_image[:2], cam[:2])
    assert not np.array_equal(per_image[2], cam[2])


def test_grad_cam_and_saliency_leave_modes_gradients_and_statistics_alone():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                          nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(3, 2))
    model.train()
    model[0].bias.requires_grad_(False)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    state = model.state_dict()
    first = internals.grad_cam(model, x, "2")
    internals.saliency(model, x, method="smoothgrad", samples=3)
    # eval mode: dropout off, running statistics used, so the same call gives the same map
    np.testing.assert_array_equal(first, internals.grad_cam(model, x, "2"))
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


def test_grad_cam_errors_name_the_layer_and_what_was_expected():
    model, (x, _, _) = region_model(), images_with_patches(1)
    with pytest.raises(ValueError, match=r"no layer named 'conv9'.*'0', '1', '2'"):
        internals.grad_cam(model, x, "conv9")
    with pytest.raises(ValueError, match=r"layer '4' gives shape \(1, 2\); expected feature maps"):
        internals.grad_cam(model, x, "4")
    with pytest.raises(ValueError, match=r"not a module of this Sequential"):
        internals.grad_cam(model, x, nn.ReLU())
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 2\), got \[5\]"):
        internals.grad_cam(model, x, "1", target=5)
    with pytest.raises(ValueError, match=r"expected float images \(N, C, H, W\)"):
        internals.grad_cam(model, x[0], "1")
    relu = nn.ReLU()  # one module called twice: which call would the map explain?
    twice = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), relu, nn.Conv2d(2, 2, 3, padding=1), relu,
                          nn.GlobalAvgPool2d(), nn.Flatten())
    with pytest.raises(ValueError, match=r"layer '1' ran 2 times in one forward pass"):
        internals.grad_cam(twice, x, "1", target=0)


def test_upsampling_matches_torch_bilinear_without_corner_alignment():
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(0).standard_normal((3, 4, 5))
    for size in ((16, 20), (7, 9), (4, 5)):
        expected = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=size, mode="bilinear",
                                                   align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(internals.upsample(maps, size), expected, rtol=1e-12, atol=1e-12)


def linear_model(c=2, k=3, seed=0):
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * 5 * 4, k))
    model[1].weight.data = np.random.default_rng(seed).standard_normal((k, c * 5 * 4)).astype(np.float32)
    return model


def test_gradient_saliency_of_a_linear_model_equals_its_weights():
    model = linear_model()
    x = np.random.default_rng(1).standard_normal((4, 2, 5, 4)).astype(np.float32)
    target = np.array([2, 0, 1, 2])
    sal = internals.saliency(model, x, target=target)
    weights = model[1].weight.data.reshape(3, 2, 5, 4)
    np.testing.assert_array_equal(sal.values, weights[target])
    np.testing.assert_array_equal(sal.target, target)
    np.testing.assert_array_equal(sal.map(), np.abs(weights[target]).max(axis=1))
    smooth = internals.saliency(model, x, target=target, method="smoothgrad", samples=8)
    np.testing.assert_allclose(smooth.values, weights[target], rtol=1e-6, atol=1e-7)
    ig = internals.saliency(model, x, target=target, method="integrated_gradients", steps=3, baseline=0.5)
    np.testing.assert_allclose(ig.values, (x - 0.5) * weights[target], rtol=1e-5, atol=1e-6)
    assert ig.completeness_error.max() < 1e-5


def smooth_cnn():
    """A CNN with a smooth activation (no kinks along the path), in float64."""
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                          nn.GELU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 4))
    rng = np.random.default_rng(3)
    for p in model.parameters():
        p.data = rng.standard_normal(p.shape) * (0.5 if p.ndim == 1 else np.sqrt(2 / np.prod(p.shape[1:])))
    return model


def test_integrated_gradients_are_complete_to_1e_3():
    model = smooth_cnn()
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8))
    ig = internals.saliency(model, x, method="integrated_gradients", steps=32)
    logits = model(tensor(x)).data
    base_logits = model(tensor(np.zeros_like(x))).data
    np.testing.assert_array_equal(ig.target, logits.argmax(1))
    gap = logits[np.arange(5), ig.target] - base_logits[np.arange(5), ig.target]
    np.testing.assert_allclose(ig.score - ig.baseline_score, gap, rtol=1e-12)
    error = np.abs(ig.values.reshape(5, -1).sum(1) - gap) / np.abs(gap)
    np.testing.assert_allclose(ig.completeness_error, error, rtol=1e-9)
    assert error.max() < 1e-3, error
    # and the gap is a quadrature error: 4 steps leave more of it
    assert internals.saliency(model, x, method="integrated_gradients", steps=4).completeness_error.max() > error.max()


def test_integrated_gradients_of_a_relu_cnn_converge_with_steps():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 3))
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.data = rng.standard_normal(p.shape) * 0.3
    x = rng.standard_normal((3, 3, 8, 8))
    # kinks along the path make the quadrature error O(1/steps), not O(1/steps²): it shrinks, slowly
    errors = [internals.saliency(model, x, method="integrated_gradients", steps=steps).completeness_error
              for steps in (8, 256)]
    assert np.all(errors[1] < errors[0]) and np.median(errors[1]) < 5e-3, errors


def test_smoothgrad_averages_gradients_at_noisy_copies_from_its_seed():
    model = smooth_cnn()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8))
    a = internals.saliency(model, x, method="smoothgrad", samples=4, noise=0.2, seed=7)
    b = internals.saliency(model, x, method="smoothgrad", samples=4, noise=0.2, seed=7)
    np.testing.assert_array_equal(a.values, b.values)
    rng = np.random.default_rng(7)
    sigma = 0.2 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    expected = np.mean([internals.saliency(model, x + sigma * rng.standard_normal(x.shape), target=a.target).values
                        for _ in range(4)], axis=0)
    np.testing.assert_allclose(a.values, expected, rtol=1e-12)
    plain = internals.saliency(model, x, method="smoothgrad", samples=4, noise=0.0)
    np.testing.assert_allclose(plain.values, internals.saliency(model, x).values, rtol=1e-12)
    with pytest.raises(ValueError, match=r"saliency method must be one of .*'gradient'.*got 'guided'"):
        internals.saliency(model, x, method="guided")
