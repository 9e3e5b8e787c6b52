"""Batch transforms: identities, references, seeding, and the augmentation marking."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.data.transforms import (
    CenterCrop, ColorJitter, Compose, Normalize, RandomAffine, RandomCrop, RandomErasing,
    RandomHorizontalFlip, RandomRotation, RandomVerticalFlip, Resize, ToFloat, Transform,
    augmentations, without_augmentation)


@st.composite
def batches(draw, dtype=None, min_side=1, max_side=9):
    """A random (N, C, H, W) batch, uint8 or float32/float64."""
    n = draw(st.integers(1, 5))
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    dtype = dtype or draw(st.sampled_from([np.uint8, np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    return rng.random((n, c, h, w)).astype(dtype)


seeds = st.integers(0, 2**32 - 1)


def rng(seed=0):
    return np.random.default_rng(seed)


ALL_AUGMENTATIONS = [RandomHorizontalFlip(), RandomVerticalFlip(), RandomCrop(6, padding=2),
                     RandomRotation(30), RandomAffine(10, (0.2, 0.1), (0.8, 1.2)),
                     ColorJitter(0.4, 0.4, 0.4), RandomErasing(p=0.7)]


# ---------------------------------------------------------------- hypothesis properties

@given(batches(), seeds)
def test_flip_twice_is_identity(x, seed):
    for flip in (RandomHorizontalFlip(p=1.0), RandomVerticalFlip(p=1.0)):
        once = flip(x, rng(seed))
        assert once.dtype == x.dtype
        np.testing.assert_array_equal(flip(once, rng(seed + 1)), x)
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0)(x, rng(seed)), x[..., ::-1])
    np.testing.assert_array_equal(RandomVerticalFlip(p=0.0)(x, rng(seed)), x)


@given(batches(), seeds)
def test_random_flip_flips_a_subset(x, seed):
    out = RandomHorizontalFlip(0.5)(x, rng(seed))
    for a, b in zip(out, x):
        assert np.array_equal(a, b) or np.array_equal(a, b[..., ::-1])


@given(batches(), seeds, st.sampled_from(["constant", "edge", "reflect", "symmetric"]))
def test_full_size_crop_without_padding_is_identity(x, seed, mode):
    out = RandomCrop(x.shape[2:], padding=0, padding_mode=mode)(x, rng(seed))
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)


@given(batches(min_side=3), seeds, st.integers(0, 2), st.integers(0, 2),
       st.sampled_from(["constant", "edge", "reflect", "symmetric"]), st.data())
def test_crop_is_a_window_of_the_padded_image(x, seed, ph, pw, mode, data):
    H, W = x.shape[2:]
    h, w = data.draw(st.integers(1, H + 2 * ph)), data.draw(st.integers(1, W + 2 * pw))
    out = RandomCrop((h, w), (ph, pw), mode, fill=7)(x, rng(seed))
    kw = {"constant_values": 7} if mode == "constant" else {}
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode=mode, **kw)
    for n in range(len(x)):
        windows = [padded[n, :, i:i + h, j:j + w] for i in range(H + 2 * ph - h + 1)
                   for j in range(W + 2 * pw - w + 1)]
        assert any(np.array_equal(out[n], win) for win in windows)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_draws_every_offset_about_equally_often(mode):
    """Every top-left corner of the window in the padded image (5 rows x 8 columns of them
    here) is drawn, each about 1/40 of the time: 8,000 crops, each count within 5 standard
    deviations of 200.  The offset is read back from the window's pixels (all distinct)."""
    H, W, (h, w), (ph, pw) = 4, 6, (2, 3), (1, 2)
    n_rows, n_cols = H + 2 * ph - h + 1, W + 2 * pw - w + 1
    x = np.arange(1.0, H * W + 1).reshape(1, 1, H, W).repeat(8000, axis=0)
    out = RandomCrop((h, w), (ph, pw), mode, fill=0)(x, rng(3))
    padded = np.pad(x[0, 0], ((ph, ph), (pw, pw)), mode=mode)
    windows = np.stack([padded[i:i + h, j:j + w] for i in range(n_rows) for j in range(n_cols)])
    match = (out[:, 0, None] == windows[None]).all(axis=(2, 3))          # (crops, offsets)
    assert (match.sum(axis=1) == 1).all()                                # each window is one offset
    counts = match.sum(axis=0).reshape(n_rows, n_cols)
    expected = len(x) / counts.size
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected), counts


