"""Peak memory of one caption request, per kind of image.

Each case runs in a fresh process: load the captioner (the bundled model, or
--checkpoint), read the resident set size (idle), reset the peak, caption the
image once, and report the peak resident set size above idle. That is what
one request costs a server that has already loaded its model.

    python benchmarks/bench_image_memory.py [--checkpoint model.pt] [--keep DIR]

The issue's target: no request above 300 MB over idle.
"""
import argparse
import io
import os
import subprocess
import sys
import tempfile

import numpy as np
from _common import ROOT, machine
from PIL import Image

# Run inside the child: the request is Captioner.__call__, what caption() and the web app run.
CHILD = r"""
import sys
from showtell.captioner import Captioner
from showtell.images import ImageError

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))  # kB

captioner = Captioner(sys.argv[2] or None, device="cpu")
captioner("examples/cat.jpg")  # warm up: first-call allocations are not the request's
source = sys.argv[1]
if source.endswith(".npy"):  # an array the caller holds: its own memory is not the request's
    import numpy as np
    source = np.load(source)
idle = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (the peak) to the current RSS
try:
    result = captioner(source)
except ImageError as e:
    result = f"ImageError: {e}"
print(f"{(status('VmHWM') - idle) / 1024:.0f}\t{str(result)[:90]}")
"""


def _gradient(width: int, height: int) -> np.ndarray:
    """An RGB picture that compresses well (like the issue's 124-187 KB files)
    without being flat: a diagonal gradient with bands."""
    x = (np.arange(width, dtype=np.uint32) * 255 // max(width - 1, 1)).astype(np.uint8)
    y = (np.arange(height, dtype=np.uint32) * 255 // max(height - 1, 1)).astype(np.uint8)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = x[None, :]
    rgb[..., 1] = y[:, None]
    rgb[..., 2] = (x[None, :] // 32) * 32
    return rgb


def make_cases(folder: str) -> list[tuple[str, str]]:
    """(description, path) of each image, written into ``folder``."""
    cases = []

    def save(name, desc, img, **kw):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            img.save(path, **kw)
        cases.append((f"{desc} ({os.path.getsize(path) / 1e3:,.0f} kB)", path))

    normal = Image.open(os.path.join(ROOT, "examples", "cat.jpg")).convert("RGB").resize((500, 375))
    save("normal-500x375.jpg", "JPEG 500 x 375 (a normal photo)", normal, quality=90)
    save("strip-1x64M.png", "PNG 1 x 64,000,000 (grayscale)", Image.new("L", (1, 64_000_000), 128))
    big = Image.fromarray(_gradient(8000, 8000))
    save("big-8000.png", "PNG 8000 x 8000 RGB", big, compress_level=9)
    save("big-8000.jpg", "JPEG 8000 x 8000", big, quality=90)
    save("big-8000-rgba.png", "PNG 8000 x 8000 RGBA", big.convert("RGBA"), compress_level=9)
    save("big-8000-16bit.png", "PNG 8000 x 8000 16-bit grayscale",
         Image.fromarray(_gradient(8000, 8000)[..., 0].astype(np.uint16) * 257), compress_level=9)
    save("big-8000-palette.png", "PNG 8000 x 8000 palette", big.quantize(16), compress_level=9)
    # Issue 22: formats whose decoders hold more than the image, a truncated file, an array.
    save("big-8000-lossless.webp", "WebP 8000 x 8000 lossless", big, lossless=True, method=0)
    save("big-4000-lossless.webp", "WebP 4000 x 4000 lossless", big.resize((4000, 4000)), lossless=True, method=0)
    save("big-8000.tif", "TIFF 8000 x 8000 deflate", big, compression="tiff_deflate")
    save("big-8000.gif", "GIF 8000 x 8000 (3 frames)", big.quantize(16), save_all=True,
         append_images=[big.quantize(8), big.quantize(4)])
    truncated = os.path.join(folder, "truncated-7999.jpg")
    if not os.path.exists(truncated):
        buf = io.BytesIO()
        big.resize((7999, 7999)).save(buf, "JPEG", quality=90)
        with open(truncated, "wb") as f:
            f.write(buf.getvalue()[:2000] + b"\xff\xd9")  # cut, then closed: libjpeg only warns
    cases.append(("JPEG header 7999 x 7999, 2 kB (truncated)", truncated))
    array = os.path.join(folder, "float32-4000.npy")
    if not os.path.exists(array):
        np.save(array, _gradient(4000, 4000).astype(np.float32) / 255.0)
    cases.append(("numpy float32 4000 x 4000 x 3 (192 MB itself)", array))
    return cases


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="")
    p.add_argument("--keep", default="", help="folder for the test images (kept between runs)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    folder = args.keep or tempfile.mkdtemp(prefix="bench-image-memory-")
    os.makedirs(folder, exist_ok=True)
    cases = make_cases(folder)
    print(f"{'case':<50} {'peak MB over idle':>18}  result")
    for desc, path in cases:
        out = subprocess.run([sys.executable, "-c", CHILD, path, args.checkpoint], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        if out.returncode != 0:
            print(f"{desc:<50} {'failed':>18}  {out.stderr.strip().splitlines()[-1]}")
            continue
        mb, result = out.stdout.strip().split("\t", 1)
        print(f"{desc:<50} {mb:>18}  {result}")
    if not args.keep:
        for _, path in cases:
            os.unlink(path)
        os.rmdir(folder)


if __name__ == "__main__":
    main()
