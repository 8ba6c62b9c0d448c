"""Turning any user-supplied image into the encoder's input tensor.

This is the one preprocessing path: feature caching, training, ``caption()``
and the web app all call :func:`load_image` then :meth:`Preprocessing.__call__`.

Every input is treated as hostile: a path is read only if it is a regular
file no larger than ``max_bytes`` (never a FIFO or a device, never blocking),
only the promised formats are decoded, any failure of the decoder becomes an
:class:`ImageError`, and a large photo is decoded or shrunk to a little over
the encoder's input size so one request never holds more than the decoded
pixels once (see ``benchmarks/bench_image_memory.py``).
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Photos beyond this many pixels (about 8,000 x 8,000) are refused as
# decompression bombs: a caption needs 224 x 224. Pillow holds RGB as 4 bytes
# a pixel, so the largest photo accepted costs 256 MB while decoded; every
# other buffer of a request is kept small (see _shrink_to_rgb), which keeps a
# request under the 300 MB the web app budgets for it.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

# The memory one decode may take, checked from the header before any pixel is
# decoded: an 8000 x 8000 RGB photo. A decoded pixel costs 1 byte (modes 1, L,
# P), 2 (I;16) or 4 (every other mode), times the copies the format's decoder
# holds besides Pillow's image: Pillow's WebP decoder (libwebp's animation
# decoder) keeps two frame buffers and a bytes copy, 16.4 bytes a pixel measured
# with Pillow 12 for lossless and lossy files alike, so a WebP is limited to
# 16 megapixels. JPEGs are decoded at reduced scale first (draft), so only the
# reduced size counts. (benchmarks/bench_image_memory.py measures each.)
MAX_DECODE_BYTES = 4 * MAX_IMAGE_PIXELS
_DECODER_COPIES = {"WEBP": 4}

# The most bytes read from one file or accepted as raw bytes: the web app's
# upload limit. A parameter of load_image; it can be raised, never removed,
# since an unbounded read is how /dev/zero or a 3 GB file exhausts memory.
MAX_IMAGE_BYTES = 10_000_000

# The model squashes the whole frame to a square, so a 1:20 strip is already
# stretched twentyfold and its caption is noise; wider than that is no photo
# (phone panoramas reach about 1:10). The bound also caps the cost of
# resizing: the filter's support grows with the long side's shrink factor,
# and a 1 x 64,000,000 strip needed gigabytes of filter coefficients.
MAX_ASPECT_RATIO = 20

# The formats the README promises; Pillow's other decoders (QOI, DDS, AVIF,
# PSD, ...) are never run on user input. MPO (phone JPEGs holding several
# pictures) is opened by the JPEG decoder.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# The formats offered for upload, as messages name them (TIFF is decoded too,
# but browsers do not show it, so the page does not offer it).
FORMAT_NAMES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}

_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_STRIP_PIXELS = 2_000_000  # pixels converted at a time when shrinking a large photo


def _or_list(names: list[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


# What to do instead, when nothing more specific fits (a corrupt file, an unknown format).
FORMAT_ADVICE = f"Please upload a {_or_list(list(FORMAT_NAMES.values()))} photo."


def decode_cost(size: tuple[int, int], mode: str, fmt: str | None) -> int:
    """Bytes that decoding an image of ``size`` (width, height) and ``mode``
    in format ``fmt`` takes, by the rule of MAX_DECODE_BYTES."""
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return size[0] * size[1] * per_pixel * _DECODER_COPIES.get(fmt or "", 1)


def pixel_limit(fmt: str) -> int:
    """The most pixels a colour photo in format ``fmt`` may have: MAX_IMAGE_PIXELS,
    or fewer where the format's decoder holds copies (WebP: 16,000,000)."""
    return min(MAX_IMAGE_PIXELS, MAX_DECODE_BYTES // decode_cost((1, 1), "RGB", fmt))


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:g} megapixels"


