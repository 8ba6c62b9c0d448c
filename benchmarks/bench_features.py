"""Time to compute an encoder's features (EfficientNet-Lite0 by default) for every Flickr8k image
(all 8,091 photos in Images/: the 8,000 of the official splits and 91 in
none) into a fresh feature cache, the way training caches them.

    python benchmarks/bench_features.py [--encoder efficientnet_lite0] [--max-images N] [--workers N] [--batch-size N]
                                        [--runtime auto|torch|onnxruntime]
"""
import argparse
import os
import tempfile
import time

from _common import FLICKR8K, machine

from showtell.datasets import ImageCaptions
from showtell.encoders import build_encoder
from showtell.features import FeatureCache
from showtell.onnx_encoder import RUNTIMES, available


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--data-root", default=FLICKR8K)
    p.add_argument("--max-images", type=int, default=0, help="only the first N photos (0: all 8,091)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: sized to the machine)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="photos per encoder call (default: 64 on a GPU; on a CPU 16 with ONNX Runtime, 4 with PyTorch)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the encoder (default: ONNX Runtime on a CPU where installed, else PyTorch)")
    args = p.parse_args()
    enc = build_encoder(args.encoder)
    image_dir = os.path.join(args.data_root, "Images")
    items = [ImageCaptions(name, os.path.join(image_dir, name), ())
             for name in sorted(os.listdir(image_dir)) if name.endswith(".jpg")]
    if args.max_images:
        items = items[:args.max_images]
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        fs = FeatureCache(tmp).get("flickr8k-all", "all", items, enc, progress=False, num_workers=args.workers,
                                 batch_size=args.batch_size, runtime=args.runtime)
        dt = time.perf_counter() - t
    runtime = args.runtime if args.runtime != "auto" else ("onnxruntime" if available() else "torch")
    print(f"{args.encoder} ({runtime}): {len(fs.items)} of {len(items)} images in {dt:.1f} s, {len(items) / dt:.1f} photos/s "
          f"({dt / 60:.2f} min; target < 8 min); pooled {fs.pooled.shape[1:]}, spatial {fs.spatial.shape[1:]}")

if __name__ == "__main__":
    main()