def test_without_augmentation_keeps_plain_callables_and_the_bounds_are_inclusive():
    """A callable without an ``augmentation`` attribute is deterministic: kept for evaluation.
    scale up to 1 (the whole image) is a valid RandomErasing argument."""
    def halve(x, rng=None):
        return x / 2
    kept = without_augmentation(Compose([halve, RandomHorizontalFlip()])).transforms
    assert kept == [halve]
    assert RandomErasing(scale=(0.5, 1.0)).scale == (0.5, 1.0)


def test_color_jitter_contrast_blends_with_the_mean_grey():
    x = rng(1).uniform(0.25, 0.75, (3, 1, 4, 5))           # grey, and no clipping at 0.5x contrast
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(ColorJitter(contrast=(0.5, 0.5))(x, rng()), m + 0.5 * (x - m), rtol=1e-12)


def test_random_erasing_keeps_the_aspect_ratio():
    """area 1/4 of 16x16 with h/w = 4: a 16 x 4 rectangle, one per image."""
    out = RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(4, 4), value=0)(np.ones((5, 1, 16, 16)), rng(2))
    erased = out[:, 0] == 0
    assert (erased.any(axis=2).sum(axis=1) == 16).all() and (erased.any(axis=1).sum(axis=1) == 4).all()
    assert (erased.sum(axis=(1, 2)) == 64).all()
    # area 2 with h/w = 0.1: h rounds to 0 (w to 4), so nothing is erased
    thin = RandomErasing(p=1.0, scale=(2 / 64, 2 / 64), ratio=(0.1, 0.1), value=0)(np.ones((5, 1, 8, 8)), rng(2))
    assert (thin == 1).all()


@given(batches(), seeds)
def test_rotation_by_zero_is_identity(x, seed):
    for t in (RandomRotation(0), RandomRotation((0, 0)), RandomAffine()):
        out = t(x, rng(seed))
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(out, x)


@given(batches(), st.lists(st.floats(-3, 3), min_size=3, max_size=3),
       st.lists(st.floats(0.05, 4), min_size=3, max_size=3))
def test_normalize_is_invertible(x, mean, std):
    x = ToFloat()(x) if x.dtype == np.uint8 else x
    C = x.shape[1]
    t = Normalize(mean[:C], std[:C])
    y = t(x)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(t.inverse(y), x, rtol=0, atol=1e-5 if x.dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - mean[0]) / std[0], rtol=1e-5, atol=1e-5)


@given(batches(min_side=4), seeds)
def test_same_seed_same_augmentation(x, seed):
    t = Compose([RandomHorizontalFlip(), RandomCrop(x.shape[2:], 1), RandomAffine(15, (0.1, 0.1), (0.9, 1.1)),
                 ColorJitter(0.3, 0.3, 0.3), RandomErasing()])
    np.testing.assert_array_equal(t(x, rng(seed)), t(x, rng(seed)))


def test_different_seeds_differ():
    x = rng().integers(0, 256, (16, 3, 12, 12), dtype=np.uint8)
    for t in ALL_AUGMENTATIONS:
        assert not np.array_equal(t(x, rng(1)), t(x, rng(2))), type(t).__name__


@settings(max_examples=30)
@given(batches(), seeds)
def test_transforms_never_write_their_input(x, seed):
    before = x.copy()
    for t in ALL_AUGMENTATIONS[:2] + [RandomCrop(x.shape[2:], 1), RandomAffine(20), RandomErasing(1.0),
                                      ColorJitter(0.5, 0.5, 0.5), Resize(4), CenterCrop(1)]:
        t(x, rng(seed))
    np.testing.assert_array_equal(x, before)


# ---------------------------------------------------------------- geometry references

