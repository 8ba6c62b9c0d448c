"""Fuzzing the image loader: truncated and corrupted files in the promised
formats and in formats it must refuse. Every outcome is an RGB image or an
ImageError, never another exception (one would end a CLI batch, a training
run or a web request). Seeded, a few hundred small files, a few seconds."""
import io
import time

import numpy as np
import pytest
from PIL import Image, features

from showtell.images import ImageError, load_image

PROMISED = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
# Formats Pillow can write but load_image must not decode (QOI raised IndexError,
# DDS NotImplementedError, AVIF RuntimeError before it refused them).
OTHERS = ["QOI", "DDS", "ICO", "TGA", "PCX", "SGI", "PPM", "IM", "JPEG2000", "AVIF"]
SEED, MUTANTS_PER_FILE = 1234, 30


def _writable(fmt):
    needs = {"WEBP": "webp", "JPEG2000": "jpg_2000", "AVIF": "avif"}
    return fmt not in needs or features.check(needs[fmt])


def _originals(rng):
    """Small images of each format, in the modes that exercise different decoders."""
    rgb = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
    out = []
    for fmt in PROMISED + OTHERS:
        if not _writable(fmt):
            continue
        for img, kw in [(rgb, {}), (rgb.convert("RGBA"), {}), (rgb.convert("L"), {}),
                        (rgb, {"compression": "tiff_lzw"} if fmt == "TIFF" else {"progressive": True}
                         if fmt == "JPEG" else {})]:
            if fmt in ("JPEG", "PCX", "PPM") and img.mode == "RGBA":
                img = rgb.convert("P")
            buf = io.BytesIO()
            try:
                img.save(buf, format=fmt, **kw)
            except (OSError, ValueError, KeyError):
                continue  # this mode cannot be written in this format: fine
            out.append((fmt, buf.getvalue()))
    return out


def _mutants(data, rng):
    """Truncations, byte flips and byte-run insertions of ``data``."""
    n = len(data)
    for k in range(MUTANTS_PER_FILE):
        b = bytearray(data)
        kind = k % 3
        if kind == 0:
            b = b[: int(rng.integers(1, n))]
        elif kind == 1:
            for pos in rng.integers(0, n, int(rng.integers(1, 12))):
                b[pos] = int(rng.integers(0, 256))
        else:
            pos = int(rng.integers(0, n))
            b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
        yield kind, bytes(b)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of the corrupt EXIF it skips
def test_fuzzed_files_give_rgb_or_image_error():
    rng = np.random.default_rng(SEED)
    originals = _originals(rng)
    assert {fmt for fmt, _ in originals} >= set(PROMISED) | {"QOI", "DDS", "ICO"}
    outcomes = {"rgb": 0, "ImageError": 0}
    escaped = []
    start = time.perf_counter()
    for fmt, data in originals:
        for kind, mutant in [(-1, data), *_mutants(data, rng)]:
            for target in (None, (8, 8)):  # (8, 8): the shrinking path runs on these small files
                try:
                    img = load_image(mutant, target_size=target)
                except ImageError as e:
                    assert str(e)
                    outcomes["ImageError"] += 1
                    continue
                except Exception as e:  # noqa: BLE001 - this is what the test looks for
                    escaped.append(f"{fmt} mutation {kind}: {type(e).__name__}: {e}")
                    continue
                assert img.mode == "RGB" and img.width > 0 and img.height > 0
                outcomes["rgb"] += 1
            if kind == -1 and fmt in OTHERS:
                with pytest.raises(ImageError, match="supported format"):
                    load_image(data)
    print(outcomes)
    assert not escaped, "\n".join(escaped[:20])
    total = sum(outcomes.values())
    assert total >= 600 and outcomes["rgb"] > 50 and outcomes["ImageError"] > 200, outcomes
    assert time.perf_counter() - start < 20


def test_fuzzed_files_on_disk_name_the_file(tmp_path):
    rng = np.random.default_rng(SEED + 1)
    data = _originals(rng)[0][1]
    for i, (_, mutant) in enumerate(_mutants(data, rng)):
        path = tmp_path / f"photo{i}.jpg"
        path.write_bytes(mutant)
        try:
            load_image(path)
        except ImageError as e:
            assert str(path) in str(e)
