"""Reading one image: true-range conversion of 16-bit and float images, decompression
bombs refused by a pixel limit, errors that name the file."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minicnn.data import ImageFolder
from minicnn.data.image import MAX_PIXELS, load_image
from minicnn.errors import FileFormatError, LimitExceededError


def _png_header_only(path, width, height):
    """A valid PNG signature and IHDR claiming width x height grey pixels, with a tiny IDAT:
    what a decompression bomb's header looks like, without its payload."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 40000], [65535, 32768, 1]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = load_image(tmp_path / "deep.png")
    expected = np.round(values / 65535 * 255).astype(np.uint8)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], expected) and rgb[0, 2, 1] == round(40000 / 65535 * 255) == 156
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_float_tiff_is_scaled_from_0_1(tmp_path):
    Image.fromarray(np.array([[0.5, 0.0], [1.0, 0.25]], np.float32)).save(tmp_path / "f.tif")
    rgb = load_image(tmp_path / "f.tif")
    assert rgb[0, 0, 0] == 128 and rgb[1, 0, 0] == 255 and rgb[0, 1, 0] == 0 and rgb[1, 1, 0] == 64


@pytest.mark.parametrize("values, match", [([[0.5, 2.0]], r"values in \[0.5, 2\].*\[0, 1\]"),
                                           ([[0.5, np.nan]], "NaN")])
def test_float_image_outside_0_1_is_refused(tmp_path, values, match):
    Image.fromarray(np.array(values, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(FileFormatError, match=match) as e:
        load_image(tmp_path / "f.tif")
    assert e.value.path == tmp_path / "f.tif"


def test_32_bit_integer_image_is_refused(tmp_path):
    Image.fromarray(np.array([[1, 70000]], np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(FileFormatError, match=r"i\.tif.*32-bit integer"):
        load_image(tmp_path / "i.tif")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """144 megapixels claimed by a 100-byte file: refused by our limit, not decoded with a warning."""
    path = _png_header_only(tmp_path / "bomb.png", 12000, 12000)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(LimitExceededError, match=r"bomb\.png.*144000000 pixels.*max_pixels") as e, \
            pytest.warns(Image.DecompressionBombWarning):   # Pillow's, from its header check
        load_image(path)
    assert e.value.path == path and Image.MAX_IMAGE_PIXELS == before and MAX_PIXELS < 144_000_000


def test_pixel_limit_is_the_callers(tmp_path):
    Image.new("RGB", (100, 80), (1, 2, 3)).save(tmp_path / "a.png")
    with pytest.raises(LimitExceededError, match="8000 pixels"):
        load_image(tmp_path / "a.png", max_pixels=7999)
    assert load_image(tmp_path / "a.png", max_pixels=8000).shape == (80, 100, 3)
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    (tmp_path / "a.png").rename(root / "c" / "a.png")
    with pytest.raises(LimitExceededError, match=r"a\.png"):
        ImageFolder(root, max_pixels=7999)
    assert ImageFolder(root, max_pixels=8000).images.shape == (1, 3, 80, 100)


def test_corrupt_image_is_a_file_format_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(FileFormatError, match=r"x\.png") as e:
        load_image(tmp_path / "x.png")
    assert e.value.path == tmp_path / "x.png"
    good = tmp_path / "g.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    with pytest.raises(FileFormatError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")


def test_image_folder_converts_deep_images_and_names_bad_ones(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(root / "a" / "deep.png")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(root / "a" / "float.tif")
    folder = ImageFolder(root)
    assert folder.images[0, :, 0, 0].tolist() == [156] * 3 and folder.images[1, :, 0, 0].tolist() == [128] * 3
    (root / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FileFormatError, match=r"broken\.png") as e:
        ImageFolder(root)
    assert e.value.path == root / "a" / "broken.png"
