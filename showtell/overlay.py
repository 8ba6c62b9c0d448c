"""Attention you can see: an attention map drawn over the photo.

:func:`attention_overlay` turns one map over the encoder's grid (say 7x7, from
:meth:`Captioner.explain`) into a heatmap the size of the photo, upsampled
smoothly (bicubic) rather than as 49 blocks, colour-mapped and blended with the
photo. :func:`attention_grid` puts one such overlay per word in a single image.
Only numpy and Pillow: the colormap is a small table interpolated here, so
showtell does not need matplotlib.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of matplotlib's "inferno" (perceptually uniform, readable in
# greyscale), sampled at 0, 1/8 ... 1; np.interp fills in between.
_INFERNO = np.array([
    [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
    [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 (shape + (3,))."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    xs = np.linspace(0.0, 1.0, len(_INFERNO))
    rgb = np.stack([np.interp(v, xs, _INFERNO[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def upsample(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One map (h, w) resized to ``size`` = (width, height) with bicubic
    interpolation and scaled to [0, 1] (its own maximum is 1)."""
    a = np.asarray(attention, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"an attention map must be 2-D (h, w), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("the attention map holds NaN or infinite values")
    big = np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC), dtype=np.float32)
    big = np.clip(big, 0.0, None)  # bicubic overshoots a little below 0 near sharp peaks
    top = float(big.max())
    return big / top if top > 0 else big


def attention_overlay(photo: Image.Image, attention: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """The photo (RGB, its own size) with the attention map as a heatmap on top:
    where the model looked is bright, the rest darkens toward the colormap's
    black. ``alpha`` is the heatmap's weight where attention is highest."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    rgb = photo.convert("RGB")
    heat = upsample(attention, rgb.size)  # (H, W) in [0, 1]
    colour = colormap(heat).astype(np.float32)
    base = np.asarray(rgb, dtype=np.float32)
    # The heatmap weighs more where attention is high, so the looked-at region keeps
    # the photo's detail under a bright tint and the rest is dimmed.
    w = alpha * (0.35 + 0.65 * heat)[..., None]
    return Image.fromarray((base * (1 - w) + colour * w).round().clip(0, 255).astype(np.uint8))


def fit_within(photo: Image.Image, longest: int) -> Image.Image:
    """The photo shrunk (never enlarged) so its longer side is at most ``longest``."""
    scale = longest / max(photo.size)
    if scale >= 1:
        return photo
    return photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.LANCZOS)


def attention_grid(photo: Image.Image, words: Sequence[str], attention: np.ndarray, columns: int = 5,
                   tile: int = 224) -> Image.Image:
    """One image: the overlay of each word, labelled with the word, ``columns``
    to a row, each tile at most ``tile`` pixels on its longer side."""
    if len(words) != len(attention):
        raise ValueError(f"{len(words)} words but {len(attention)} attention maps")
    if not words:
        raise ValueError("no words to draw")
    small = fit_within(photo.convert("RGB"), tile)
    label_h = 20
    cols = min(columns, len(words))
    rows = math.ceil(len(words) / cols)
    grid = Image.new("RGB", (cols * small.width, rows * (small.height + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, (word, a) in enumerate(zip(words, attention)):
        x, y = (i % cols) * small.width, (i // cols) * (small.height + label_h)
        grid.paste(attention_overlay(small, a), (x, y))
        draw.text((x + 4, y + small.height + 3), f"{i + 1}. {word}", fill="black", font=font)
    return grid



def _safe(word: str) -> str:
    """A word as part of a file name (vocabulary words are already plain; be sure)."""
    return "".join(ch if ch.isalnum() or ch in "'-" else "_" for ch in word).replace("'", "") or "_"


def write_attention(photo: Image.Image, words: Sequence[str], attention: np.ndarray, out_dir: str,
                    stem: str, longest: int = 640) -> list[str]:
    """Write ``STEM_NN_WORD.png`` (one overlay per word, the photo shrunk to at
    most ``longest`` pixels) and ``STEM_grid.png`` (all words) into ``out_dir``;
    returns the paths written, the grid last."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    shown = fit_within(photo.convert("RGB"), longest)
    paths = []
    for i, (word, a) in enumerate(zip(words, attention), start=1):
        path = os.path.join(out_dir, f"{stem}_{i:02d}_{_safe(word)}.png")
        _save_png(attention_overlay(shown, a), path)
        paths.append(path)
    grid = os.path.join(out_dir, f"{stem}_grid.png")
    _save_png(attention_grid(photo, words, attention), grid)
    return paths + [grid]


def _save_png(img: Image.Image, path: str) -> None:
    """Write ``img`` to ``path`` through a temporary beside it: on a full disk
    the file there before stays whole and no partial file is left."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".overlay-", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG", optimize=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


__all__ = ["attention_overlay", "attention_grid", "colormap", "upsample", "fit_within", "write_attention"]