def accepted_text() -> str:
    """The uploads accepted, each format with its pixel limit, from the numbers
    the checks use: "Please upload a JPEG, PNG, GIF or BMP photo of at most 64
    megapixels, or a WebP photo of at most 16 megapixels." """
    by_limit: dict[int, list[str]] = {}
    for fmt, name in FORMAT_NAMES.items():
        by_limit.setdefault(pixel_limit(fmt), []).append(name)
    return "Please upload a " + ", or a ".join(
        f"{_or_list(names)} photo of at most {_megapixels(limit)}"
        for limit, names in sorted(by_limit.items(), reverse=True)) + "."


# The web page's advice for a file it cannot take, and the advice for a photo
# over its format's budget; for a photo over MAX_IMAGE_PIXELS, PIXELS_ADVICE.
ACCEPTED = accepted_text()
_SMALLER = "".join(f"a {name} of at most {pixel_limit(fmt) / 1e6:g}; " for fmt, name in FORMAT_NAMES.items()
                   if pixel_limit(fmt) < MAX_IMAGE_PIXELS)
PIXELS_ADVICE = (f"Please upload a photo of at most {_megapixels(MAX_IMAGE_PIXELS)} "
                 f"({_SMALLER}the model reads 224x224: a smaller copy captions the same).")


class ImageError(ValueError):
    """An input that cannot be captioned; the message says why and ``advice``
    what would work instead (the web page shows it after the message)."""

    def __init__(self, message: str, advice: str = FORMAT_ADVICE):
        super().__init__(message)
        self.advice = advice


def _crop_advice(width: int, height: int) -> str:
    """What to do with a strip too long and thin to caption: the largest crop that passes."""
    if width >= height:
        crop = f"{MAX_ASPECT_RATIO * height}x{height}"
    else:
        crop = f"{width}x{MAX_ASPECT_RATIO * width}"
    return (f"Crop it to at most {MAX_ASPECT_RATIO}:1 (here at most {crop}), or caption it in parts: "
            f"the model squashes every photo to a square.")


def _name(source: Any) -> str:
    """How an error message names ``source``: its path (shortened when absurdly long)."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fsdecode(source) if not isinstance(source, str) else source
        return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]} ({len(text):,} characters)"
    return type(source).__name__


def _check_max_bytes(max_bytes: Any) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive number of bytes, not {max_bytes!r}: "
                         "reads are always bounded (raise the limit instead)")
    return max_bytes


def _check_size(width: int, height: int) -> None:
    """Refuse sizes no caption needs, before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageError(f"the image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"the image is too large ({width}x{height}; limit {MAX_IMAGE_PIXELS:,} pixels)",
                         PIXELS_ADVICE)
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(f"the image is {width}x{height}, too long and thin to caption "
                         f"(aspect ratio over {MAX_ASPECT_RATIO}:1)", _crop_advice(width, height))


def _check_decode_cost(img: Image.Image) -> None:
    """Refuse an image whose decoding would take over MAX_DECODE_BYTES."""
    cost = decode_cost(img.size, img.mode, img.format)
    if cost > MAX_DECODE_BYTES:
        w, h = img.size
        limit = MAX_DECODE_BYTES * w * h // cost
        raise ImageError(f"the image is too large to decode within the memory budget ({w}x{h} {img.mode} "
                         f"{img.format}: about {cost / 1e6:,.0f} MB to decode, over {MAX_DECODE_BYTES / 1e6:,.0f} MB; "
                         f"limit {limit:,} pixels for this format)", ACCEPTED)