@given(batches(min_side=5, max_side=9), seeds)
def test_rotation_by_90_matches_rot90(x, seed):
    x = x[:, :, :5, :5]
    out = RandomRotation((90, 90))(x, rng(seed))
    np.testing.assert_allclose(out.astype(float), np.rot90(x, 1, axes=(2, 3)).astype(float), atol=1e-6)


def test_positive_angle_turns_counter_clockwise():
    x = np.zeros((1, 1, 31, 31), np.float32)
    x[0, 0, 15, 25] = 1                               # 10 px right of the centre
    out = RandomRotation((30, 30))(x, rng())
    i, j = np.unravel_index(out[0, 0].argmax(), (31, 31))
    assert (i, j) == (10, 24)                         # up 10 sin 30 = 5, right 10 cos 30 = 8.7


@given(batches(min_side=4), seeds)
def test_translation_is_a_whole_pixel_shift(x, seed):
    out = RandomAffine(translate=(0.5, 0.5), fill=3)(x, rng(seed))
    H, W = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (H, H), (W, W)), constant_values=3)
    for n in range(len(x)):
        shifts = [padded[n, :, H - dy:2 * H - dy, W - dx:2 * W - dx]
                  for dy in range(-H // 2 - 1, H // 2 + 2) for dx in range(-W // 2 - 1, W // 2 + 2)]
        assert any(np.array_equal(out[n], s) for s in shifts)


def test_zoom_enlarges_about_the_centre():
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, 4, 6] = 1                                  # 2 px right of the centre
    out = RandomAffine(scale=(2, 2))(x, rng())
    assert out[0, 0, 4, 8] == 1 and out[0, 0, 4, 6] == pytest.approx(0.0)


def test_resize_halving_averages_blocks_and_doubling_keeps_constants():
    x = rng().random((2, 3, 8, 6))
    out = Resize((4, 3))(x)
    blocks = x.reshape(2, 3, 4, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(out, blocks, atol=1e-12)
    const = np.full((1, 1, 3, 5), 77, np.uint8)
    np.testing.assert_array_equal(Resize((7, 4))(const), np.full((1, 1, 7, 4), 77, np.uint8))
    np.testing.assert_array_equal(Resize((8, 6))(x), x)


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    x = rng().random((2, 3, 7, 10))
    for size in [(14, 5), (3, 3), (9, 21)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                              align_corners=False).numpy()
        np.testing.assert_allclose(Resize(size)(x), ref, atol=1e-12)


def test_center_crop():
    x = np.arange(2 * 1 * 5 * 6).reshape(2, 1, 5, 6).astype(np.float32)
    np.testing.assert_array_equal(CenterCrop((3, 2))(x), x[:, :, 1:4, 2:4])
    np.testing.assert_array_equal(CenterCrop(4)(x), x[:, :, 0:4, 1:5])
    with pytest.raises(ValueError, match="exceeds"):
        CenterCrop(7)(x)


# ---------------------------------------------------------------- colour and erasing

def test_color_jitter_extremes():
    x = rng().integers(0, 256, (4, 3, 6, 6), dtype=np.uint8)
    np.testing.assert_array_equal(ColorJitter()(x, rng()), x)
    grey = ColorJitter(saturation=(0, 0))(x, rng())
    assert np.abs(grey.astype(int) - grey[:, :1].astype(int)).max() <= 1      # channels equal
    flat = ColorJitter(contrast=(0, 0))(x.astype(np.float64) / 255, rng())
    assert np.ptp(flat, axis=(1, 2, 3)).max() < 1e-12                         # one grey level
    dark = ColorJitter(brightness=(0.5, 0.5))(x, rng())
    np.testing.assert_array_equal(dark, np.rint(x * 0.5).astype(np.uint8))
    bright = ColorJitter(brightness=(3, 3))(x.astype(np.float32) / 255, rng())
    assert bright.max() <= 1 and bright.min() >= 0


def test_color_jitter_grey_images():
    x = rng().integers(0, 256, (3, 1, 5, 5), dtype=np.uint8)
    out = ColorJitter(0.5, 0.5, 0.5)(x, rng())
    assert out.shape == x.shape and out.dtype == np.uint8
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ColorJitter(contrast=0.5)(np.zeros((1, 2, 3, 3), np.uint8), rng())


@given(st.integers(1, 6), seeds)
def test_erasing_draws_a_square_of_the_given_side(side, seed):
    x = np.zeros((5, 3, 8, 9), np.uint8)
    t = RandomErasing(p=1, scale=(side * side / 72,) * 2, ratio=(1, 1), value=255)
    out = t(x, rng(seed))
    for img in out:
        rows, cols = np.nonzero(img[0] == 255)
        assert len(rows) == side * side
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
        np.testing.assert_array_equal(img[0], img[2])
    np.testing.assert_array_equal(RandomErasing(p=0)(x + 1, rng(seed)), x + 1)


# ---------------------------------------------------------------- types, composition, marking

def test_to_float():
    x = np.array([0, 51, 255], np.uint8).reshape(1, 1, 1, 3)
    out = ToFloat()(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0, 0.2, 1], rtol=1e-6)
    assert ToFloat()(out.astype(np.float64)).dtype == np.float32


def test_normalize_errors():
    with pytest.raises(TypeError, match="ToFloat"):
        Normalize(0.5, 0.5)(np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="2 mean values for 3 channels"):
        Normalize((0.1, 0.2), (1, 1, 1))(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(0, (1, 0))


@pytest.mark.parametrize("bad", [np.zeros((3, 4, 4), np.uint8), np.zeros((1, 1, 4, 4), np.int32), [1, 2]])
def test_transforms_reject_non_batches(bad):
    with pytest.raises((ValueError, TypeError), match="batch|uint8 or float"):
        RandomHorizontalFlip()(bad, rng())


@pytest.mark.parametrize("make", [lambda: RandomHorizontalFlip(1.5), lambda: RandomCrop(0),
                                  lambda: RandomCrop(4, padding=-1),
                                  lambda: RandomCrop(4, padding_mode="wrap"),
                                  lambda: RandomRotation(-5), lambda: RandomAffine(translate=(2, 0)),
                                  lambda: RandomAffine(scale=(0, 1)), lambda: RandomErasing(scale=(0.5, 0.1)),
                                  lambda: ColorJitter(brightness=-1)])
def test_bad_parameters(make):
    with pytest.raises(ValueError):
        make()


def test_crop_larger_than_padded_image():
    with pytest.raises(ValueError, match="exceeds the padded image"):
        RandomCrop(9, padding=1)(np.zeros((1, 1, 6, 6), np.uint8), rng())
    with pytest.raises(ValueError, match="reflect padding"):
        RandomCrop(4, padding=4, padding_mode="reflect")(np.zeros((1, 1, 4, 4), np.uint8), rng())


def test_augmentation_marking_and_stripping():
    norm = Normalize(0.5, 0.25)
    crop, flip = RandomCrop(8, 1), RandomHorizontalFlip()
    train = Compose([flip, Compose([crop, ToFloat()]), norm])
    assert train.augmentation and augmentations(train) == [flip, crop]
    eval_tf = without_augmentation(train)
    assert not eval_tf.augmentation and augmentations(eval_tf) == []
    assert [type(t) for t in eval_tf.transforms] == [ToFloat, Normalize] and eval_tf.transforms[1] is norm
    assert augmentations(None) == [] and augmentations(lambda x, rng: x) == []
    assert all(t.augmentation for t in ALL_AUGMENTATIONS)
    assert not any(t.augmentation for t in (ToFloat(), norm, Resize(3), CenterCrop(3)))
    with pytest.raises(TypeError, match="callables"):
        Compose([3])
    with pytest.raises(NotImplementedError):
        Transform()(np.zeros((1, 1, 1, 1)))


def test_random_transforms_default_to_the_global_generator():
    from minicnn import random as mrandom
    x = rng().integers(0, 256, (8, 3, 6, 6), dtype=np.uint8)
    t = Compose([RandomHorizontalFlip(), RandomCrop(6, 2)])
    mrandom.manual_seed(3)
    a = t(x)
    mrandom.manual_seed(3)
    np.testing.assert_array_equal(t(x), a)
