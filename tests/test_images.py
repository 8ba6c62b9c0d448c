"""Every input kind is normalised to RGB the same way; every bad input gives
ImageError (a ValueError) naming the problem, and nothing else."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from showtell.images import ImageError, Preprocessing, load_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_input_kinds_all_give_the_same_rgb_image(tmp_path):
    path = EXAMPLES / "cat.jpg"
    ref = load_image(str(path))
    assert ref.mode == "RGB"
    arr = np.asarray(ref)
    for source in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), ref, arr,
                   arr.astype(np.float32) / 255.0):
        img = load_image(source)
        assert img.mode == "RGB" and img.size == ref.size
        assert np.abs(np.asarray(img).astype(int) - arr.astype(int)).max() <= 1


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "1", "F"])
def test_any_mode_becomes_rgb(mode):
    arrays = {"I;16": np.full((24, 32), 40000, dtype=np.uint16), "I": np.full((24, 32), 100, dtype=np.int32),
              "F": np.full((24, 32), 0.5, dtype=np.float32)}
    img = Image.fromarray(arrays[mode]) if mode in arrays else Image.new("RGB", (32, 24), (200, 100, 50)).convert(mode)
    assert img.mode == mode
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (32, 24)


def test_transparent_palette_and_sixteen_bit_values():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    p = Image.new("P", (8, 8), 0)
    p.putpalette([10, 20, 30] * 256)
    assert load_image(p).getpixel((0, 0)) == (10, 20, 30)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert load_image(sixteen).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((4, 4), 65535, dtype=np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((5, 6), dtype=np.uint8)).size == (6, 5)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (20, 40)


def _huge_png_header(width, height):
    """A PNG whose header claims width x height pixels, with no real data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bad_inputs_raise_image_error_naming_the_problem(tmp_path):
    jpeg = (EXAMPLES / "cat.jpg").read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("this is not a photo")
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "bomb.png").write_bytes(_huge_png_header(20000, 20000))
    cases = {
        str(tmp_path / "missing.jpg"): "no such file",
        str(tmp_path / "empty.jpg"): "empty",
        str(tmp_path / "notes.txt"): "not an image",
        str(tmp_path / "truncated.jpg"): "truncated",
        str(tmp_path / "bomb.png"): "too large",
        str(tmp_path): "folder",
    }
    for source, words in cases.items():
        with pytest.raises(ImageError, match=words) as info:
            load_image(source)
        assert isinstance(info.value, ValueError)
    for source, words in [(b"", "empty"), (b"GIF89a-not-really", "not an image"), (jpeg[:300], "truncated"),
                          (_huge_png_header(9000, 9000), "too large"),
                          (np.zeros((3, 3, 7)), "not an image"), (np.full((2, 2), np.nan), "NaN"),
                          (12345, "cannot caption an object of type int")]:
        with pytest.raises(ImageError, match=words):
            load_image(source)


def test_preprocessing_gives_normalised_tensor_of_model_size():
    prep = Preprocessing(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
    x = prep(load_image(EXAMPLES / "astronaut.jpg"))
    assert x.shape == (3, 224, 224)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    white = prep(Image.new("RGB", (50, 80), (255, 255, 255)))
    assert white.shape == (3, 224, 224) and float(white.min()) == pytest.approx(1.0)
