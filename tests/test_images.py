"""Every input kind is normalised to RGB the same way; every bad input gives
ImageError (a ValueError) naming the problem, and nothing else."""
import hashlib
import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

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


# --- the preprocessing of ordinary photos is unchanged --------------------------

SHARED = Path(os.environ.get("SHOWTELL_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
# sha256 (first 32 hex digits) of the float32 bytes of Preprocessing()(load_image(path)),
# computed with the code before load_image learnt max_bytes / target_size / formats
# (commit 15247b7): images up to four times the encoder's size must not change.
BEFORE = {
    "flickr8k/Images/1000268201_693b08cb0e.jpg": ("33faf13b974d573142f6568441281de4",
                                                  "39587da6b2ec23b3d8df95230344aa7a"),
    "examples/cat.jpg": ("ad7366ed37d74d503eb8868297e566b1", "10347945e9767add902efe40519db3e9"),
    "examples/astronaut.jpg": ("c9f6d7cbf1c1f32143138c7df22300f0", "33c9f9e05cc49249d39a969406d05920"),
    "coco-mini/train2017/000000000790.jpg": ("8db8765f5f61723ab1c11665b2e40080",
                                             "7d4d2c7c9572e24d46ab36bd342cf4cd"),
}
BEFORE_MODES = {"L": "9ff84c4b22d93ff88b287badebdddd23", "LA": "5c7d1ba3b90f096e52e03282321b3635",
                "RGBA": "88c84c2d56e8c5f5b2c129c03c8533ab", "P": "65f69090980c7dc5189c776ab004463c",
                "I;16": "b58fbc18e5ec7cc97a78a617fe285dee", "1": "e646993f643bebd697f534fdff4485c2",
                "P-transparent": "220a99e852fd291274562fcfd95478e9", "RGB-exif6": "6cfd832c9ef79ae6e021e5b5f9034a9b"}


def _digest(x):
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()[:32]


def _synthetic_pngs():
    """Deterministic 210 x 150 PNGs in each mode load_image converts."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (150, 210, 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, 210).astype(np.uint8), (150, 1))
    base = Image.fromarray(rgb)
    imgs = {"L": base.convert("L"), "LA": Image.merge("LA", (base.convert("L"), Image.fromarray(alpha))),
            "RGBA": Image.fromarray(np.dstack([rgb, alpha])), "P": base.quantize(64),
            "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "1": base.convert("1")}
    imgs["P-transparent"] = imgs["P"].copy()
    out = {}
    for name, img in imgs.items():
        out[name] = _png_bytes(img) if name != "P-transparent" else _encode(img, "PNG", transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    out["RGB-exif6"] = _encode(base, "PNG", exif=exif)
    return out


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("relative", sorted(BEFORE))
def test_ordinary_photos_give_the_same_tensor_as_before(relative):
    root = EXAMPLES.parent if relative.startswith("examples/") else SHARED
    path = root / relative
    if not path.exists():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"test data not found at {path}")
    imagenet, lite0 = Preprocessing(), Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    for target in (None, imagenet.size):
        img = load_image(path, target_size=target)
        assert (_digest(imagenet(img)), _digest(lite0(img))) == BEFORE[relative]


def test_every_mode_gives_the_same_tensor_as_before():
    for name, data in _synthetic_pngs().items():
        for target in (None, (224, 224)):
            assert _digest(Preprocessing()(load_image(data, target_size=target))) == BEFORE_MODES[name], name


# --- large photos are decoded or shrunk to about twice the encoder's size --------

def test_large_jpeg_is_decoded_at_reduced_scale():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1800, 2400, 3), dtype=np.uint8))
    data = _encode(img, "JPEG", quality=80)
    full = load_image(data)
    small = load_image(data, target_size=(224, 224))
    assert full.size == (2400, 1800)
    assert small.size == (600, 450)  # libjpeg's 1/4 scale: >= 448 on each side
    a, b = (Preprocessing()(x) for x in (full, small))
    assert (a - b).abs().mean() < 0.05  # the same picture, resampled differently


def test_large_png_is_shrunk_by_whole_factors_and_keeps_its_orientation():
    rgb = np.zeros((1000, 2000, 3), dtype=np.uint8)
    rgb[:, :1000] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: the white half ends on top
    data = _encode(Image.fromarray(rgb), "PNG", exif=exif)
    small = load_image(data, target_size=(224, 224))
    full = load_image(data)
    assert full.size == (1000, 2000) and small.size == (500, 500)  # factors 4 and 2, then rotated
    assert small.getpixel((250, 10)) == full.getpixel((500, 10)) == (255, 255, 255)
    assert small.getpixel((250, 490)) == full.getpixel((500, 1990)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "P-transparent", "I;16", "I", "F", "CMYK", "1", "L"])
def test_shrinking_strip_by_strip_equals_converting_the_whole_image(mode, monkeypatch):
    from showtell import images

    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, (700, 930, 3), dtype=np.uint8))
    if mode in ("I;16", "I", "F"):
        values = {"I;16": rng.integers(0, 65536, (700, 930)).astype(np.uint16),
                  "I": rng.integers(0, 1000, (700, 930)).astype(np.int32),
                  "F": rng.random((700, 930)).astype(np.float32)}[mode]
        img = Image.fromarray(values)
    elif mode.startswith("P"):
        img = Image.frombytes("P", (930, 700), rng.integers(0, 32, (700, 930), dtype=np.uint8).tobytes())
        img.putpalette(rng.integers(0, 256, 32 * 3, dtype=np.uint8).tobytes())
        if mode == "P-transparent":
            img.info["transparency"] = 5
    else:
        img = rgb.convert(mode if mode != "LA" else "LA")
    whole = images._convert_modes(img).reduce((3, 4))
    monkeypatch.setattr(images, "_STRIP_PIXELS", 7000)  # many strips, one that is shorter
    assert images._shrink_to_rgb(img, (3, 4)).tobytes() == whole.tobytes()


def test_absurd_aspect_ratios_are_refused_before_decoding():
    with pytest.raises(ImageError, match="too long and thin"):
        load_image(_huge_png_header(1, 64_000_000))
    with pytest.raises(ImageError, match="too long and thin"):
        load_image(np.zeros((2, 50), dtype=np.uint8))
    assert load_image(np.zeros((10, 200), dtype=np.uint8)).size == (200, 10)  # 1:20 is still a photo


# --- decoding cost bounded before decoding (issue 22) -----------------------------

@pytest.mark.parametrize("fmt, mode, over", [("PNG", "RGB", (120, 90)), ("PNG", "RGBA", (120, 90)),
                                             ("TIFF", "RGB", (120, 90)), ("TIFF", "F", (120, 90)),
                                             ("BMP", "RGB", (120, 90)), ("GIF", "P", (250, 200))])
def test_each_format_is_refused_over_its_decoding_budget_before_decoding(fmt, mode, over, monkeypatch):
    from showtell import images

    # The budget of a 100 x 100 RGB image: 10,000 pixels of 4 bytes, 40,000 of
    # 1 byte (palette); Pillow's WebP decoder holds four copies (2,500 pixels).
    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 4 * 100 * 100)

    def encoded(size, kind=fmt):
        img = Image.new("RGB", size, (10, 200, 30))
        return _encode(img.quantize(4) if mode == "P" else img.convert(mode), kind)

    assert load_image(encoded((60, 60))).size == (60, 60)
    with pytest.raises(ImageError, match=rf"memory budget \({over[0]}x{over[1]} {mode} {fmt}: about 0 MB to "
                                         r"decode, over 0 MB; limit (10|40),000 pixels for this format\)"):
        load_image(encoded(over))
    webp = _encode(Image.new("RGB", (60, 60)), "WEBP", lossless=True)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self, *a: decoded.append(self))
    with pytest.raises(ImageError, match=r"too large to decode within the memory budget \(60x60 RGB WEBP: .* "
                                         r"limit 2,500 pixels for this format\)"):
        load_image(webp)
    with pytest.raises(ImageError, match="memory budget"):
        load_image(Image.open(io.BytesIO(webp)))  # a lazily opened PIL.Image too
    assert not decoded  # refused from the header


def test_decoding_budget_admits_an_8000_pixel_square_rgb_photo_and_a_4000_pixel_webp():
    from showtell.images import MAX_DECODE_BYTES, decode_cost

    assert decode_cost((8000, 8000), "RGB", "PNG") <= MAX_DECODE_BYTES
    assert decode_cost((8000, 8000), "I;16", "TIFF") <= MAX_DECODE_BYTES
    assert decode_cost((4000, 4000), "RGBA", "WEBP") <= MAX_DECODE_BYTES < decode_cost((4001, 4001), "RGB", "WEBP")
    # The 2.5 KB lossless WebP of 8000 x 8000 pixels took +976 MB.
    assert decode_cost((8000, 8000), "RGB", "WEBP") > MAX_DECODE_BYTES


def test_jpeg_too_short_for_its_pixels_is_refused_as_truncated():
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).resize((2000, 2000))
    data = _encode(img, "JPEG", quality=50)
    forged = data[:2000] + b"\xff\xd9"  # cut and closed with an end-of-image marker: libjpeg only warns
    for target in (None, (224, 224)):
        with pytest.raises(ImageError, match=r"truncated: its header says 2000x2000 pixels, which needs at least "
                                             r"7,812 bytes of JPEG data, and the file has 2,002"):
            load_image(forged, target_size=target)
    assert load_image(data, target_size=(224, 224)).size == (500, 500)
    # The floor holds for the smallest real files: a uniform grey, progressive, optimised, quality 5.
    for mode in ("L", "RGB"):
        flat = _encode(Image.new(mode, (2000, 2000), 128 if mode == "L" else (128,) * 3), "JPEG", quality=5,
                       progressive=True, optimize=True)
        assert load_image(flat).size == (2000, 2000)


def test_float_array_is_converted_without_full_size_temporaries():
    import tracemalloc

    rng = np.random.default_rng(4)
    arr = rng.random((1500, 2000, 3), dtype=np.float32)  # 36 MB
    expected = load_image(Image.fromarray(np.clip(arr * 255.0, 0, 255).round().astype(np.uint8)),
                          target_size=(224, 224))
    for target in ((224, 224), None):
        tracemalloc.start()
        img = load_image(arr, target_size=target)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # numpy's allocations are traced: strips of 1 M values, never a full-size copy (was ~4 x the array)
        assert peak < arr.nbytes / 3, f"{peak / 1e6:.1f} MB"
    assert img.size == (2000, 1500)
    assert load_image(arr, target_size=(224, 224)).tobytes() == expected.tobytes()


# --- every other kind of bad input is an ImageError ------------------------------

@pytest.mark.parametrize("dtype", ["object", "U5", "S3", "datetime64[s]", "timedelta64[s]", "complex128", "V4"])
def test_numpy_arrays_that_hold_no_pixels_are_refused_naming_the_dtype(dtype):
    arr = np.zeros((8, 8), dtype=dtype)
    with pytest.raises(ImageError, match=re.escape(str(arr.dtype))):
        load_image(arr)


def test_boolean_and_big_endian_arrays_give_their_picture():
    mask = np.zeros((6, 6), dtype=bool)
    mask[:3] = True
    img = load_image(mask)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((0, 5)) == (0, 0, 0)
    assert load_image(np.full((4, 4), 65535, dtype=">u2")).getpixel((0, 0)) == (255, 255, 255)


def test_closed_pil_image_is_an_image_error():
    img = Image.open(EXAMPLES / "cat.jpg")
    img.close()
    with pytest.raises(ImageError, match="closed"):
        load_image(img)


@pytest.mark.parametrize("fmt", ["QOI", "ICO", "DDS", "TGA", "PCX", "SGI", "PPM", "IM"])
def test_formats_outside_the_promised_ones_are_refused(fmt):
    data = _encode(Image.new("RGB", (16, 16), (10, 200, 30)), fmt)
    assert Image.open(io.BytesIO(data)).format in (fmt, "DDS")  # Pillow itself could decode it
    with pytest.raises(ImageError, match="supported format"):
        load_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_promised_formats_decode(fmt):
    img = load_image(_encode(Image.new("RGB", (40, 30), (10, 200, 30)), fmt))
    assert img.size == (40, 30) and img.mode == "RGB"
