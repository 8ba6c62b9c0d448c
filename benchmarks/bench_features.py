"""Time to compute EfficientNet-Lite0 features for every Flickr8k image
(train + val + test = 8,091 photos) into a fresh feature cache.

    python benchmarks/bench_features.py [--encoder efficientnet_lite0]
"""
import argparse
import tempfile
import time

from _common import FLICKR8K, machine

from showtell.config import DataConfig
from showtell.datasets import load_split
from showtell.encoders import build_encoder
from showtell.features import FeatureCache


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--data-root", default=FLICKR8K)
    args = p.parse_args()
    enc = build_encoder(args.encoder)
    cfg = DataConfig(data_root=args.data_root)
    print(f"machine: {machine()}")
    total_images, total_seconds = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        for split in ("train", "val", "test"):
            items = load_split(cfg, split)
            t = time.perf_counter()
            cache.get("flickr8k", split, items, enc, progress=False)
            dt = time.perf_counter() - t
            total_images += len(items)
            total_seconds += dt
            print(f"{split:5s} {len(items):5d} images  {dt:6.1f} s  {len(items) / dt:5.1f} img/s")
    print(f"all   {total_images:5d} images  {total_seconds:6.1f} s  {total_images / total_seconds:5.1f} img/s "
          f"({total_seconds / 60:.2f} min; target < 8 min)")


if __name__ == "__main__":
    main()
