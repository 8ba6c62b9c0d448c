"""Turning any user-supplied image into the encoder's input tensor.

This is the one preprocessing path: feature caching, training, ``caption()``
and the web app all call :func:`load_image` then :meth:`Preprocessing.__call__`.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Photos beyond this many pixels (about 8,000 x 8,000) are refused as
# decompression bombs: a caption needs 224 x 224, and decoding a huge image
# would take gigabytes of memory in the web app.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An input that cannot be captioned; the message says why."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return type(source).__name__


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty (zero bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()  # decode now, so a truncated file fails here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: the image is too large to decode safely "
                         f"(limit {MAX_IMAGE_PIXELS:,} pixels): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image (Pillow cannot identify the format)") from e
    except OSError as e:
        raise ImageError(f"{name}: the image file is truncated or corrupt ({e})") from e
    except (SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: the image file is corrupt ({e})") from e
    return img


def _array_to_image(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"numpy array of shape {arr.shape} is not an image: expected (H, W), "
                         "(H, W, 3) or (H, W, 4)")
    if arr.size == 0:
        raise ImageError("numpy array is empty")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("numpy array holds NaN or infinite values")
        # Floats are taken as 0..1 when they fit, else as 0..255.
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (grayscale, palette,
    RGBA, CMYK, 16-bit) to 8-bit RGB. Transparency is laid over white."""
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"the image is too large ({w}x{h}; limit {MAX_IMAGE_PIXELS:,} pixels)")
    if w == 0 or h == 0:
        raise ImageError("the image has no pixels")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        hi = 65535 if img.mode.startswith("I;16") or arr.max() > 255 else 255
        img = Image.fromarray((np.clip(arr, 0, hi) * (255.0 / hi)).round().astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        img = _array_to_image(arr)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def load_image(source: Any) -> Image.Image:
    """An RGB ``PIL.Image`` from a path, raw bytes, a ``PIL.Image`` or a numpy
    array. Raises :class:`ImageError` naming the problem for anything else."""
    if isinstance(source, Image.Image):
        img = source
        try:
            img.load()
        except OSError as e:
            raise ImageError(f"the image is truncated or corrupt ({e})") from e
    elif isinstance(source, np.ndarray):
        img = _array_to_image(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img = _open_bytes(bytes(source), "image bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{path}: cannot be read ({e.strerror})") from e
        img = _open_bytes(data, str(path))
    else:
        raise ImageError(f"cannot caption an object of type {type(source).__name__}: give a path, bytes, "
                         "a PIL.Image or a numpy array")
    try:
        return to_rgb(img)
    except ImageError as e:
        if isinstance(source, (str, os.PathLike)):
            raise ImageError(f"{source}: {e}") from e
        raise
    except OSError as e:
        raise ImageError(f"{_describe(source)}: the image is truncated or corrupt ({e})") from e


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