# JPEG start-of-frame markers by entropy coding (Huffman or arithmetic).
_JPEG_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}
_JPEG_ARITHMETIC_SOF = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_is_huffman_coded(data: bytes) -> bool:
    """Whether the JPEG in ``data`` is Huffman coded (almost every JPEG), from
    its start-of-frame marker; False when the header cannot be walked."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_HUFFMAN_SOF:
            return True
        if marker in _JPEG_ARITHMETIC_SOF or marker == 0xDA:  # SOS: the scan starts, no frame seen
            return False
        i += 2 + (data[i + 2] << 8 | data[i + 3])
    return False


def _check_jpeg_length(data: bytes, size: tuple[int, int]) -> None:
    """Refuse a Huffman-coded JPEG too short to hold its pixels. Every 8 x 8
    block of the full-resolution component costs at least one bit (its DC
    coefficient, in baseline and progressive scans alike), so a file of fewer
    than blocks / 8 bytes is truncated: libjpeg would fill the missing blocks
    with grey and only warn (a 2 KB file claiming 7999 x 7999 pixels). Real
    files, even of a uniform grey at quality 5, are at least twice that."""
    w, h = size
    floor = -(-w // 8) * -(-h // 8) // 8
    if len(data) < floor and _jpeg_is_huffman_coded(data):
        raise ImageError(f"the image file is truncated: its header says {w}x{h} pixels, which needs at least "
                         f"{floor:,} bytes of JPEG data, and the file has {len(data):,}")


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {kind}, not an image file"


def _read_file(path: Any, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``. Never blocks (a FIFO
    is refused before it is opened, and opened non-blocking should it be swapped
    in meanwhile) and never reads more than ``max_bytes + 1`` bytes."""
    name = _name(path)
    try:
        info = os.stat(path)  # follows symlinks: a link to /dev/zero is a device
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ELOOP, EACCES; a NUL byte in the path
        raise ImageError(f"{name}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    problem = _not_regular(info.st_mode)
    if problem:
        raise ImageError(f"{name}: {problem}")
    if info.st_size > max_bytes:
        raise ImageError(f"{name}: the file is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({e.strerror or e})") from None
    try:
        problem = _not_regular(os.fstat(fd).st_mode)  # the file opened, should the path have changed
        if problem:
            raise ImageError(f"{name}: {problem}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)  # + 1 tells a file that grew past the limit
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageError(f"{name}: the file is over the limit of {max_bytes:,} bytes")
    return data


def _open_bytes(data: bytes, name: str, target_size: tuple[int, int] | None) -> Image.Image:
    """Decode ``data`` (one of FORMATS), at reduced scale when the format allows.
    Any failure of the decoder, whatever it raises, is an ImageError."""
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty (zero bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            _check_size(*img.size)
            if img.format == "JPEG":
                _check_jpeg_length(data, img.size)
            if target_size is not None and img.format == "JPEG":
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale for the price of the
                # smaller image; draft() never goes below the size asked, and
                # twice the target keeps the final resize a true downscale.
                side = 2 * max(target_size)
                img.draft(None, (side, side))
            _check_decode_cost(img)
            img.load()  # decode now, so a truncated file fails here
    except ImageError as e:
        raise ImageError(f"{name}: {e}", e.advice) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: the image is too large to decode safely "
                         f"(limit {MAX_IMAGE_PIXELS:,} pixels): {e}", PIXELS_ADVICE) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image in a supported format "
                         f"({', '.join(FORMATS)}; Pillow cannot identify it as one)") from e
    except MemoryError:
        raise ImageError(f"{name}: ran out of memory decoding the image") from None
    except OSError as e:
        raise ImageError(f"{name}: the image file is truncated or corrupt ({e})") from e
    except Exception as e:  # a decoder bug on a hostile file (IndexError, struct.error, ...)
        raise ImageError(f"{name}: the image file is corrupt ({type(e).__name__}: {e})") from e
    return img


def _rows_to_uint8(rows: np.ndarray, float_scale: float) -> np.ndarray:
    """Rows of an image array as 8-bit values (floats times ``float_scale``)."""
    if rows.dtype.kind == "b":
        return rows.astype(np.uint8) * np.uint8(255)  # a mask: True is white
    if rows.dtype.kind == "f":
        return np.clip(rows * float_scale, 0, 255).round().astype(np.uint8)
    if rows.dtype.kind == "u" and rows.dtype.itemsize == 2:
        return (rows >> 8).astype(np.uint8)
    if rows.dtype != np.uint8:
        return np.clip(rows, 0, 255).astype(np.uint8)
    return rows


def _array_to_image(arr: np.ndarray, target_size: tuple[int, int] | None = None) -> Image.Image:
    """A numpy array as a PIL image, checked for shape and dtype before any
    conversion, then converted a strip of rows at a time: a float array costs no
    full-size float temporaries (a 4000 x 4000 x 3 float32 array took 551 MB
    more than itself), and with ``target_size`` a large one is shrunk strip by
    strip as in :func:`_shrink_to_rgb`."""
    if arr.dtype.kind not in "biuf":
        raise ImageError(f"numpy array of dtype {arr.dtype} is not an image: expected unsigned or "
                         "signed integers, floats or booleans")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"numpy array of shape {arr.shape} is not an image: expected (H, W), "
                         "(H, W, 3) or (H, W, 4)")
    if arr.size == 0:
        raise ImageError("numpy array is empty")
    h, w = arr.shape[:2]
    _check_size(w, h)
    channels = arr.shape[2] if arr.ndim == 3 else 1
    side = 2 * max(target_size) if target_size is not None else None
    fx, fy = (max(1, w // side), max(1, h // side)) if side else (1, 1)
    # Strips of about a million values, a multiple of fy rows (strips reduce like the whole).
    rows = fy * max(1, _STRIP_PIXELS // (2 * w * channels * fy))
    scale = 1.0
    if arr.dtype.kind == "f":
        peak = -np.inf
        for top in range(0, h, rows):
            strip = arr[top:top + rows]
            if not np.isfinite(strip).all():
                raise ImageError("numpy array holds NaN or infinite values")
            peak = max(peak, float(strip.max()))
        scale = 255.0 if peak <= 1.0 else 1.0  # floats are taken as 0..1 when they fit, else as 0..255
    if (fx, fy) == (1, 1):
        out = None
        for top in range(0, h, rows):
            strip = Image.fromarray(np.ascontiguousarray(_rows_to_uint8(arr[top:top + rows], scale)))
            if out is None:
                out = Image.new(strip.mode, (w, h))
            out.paste(strip, (0, top))
        return out
    out = Image.new("RGB", (-(-w // fx), -(-h // fy)))
    for top in range(0, h, rows):
        strip = Image.fromarray(np.ascontiguousarray(_rows_to_uint8(arr[top:top + rows], scale)))
        out.paste(_convert_modes(strip).reduce((fx, fy)), (0, top // fy))
    return out


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = as stored), read the way ImageOps.exif_transpose does."""
    value = img.getexif().get(_ORIENTATION, 1)
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _convert_modes(img: Image.Image, peak: float | None = None) -> Image.Image:
    """Any mode to 8-bit RGB, transparency laid over white. ``peak`` is the
    largest value of the whole image for modes I and F (the scale depends on
    it), given when ``img`` is one strip of a larger image."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        if peak is None:
            peak = arr.max()
        hi = 65535 if img.mode.startswith("I;16") or peak > 255 else 255
        img = Image.fromarray((np.clip(arr, 0, hi) * (255.0 / hi)).round().astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageError("the image holds NaN or infinite values")
        if peak is None:
            peak = arr.max()
        scale = 255.0 if peak <= 1.0 else 1.0  # 0..1 when the values fit, else 0..255
        img = Image.fromarray(np.clip(arr * scale, 0, 255).round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def _shrink_to_rgb(img: Image.Image, factors: tuple[int, int]) -> Image.Image:
    """``img`` in RGB, reduced by whole ``factors`` (box filter), converted and
    reduced a strip at a time: the full-size image is never copied, whatever
    its mode (an 8000 x 8000 palette image would take 256 MB more as RGB)."""
    fx, fy = factors
    w, h = img.size
    peak = None
    if img.mode in ("I", "F"):
        peak = img.getextrema()[1]
    out = Image.new("RGB", (-(-w // fx), -(-h // fy)))
    rows = fy * max(1, _STRIP_PIXELS // (w * fy))  # a multiple of fy: strips reduce like the whole
    for top in range(0, h, rows):
        strip = _convert_modes(img.crop((0, top, w, min(h, top + rows))), peak)
        out.paste(strip.reduce((fx, fy)), (0, top // fy))
    return out


def to_rgb(img: Image.Image, target_size: tuple[int, int] | None = None) -> Image.Image:
    """Apply EXIF orientation and convert any mode (grayscale, palette,
    RGBA, CMYK, 16-bit) to 8-bit RGB. Transparency is laid over white.

    With ``target_size`` (height, width: what the image will be resized to), a
    photo more than four times that size is first shrunk by a whole factor to
    no less than twice it, without a full-size copy."""
    w, h = img.size
    _check_size(w, h)
    side = 2 * max(target_size) if target_size is not None else None
    factors = (max(1, w // side), max(1, h // side)) if side else (1, 1)
    orientation = _orientation(img)
    if factors != (1, 1):
        img = _shrink_to_rgb(img, factors)
        return img.transpose(_TRANSPOSE[orientation]) if orientation != 1 else img
    if orientation != 1:
        img = ImageOps.exif_transpose(img)  # only now: without a rotation it would copy
    return _convert_modes(img)


def _check_target_size(target_size: Any) -> tuple[int, int] | None:
    if target_size is None:
        return None
    if (not isinstance(target_size, (tuple, list)) or len(target_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in target_size)):
        raise ValueError(f"target_size must be (height, width) in pixels, not {target_size!r}")
    return tuple(target_size)


def load_image(source: Any, *, max_bytes: int = MAX_IMAGE_BYTES,
               target_size: tuple[int, int] | None = None) -> Image.Image:
    """An RGB ``PIL.Image`` from a path, raw bytes, a ``PIL.Image`` or a numpy
    array. Raises :class:`ImageError` naming the problem for anything else.

    ``max_bytes`` bounds what is read from a file or accepted as bytes (it can
    be raised, not removed). ``target_size`` (height, width), e.g.
    ``Preprocessing.size``, lets a large photo be decoded or shrunk to about
    twice that size, which bounds memory; photos up to four times that size
    come back unchanged, so their preprocessed tensors stay bit-identical.
    """
    max_bytes = _check_max_bytes(max_bytes)
    target_size = _check_target_size(target_size)
    name = _name(source)
    if isinstance(source, Image.Image):
        img = source
        try:
            _check_size(*img.size)
            if isinstance(img, ImageFile.ImageFile) and getattr(img, "_im", 0) is None:  # opened, not decoded
                _check_decode_cost(img)
            img.load()
        except ImageError:
            raise
        except MemoryError:
            raise ImageError("ran out of memory decoding the PIL.Image") from None
        except OSError as e:
            raise ImageError(f"the image is truncated or corrupt ({e})") from e
        except Exception as e:  # "Operation on closed image", a lazy decoder's failure
            raise ImageError(f"the PIL.Image cannot be read: closed, or not decodable "
                             f"({type(e).__name__}: {e})") from e
    elif isinstance(source, np.ndarray):
        img = _array_to_image(source, target_size)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        if size > max_bytes:
            raise ImageError(f"image bytes: {size:,} bytes, over the limit of {max_bytes:,}")
        img = _open_bytes(bytes(source), "image bytes", target_size)
    elif isinstance(source, (str, os.PathLike)):
        img = _open_bytes(_read_file(source, max_bytes), name, target_size)
    else:
        raise ImageError(f"cannot caption an object of type {type(source).__name__}: give a path, bytes, "
                         "a PIL.Image or a numpy array")
    try:
        return to_rgb(img, target_size)
    except ImageError as e:
        if isinstance(source, (str, os.PathLike)):
            raise ImageError(f"{name}: {e}") from e
        raise
    except MemoryError:
        raise ImageError(f"{name}: ran out of memory converting the image to RGB") from None
    except OSError as e:
        raise ImageError(f"{name}: the image is truncated or corrupt ({e})") from e
    except Exception as e:  # malformed EXIF, an unusual mode Pillow cannot convert
        raise ImageError(f"{name}: the image cannot be converted to RGB ({type(e).__name__}: {e})") from e


_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the encoder's input, from the encoder weights'
    own metadata (size, interpolation, mean, std). The whole frame is resized to
    ``size`` (no crop): a caption describes the whole photo, and the Flickr8k
    copy we train on is already squashed to 224x224."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """(3, H, W) float tensor, normalised. (Plain Pillow and torch, the same
        arithmetic as torchvision's resize/to_tensor/normalize, without paying
        a second to import torchvision.)"""
        if img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), _RESAMPLE[self.interpolation])
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def key(self) -> str:
        """A short string that changes whenever the preprocessing does (feature cache key)."""
        return f"{self.size[0]}x{self.size[1]}-{self.interpolation}-m{self.mean}-s{self.std}"
